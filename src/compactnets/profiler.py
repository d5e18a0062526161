"""Model complexity: parameters, MACs, binary operations and model size, beside the published figures.

MACs are counted at batch 1 and the model's own input size (:mod:`compactnets.counting`). Multiply-accumulates
of binarized layers (:class:`~compactnets.layers.BinaryConv2d`, sign inputs and sign weights) are also reported
on their own. Each published figure names the convention its paper counted with (``reference['macs_convention']``
in the model config), which :data:`~compactnets.counting.CONVENTIONS` reproduces, so measured and published
numbers are comparable.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .counting import CONVENTIONS, flop_counter_macs
from .layers import BinaryConv2d
from .models import create_model, get_model_cfg


def count_params(model: nn.Module) -> int:
    """Trainable parameters; a tensor shared by several modules is counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _dummy_input(model: nn.Module) -> torch.Tensor:
    return torch.zeros(1, *model.pretrained_cfg["input_size"])


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
