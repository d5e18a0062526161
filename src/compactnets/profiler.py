"""Model complexity: parameters, MACs, binary operations and model size, beside the published figures.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2) at batch 1 and the
model's own input size: every convolution and matrix product, functional calls and per-sample grouped convs
included; BN, activations and pooling excluded. Multiply-accumulates of binarized layers
(:class:`~compactnets.layers.BinaryConv2d`, sign inputs and sign weights) are also reported on their own.

Papers counted with other tools; each published figure names its convention (``reference['macs_convention']``
in the model config) and :data:`CONVENTIONS` reproduces it, so measured and published numbers are comparable.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers import BinaryConv2d, DynamicShiftMax, SharedBasisConv2d
from .models import create_model, get_model_cfg


def count_params(model: nn.Module) -> int:
    """Trainable parameters; a tensor shared by several modules is counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _dummy_input(model: nn.Module) -> torch.Tensor:
    return torch.zeros(1, *model.pretrained_cfg["input_size"])


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


# --- ptflops (0.5.2 - 0.6.3, module-hook backend) -------------------------------------------------------
# ptflops looks each module up by its exact type: subclasses such as BinaryConv2d count 0, and functional
# calls are invisible. A module used several times counts once per call.


def _pt_conv(m, inp, out):
    per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    positions = out.shape[0] * math.prod(out.shape[2:])
    return per_position * positions + (out.numel() if m.bias is not None else 0)


def _pt_shared_basis(m, inp, out):
    # As the unique and the shared nn.Conv2d that the official code runs side by side (no bias).
    per_position = math.prod(m.kernel_size) * m.in_channels
    per_position *= m.unique_rank // m.groups + m.shared.out_channels // m.shared.groups
    return per_position * out.shape[0] * math.prod(out.shape[2:])


def _pt_bn(m, inp, out):
    return inp[0].numel() * (2 if m.affine else 1)


def _pt_linear(m, inp, out):  # up to 0.6.3 (2020) ptflops left out Linear biases
    return inp[0].numel() * out.shape[-1]


def _pt_elements_out(m, inp, out):
    return out.numel()


def _pt_elements_in(m, inp, out):
    return inp[0].numel()


_PTFLOPS_HOOKS: dict[type, Callable] = {
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
    SharedBasisConv2d: _pt_shared_basis,
}  # fmt: skip


@contextlib.contextmanager
def forward_hooks(model: nn.Module, wanted: Callable[[nn.Module], bool], hook: Callable) -> Iterator[None]:
    """``hook(module, inputs, output)`` on every module ``wanted`` selects, removed on exit."""
    handles = [m.register_forward_hook(hook) for m in model.modules() if wanted(m)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def ptflops_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs as ``ptflops.get_model_complexity_info`` (0.5.2 - 0.6.3) reports them at batch 1."""
    total = 0

    def hook(module, inp, out):
        nonlocal total
        total += _PTFLOPS_HOOKS[type(module)](module, inp, out)

    with forward_hooks(model, lambda m: type(m) in _PTFLOPS_HOOKS, hook), torch.no_grad():
        model(x)
    return total


def micronet_madds(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode MACs (convs, classifier and shift-max FCs) plus the Dynamic Shift-Max fusion
    ``max_k(a_k x + b_k x2)``: J * K = 2K multiply-adds per output element (micronet.md section 4)."""
    fusion = 0

    def hook(module, inp, out):
        nonlocal fusion
        fusion += module.fusion_madds(out)

    with forward_hooks(model, lambda m: isinstance(m, DynamicShiftMax), hook):
        macs = flop_counter_macs(model, x)[0]
    return macs + fusion


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
    "ptflops_x2": Convention(
        "2 x ptflops MACs (Net_RL2's README 'FLOPs', ptflops 0.6.2): a shared basis counts at every call, "
        "its parameters once",
        lambda model, x: 2 * ptflops_macs(model, x),
    ),
    "micronet": Convention(
        "MicroNet MAdds: convs + classifier FCs + shift-max FCs (FlopCounterMode) + shift-max fusion "
        "(2K multiply-adds per output element for K branches)",
        micronet_madds,
    ),
}


# --- published figures -----------------------------------------------------------------------------------

_SCALE = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_FIGURE = re.compile(r"^(?P<num>\d+(?:\.(?P<dec>\d+))?)(?P<sep>\s*)(?P<prefix>[kKMGT]?)(?P<suffix>.*)$")


@dataclass(frozen=True)
class Figure:
    """A published number as printed ('0.23 GMac', '969.82 k', '1.4M'), to compare and to mimic."""

    text: str
    value: float
    decimals: int
    sep: str
    prefix: str
    suffix: str

    @classmethod
    def parse(cls, text: str | int | float) -> Figure:
        if isinstance(text, (int, float)):
            return cls(f"{text:,}", float(text), 0, "", "", "")
        m = _FIGURE.match(text.strip())
        if not m:
            raise ValueError(f"cannot read published figure {text!r}")
        return cls(
            text,
            float(m["num"]) * _SCALE[m["prefix"]],
            len(m["dec"] or ""),
            m["sep"],
            m["prefix"],
            m["suffix"],
        )

    def format_like(self, value: float) -> str:
        """``value`` printed the way this figure was printed (same unit, same number of decimals)."""
        if not self.prefix and not self.suffix and self.decimals == 0:
            return f"{int(value):,}"
        return f"{value / _SCALE[self.prefix]:.{self.decimals}f}{self.sep}{self.prefix}{self.suffix}"

    def delta_pct(self, value: float) -> float:
        return 100.0 * (value - self.value) / self.value

    def matches(self, value: float) -> bool:
        """``value`` printed like this figure reads the same: equal to every digit the publication shows."""
        return self.format_like(value) == self.text.strip()


