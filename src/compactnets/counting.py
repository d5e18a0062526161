"""Counting multiply-accumulates, and the conventions papers counted with.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2): every convolution and
matrix product, functional calls and per-sample grouped convs included; BN, activations and pooling excluded.
Papers counted with other tools: each published figure names its convention (``reference['macs_convention']`` in
the model config), and :data:`CONVENTIONS` reproduces it. The generic ones are here; a family whose paper counted
its own way registers its convention (:func:`register_convention`) and its layers' ptflops rules
(:func:`register_ptflops_rule`) in its own file.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total MACs and MACs per module name (FlopCounterMode FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    root = type(model).__name__ + "."
    per_module = {
        name[len(root) :]: sum(ops.values()) // 2
        for name, ops in counter.get_flop_counts().items()
        if name.startswith(root)
    }
    return counter.get_total_flops() // 2, per_module


@contextlib.contextmanager
def forward_hooks(model: nn.Module, wanted: Callable[[nn.Module], bool], hook: Callable) -> Iterator[None]:
    """``hook(module, inputs, output)`` on every module ``wanted`` selects, removed on exit."""
    handles = [m.register_forward_hook(hook) for m in model.modules() if wanted(m)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --- ptflops (0.5.2 - 0.6.3, module-hook backend) -------------------------------------------------------
# ptflops looks each module up by its exact type: subclasses such as BinaryConv2d count 0, and functional
# calls are invisible. A module used several times counts once per call.


def _pt_conv(m, inp, out):
    per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    positions = out.shape[0] * math.prod(out.shape[2:])
    return per_position * positions + (out.numel() if m.bias is not None else 0)


def _pt_bn(m, inp, out):
    return inp[0].numel() * (2 if m.affine else 1)


def _pt_linear(m, inp, out):  # up to 0.6.3 (2020) ptflops left out Linear biases
    return inp[0].numel() * out.shape[-1]


def _pt_elements_out(m, inp, out):
    return out.numel()


def _pt_elements_in(m, inp, out):
    return inp[0].numel()


_PTFLOPS_RULES: dict[type, Callable] = {
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d), _pt_conv),
    **dict.fromkeys((nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6), _pt_elements_out),
    **dict.fromkeys(
        (
            nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
            nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
            nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
        ),
        _pt_elements_in,
    ),
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), _pt_bn),
    nn.Linear: _pt_linear,
    nn.Upsample: _pt_elements_out,
}  # fmt: skip


def register_ptflops_rule(layer: type, rule: Callable[[nn.Module, tuple, torch.Tensor], int]) -> None:
    """How ptflops would have counted ``layer`` (exactly that type), as ``rule(module, inputs, output)``: for a
    layer that stands for modules ptflops knew in the official code."""
    _PTFLOPS_RULES[layer] = rule


def ptflops_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs as ``ptflops.get_model_complexity_info`` (0.5.2 - 0.6.3) reports them at batch 1."""
    total = 0

    def hook(module, inp, out):
        nonlocal total
        total += _PTFLOPS_RULES[type(module)](module, inp, out)

    with forward_hooks(model, lambda m: type(m) in _PTFLOPS_RULES, hook), torch.no_grad():
        model(x)
    return total


@dataclass(frozen=True)
class Convention:
    description: str
    count: Callable[[nn.Module, torch.Tensor], int]


CONVENTIONS: dict[str, Convention] = {
    "flop_counter": Convention(
        "torch.utils.flop_counter FLOPs / 2: all convs and matmuls (binary ones included), batch 1",
        lambda model, x: flop_counter_macs(model, x)[0],
    ),
    "ptflops": Convention(
        "ptflops 0.5.2-0.6.3 hooks: exact-type nn.Conv (+bias), BN 2/elem, ReLU, pooling, Linear (no bias); "
        "nn.Conv2d subclasses (binary convs) and functional calls count 0",
        ptflops_macs,
    ),
}


def register_convention(name: str, description: str, count: Callable[[nn.Module, torch.Tensor], int]) -> None:
    """A paper's own way of counting MACs, named by ``reference['macs_convention']`` in its models' configs."""
    if name in CONVENTIONS:
        raise RuntimeError(f"MACs convention {name!r} is registered twice")
    CONVENTIONS[name] = Convention(description, count)
