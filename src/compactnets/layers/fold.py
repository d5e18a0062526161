"""Inference-time folding of batch norm into the linear layer before it, for one layer (:func:`fold_bn`) or for
every conv -> BN (and linear -> BN) pair of a model (:func:`fold_batch_norms`); plain convs for layers that are
convs in disguise, and channel-permutation helpers.

The model-wide pairs are found by running the model once, not by reading its code: a BN folds into the layer
before it when its input *is* that layer's output tensor and nothing else reads that tensor (counted on the
autograd graph of the run). So attribute-style blocks (``self.bn1(self.conv1(x))``) fold as well as
``nn.Sequential`` ones, and a conv whose output also feeds a residual sum, or is changed in place (by an in-place
ReLU) before the BN reads it, is left alone. Only layers whose forward is the plain affine map fold:
``nn.Conv2d`` and ``nn.Linear`` themselves (not subclasses such as binary convs, whose weights are binarized at
run time), and layers that write themselves as plain convs with an ``as_conv()`` method (a shared filter basis,
copied into each layer that uses it).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm):
    """Weight and bias of ``bn(layer(x))`` as one layer, with the BN's running statistics (eval-mode BN).

    ``weight`` has the output channels first (conv or linear); ``bias`` may be None."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    folded_bias = shift if bias is None else bias * scale + shift
    return weight * scale.view(-1, *([1] * (weight.ndim - 1))), folded_bias


class ConcatConv2d(nn.Module):
    """Convs of one input whose outputs are concatenated (a BN after it folds into each, slice by slice)."""

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


def plain_conv(weight: torch.Tensor, like: nn.Module, groups: int) -> nn.Conv2d:
    """An ``nn.Conv2d`` holding a copy of ``weight``, with the geometry (kernel, padding, dilation) of ``like``."""
    out_chs, in_per_group = weight.shape[:2]
    conv = nn.Conv2d(in_per_group * groups, out_chs, like.kernel_size, padding=like.padding, dilation=like.dilation,
                     groups=groups, bias=False)  # fmt: skip
    conv.weight = nn.Parameter(weight.detach().clone())
    return conv


def shuffle_perm(channels: int, groups: int) -> torch.Tensor:
    """``channel_shuffle(x, groups) == x[:, shuffle_perm(C, groups)]``."""
    return torch.arange(channels).view(groups, channels // groups).t().reshape(-1)


def compose(perm: torch.Tensor | None, then: torch.Tensor | None) -> torch.Tensor | None:
    """Channel orders as gather indices (``true = computed[:, perm]``; None = identity): the order after
    gathering with ``perm`` and then with ``then``."""
    if perm is None:
        return then
    return perm if then is None else perm[then]


_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _foldable(m: nn.Module) -> bool:
    return type(m) in (nn.Conv2d, nn.Linear) or callable(getattr(m, "as_conv", None))


def _consumers(output: torch.Tensor) -> Counter:
    """How many times each autograd node's result is read, over the graph that produced ``output``."""
    counts, seen, stack = Counter(), set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for parent, _ in node.next_functions:
            if parent is not None:
                counts[parent] += 1
                stack.append(parent)
    return counts


def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(layer name, BN name) for every BN that reads only the output of a foldable layer, in one run of
    ``model`` (eval mode) on ``example``. Layers or BNs called more than once are never paired."""
    names = {m: n for n, m in model.named_modules()}
    outputs: dict[int, tuple[torch.Tensor, nn.Module, int]] = {}
    bn_inputs: dict[nn.Module, tuple[torch.Tensor, int]] = {}
    calls: Counter = Counter()

    def after_layer(m, args, out):
        calls[m] += 1
        # The tensor is kept alive, so its id cannot be reused during the run; its version counter tells
        # whether an in-place op (an in-place ReLU, say) changed it before the BN read it.
        outputs[id(out)] = (out, m, out._version)

    def before_bn(m, args):
        calls[m] += 1
        bn_inputs[m] = (args[0], args[0]._version)

    handles = [m.register_forward_hook(after_layer) for m in model.modules() if _foldable(m)]
    # Exact types: subclasses may do more than normalise (timm's BatchNormAct2d applies its activation too).
    handles += [m.register_forward_pre_hook(before_bn) for m in model.modules() if type(m) in _BN]
    # The graph is recorded through the parameters (not the input: in-place ops on input views would refuse).
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(False)
    if not isinstance(out, torch.Tensor) or out.grad_fn is None:
        return []
    readers = _consumers(out)
    pairs = []
    for bn, (inp, version) in bn_inputs.items():
        source = outputs.get(id(inp))
        if source is None or source[0] is not inp or source[2] != version or calls[bn] != 1 or calls[source[1]] != 1:
            continue
        if inp.grad_fn is not None and readers[inp.grad_fn] == 1:
            pairs.append((names[source[1]], names[bn]))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def fold_batch_norms(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """Fold, in place, every BN that follows a foldable layer into it (the BN becomes ``nn.Identity``); the
    model must be in eval mode. Returns the (layer, BN) pairs folded."""
    folded = []
    for layer_name, bn_name in find_conv_bn_pairs(model, example):
        layer = model.get_submodule(layer_name)
        if type(layer) not in (nn.Conv2d, nn.Linear):
            layer = layer.as_conv()
            _set(model, layer_name, layer)
        bn, start = model.get_submodule(bn_name), 0
        for conv in layer.convs if isinstance(layer, ConcatConv2d) else [layer]:
            part = _bn_slice(bn, start, conv.weight.shape[0])
            start += conv.weight.shape[0]
            weight, bias = fold_bn(conv.weight, conv.bias, part)
            conv.weight = nn.Parameter(weight.detach().clone())
            conv.bias = nn.Parameter(bias.detach().clone())
        _set(model, bn_name, nn.Identity())
        folded.append((layer_name, bn_name))
    return folded


def _bn_slice(bn: nn.Module, start: int, size: int) -> nn.Module:
    """The BN of channels ``start : start + size`` (eval mode), for a layer made of concatenated convs."""
    if start == 0 and size == bn.num_features:
        return bn
    part = nn.BatchNorm2d(size, eps=bn.eps).eval()
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(part, name).data.copy_(getattr(bn, name)[start : start + size])
    return part