@dataclass
class Profile:
    model: str
    input_size: tuple[int, int, int]
    params: int
    macs: int  # FlopCounterMode FLOPs / 2, binary layers included
    binary_macs: int
    size_fp32_bytes: int
    size_1bit_bytes: int
    convention: str
    convention_macs: int
    published_params: str | None = None
    published_macs: str | None = None
    published_top1: float | None = None
    source: str = ""
    notes: str = ""  # about the published figures (errata, labels)
    per_module_macs: dict[str, int] = field(default_factory=dict)

    @property
    def fp_macs(self) -> int:
        return self.macs - self.binary_macs

    def as_dict(self) -> dict:
        d = asdict(self)
        d["fp_macs"] = self.fp_macs
        for kind, measured in (("params", self.params), ("macs", self.convention_macs)):
            published = d[f"published_{kind}"]
            if published is not None:
                fig = Figure.parse(published)
                d[f"{kind}_as_published"] = fig.format_like(measured)
                d[f"{kind}_delta_pct"] = round(fig.delta_pct(measured), 4)
                d[f"{kind}_matches_published"] = fig.matches(measured)
        return d


def model_size_bytes(model: nn.Module) -> tuple[int, int]:
    """Bytes of the parameters at fp32, and with binary-conv weights stored at 1 bit plus an fp32 scale per
    output channel (everything else fp32)."""
    params = count_params(model)
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    binary_weights = sum(m.weight.numel() for m in binary)
    alphas = sum(m.out_channels for m in binary)
    return 4 * params, 4 * (params - binary_weights + alphas) + math.ceil(binary_weights / 8)


def binary_macs(model: nn.Module, per_module: dict[str, int]) -> int:
    return sum(per_module.get(name, 0) for name, m in model.named_modules() if isinstance(m, BinaryConv2d))


def profile_model(name: str, convention: str | None = None, **model_kwargs) -> Profile:
    """Profile a registered model at batch 1. ``convention`` defaults to the one of its published MACs."""
    cfg = get_model_cfg(name)
    reference = cfg["reference"]
    convention = convention or reference.get("macs_convention", "flop_counter")
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown MACs convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    model = create_model(name, **model_kwargs).eval()
    x = _dummy_input(model)
    macs, per_module = flop_counter_macs(model, x)
    per_module = {n: per_module[n] for n, _ in model.named_modules() if n in per_module}  # execution order
    fp32, one_bit = model_size_bytes(model)
    same_convention = convention == reference.get("macs_convention")
    return Profile(
        model=name,
        input_size=tuple(model.pretrained_cfg["input_size"]),
        params=count_params(model),
        macs=macs,
        binary_macs=binary_macs(model, per_module),
        size_fp32_bytes=fp32,
        size_1bit_bytes=one_bit,
        convention=convention,
        convention_macs=macs if convention == "flop_counter" else CONVENTIONS[convention].count(model, x),
        published_params=reference.get("params"),
        published_macs=reference.get("macs") if same_convention else None,
        published_top1=reference.get("top1"),
        source=reference.get("source", ""),
        notes=reference.get("notes", ""),
        per_module_macs=per_module,
    )


def _human(n: float, unit: str = "") -> str:
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{prefix}{unit}"
    return f"{n:.0f}{unit}"


def _compare(measured: int, published: str | None) -> tuple[str, str, str]:
    if published is None:
        return f"{measured:,}", "-", ""
    fig = Figure.parse(published)
    return (
        fig.format_like(measured),
        published,
        "match" if fig.matches(measured) else f"{fig.delta_pct(measured):+.2f}%",
    )


def format_table(profiles: list[Profile]) -> str:
    """One row per model: measured figures printed like the published ones, the difference in %, the honest
    FlopCounterMode count split into full-precision and binary MACs, and the model size."""
    header = (
        "model", "params", "published", "diff", "MACs", "published", "diff", "convention",
        "FP MACs", "binary MACs", "fp32 size", "1-bit size",
    )  # fmt: skip
    rows = [header]
    for p in profiles:
        rows.append(
            (
                p.model,
                *_compare(p.params, p.published_params),
                *_compare(p.convention_macs, p.published_macs),
                p.convention,
                _human(p.fp_macs),
                _human(p.binary_macs),
                _human(p.size_fp32_bytes, "B"),
                _human(p.size_1bit_bytes, "B"),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    used = sorted({p.convention for p in profiles})
    lines.append("")
    lines.append("MACs at batch 1 and the model's input size. FP/binary MACs: FlopCounterMode FLOPs / 2.")
    lines.append(
        "diff: match when the measured count, printed with the published unit and decimals, reads the same;"
        " else (measured - published) / published."
    )
    lines += [f"convention {c}: {CONVENTIONS[c].description}" for c in used]
    lines += [f"note {p.model}: {p.notes}" for p in profiles if p.notes]
    return "\n".join(lines)


def format_layers(profile: Profile) -> str:
    """Per-module MACs (leaf modules that run convs or matmuls)."""
    names = list(profile.per_module_macs)
    leaves = [n for n in names if profile.per_module_macs[n] and not any(o.startswith(n + ".") for o in names)]
    width = max((len(n) for n in leaves), default=10)
    lines = [f"{'module'.ljust(width)}  {'MACs':>14}  share"]
    for n in leaves:
        v = profile.per_module_macs[n]
        lines.append(f"{n.ljust(width)}  {v:>14,}  {100 * v / max(profile.macs, 1):5.1f}%")
    return "\n".join(lines)
