"""Packed export: a binarized model -> a packed file (``*.packed.safetensors``; the format and its ops:
:mod:`.packed_ops`), with 1-bit weights and the float layers around binary convs folded into integer thresholds.

:func:`export_packed` finds binary blocks from the module structure alone (a :class:`BinaryActivation` whose output
feeds a :class:`BinaryConv2d`), by recording the modules a forward pass runs; it needs no compiled code, except to
compare the written file's runner (:mod:`.packed_runtime`) with the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import PREPROCESSING_KEYS
from ..counting import forward_hooks
from ..layers import BinaryActivation, BinaryConv2d, ChannelShuffle
from ..layers.fold import compose, shuffle_perm
from . import binary_kernel as bk
from .packed_format import FORMAT, FORMAT_VERSION, PackedError
from .packed_ops import (
    BINARY_CONV2D,
    BIT_MAX_POOL2D,
    CHANNEL_SHUFFLE,
    CONV2D,
    PACK_SIGNS,
    Op,
    module_op,
    pair,
    sign_weight,
)
from .packed_runtime import load_packed

_SKIPPED = (nn.Identity, nn.Dropout)
# Per-channel monotone ops (and permutations) that a following sign absorbs as a threshold.
_MONOTONE = (nn.ReLU, nn.BatchNorm2d, ChannelShuffle, *_SKIPPED)
# After a binary conv, max pooling too: it commutes with monotone ops and is an AND/OR of the sign bits.
_FUSIBLE = (*_MONOTONE, nn.MaxPool2d)


def _trace(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """The leaf modules one forward pass runs, in order; each must take exactly the previous one's output."""
    records = []
    names = {m: name for name, m in model.named_modules()}

    def is_leaf(m):
        return next(m.children(), None) is None

    with forward_hooks(model, is_leaf, lambda mod, args, out: records.append((names[mod], mod, args, out))):
        with torch.no_grad():
            output = model(example)
    previous, before = example, "the input"
    for name, mod, args, out in records:
        if len(args) != 1 or args[0] is not previous:
            raise PackedError(
                f"cannot pack: the input of {name} ({type(mod).__name__}) is not the output of {before}; the packed "
                "format holds a chain of modules (this forward computes something outside modules or branches)"
            )
        previous, before = out, name
    if output is not previous:
        raise PackedError(f"cannot pack: the model's output is not the output of its last module ({before})")
    return [(name, mod) for name, mod, _, _ in records]


class _Graph:
    def __init__(self):
        self.nodes: list[dict] = []
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, op: Op, *args, **kwargs) -> None:
        """Append the node that ``op`` writes from ``args`` and ``kwargs`` (none where it writes nothing)."""
        written = op.write(*args, **kwargs)
        if written is None:
            return
        tensors, attrs = written
        index = len(self.nodes)
        for key, value in tensors.items():
            self.tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
        self.nodes.append({"op": op.name, **attrs})

    def float_module(self, name: str, m: nn.Module, next_module: nn.Module | None = None) -> bool:
        """Append a float op; returns True when it also consumed ``next_module`` (a batch norm folded into a conv)."""
        if isinstance(m, _SKIPPED):
            return False
        op = module_op(name, m)
        if op is CONV2D and isinstance(next_module, nn.BatchNorm2d) and next_module.track_running_stats:
            self.add(op, name, m, bn=next_module)
            return True
        self.add(op, name, m)
        return False


def _monotone(positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of booleans over ascending inputs: (non-decreasing, non-increasing) per row."""
    p = positive.to(torch.int8)
    return (p[:, 1:] >= p[:, :-1]).all(1), (p[:, 1:] <= p[:, :-1]).all(1)


def _emit_fused(graph: _Graph, name: str, conv: BinaryConv2d, pending: list, consumer: BinaryConv2d) -> None:
    """A binary conv whose result only passes through per-channel monotone ops (and max pools) into the next sign:
    threshold the integer dot product and write the consumer's packed bits."""
    negative, alpha = sign_weight(name, conv)
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros_like(alpha)
    channels = conv.out_channels
    k = int(np.prod(negative.shape[1:]))
    dots = torch.arange(-k, k + 1, dtype=torch.float32)
    # Every value the integer dot product can take, run through the model's own modules after the conv.
    value = (alpha[:, None] * dots[None, :] + bias[:, None]).view(1, channels, 1, -1)
    order = torch.arange(channels)  # position -> conv output channel
    shuffles, pools = [], []
    with torch.no_grad():
        for _, m in pending:
            if isinstance(m, nn.MaxPool2d):
                pools.append((m, value.clone(), order.clone()))
                continue
            if isinstance(m, ChannelShuffle) and m.groups > 1:
                order = compose(order, shuffle_perm(channels, m.groups))
                shuffles.append(m.groups)
            value = m(value.clone())
    positive = value[0, :, 0, :] > 0
    up, down = _monotone(positive)
    if not (up | down).all():
        raise PackedError(f"cannot pack {name}: the ops between it and the next sign are not monotone per channel")
    first_positive = torch.where(positive.any(1), positive.int().argmax(1), torch.full_like(order, 2 * k + 1))
    last_positive = 2 * k - positive.flip(1).int().argmax(1)
    # up: positive iff dot >= -k + first; down: positive iff dot <= -k + last, i.e. -dot >= k - last.
    threshold = torch.where(up, first_positive - k, k - last_positive)
    graph.add(BINARY_CONV2D, conv, negative, threshold=threshold, threshold_negative=~up, out_groups=consumer.groups,
              out_shuffle=shuffles)  # fmt: skip
    for m, before, before_order in pools:
        if m.ceil_mode or pair(m.dilation) != [1, 1]:
            raise PackedError(f"cannot pack the max pool after {name}: ceil_mode and dilation are not supported")
        values = before[0, :, 0, :][torch.argsort(before_order)][order]  # final channel order
        ranked = torch.gather(positive, 1, values.argsort(dim=1, stable=True))
        up, down = _monotone(ranked)
        if not (up | down).all():
            raise PackedError(f"cannot pack the max pool after {name}: the ops after it are not monotone")
        graph.add(BIT_MAX_POOL2D, m, up, consumer.groups)


def _emit_float_output(graph: _Graph, name: str, conv: BinaryConv2d, pending: list) -> None:
    """A binary conv followed by ops that do not commute with a sign: write alpha * dot + bias (+ ReLU) as floats."""
    negative, alpha = sign_weight(name, conv)
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros_like(alpha)
    relu = bool(pending) and isinstance(pending[0][1], nn.ReLU)
    graph.add(BINARY_CONV2D, conv, negative, alpha=alpha, bias=bias, relu=relu)
    for pending_name, m in pending[int(relu) :]:
        graph.float_module(pending_name, m)


def _sign_run(ops: list, i: int) -> int | None:
    """Index of the sign ending ``ops[i:]``'s run of per-channel monotone modules, if that sign feeds a binary conv."""
    j = i
    while j < len(ops) and isinstance(ops[j][1], _MONOTONE):
        j += 1
    feeds_binary = j + 1 < len(ops) and isinstance(ops[j][1], BinaryActivation)
    return j if feeds_binary and isinstance(ops[j + 1][1], BinaryConv2d) else None


def _float_from_key(key: torch.Tensor) -> torch.Tensor:
    """Order-preserving map from int64 keys in [0, 2**32) to float32 (the inverse of the usual sign-flip trick)."""
    bits = torch.where(key >= 2**31, key - 2**31, (2**32 - 1) - key)  # uint32 bit patterns
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)


def _emit_threshold_pack(graph: _Graph, ops: list, i: int, j: int, consumer: BinaryConv2d) -> None:
    """Float tensor -> ``ops[i:j]`` (batch norm, ReLU, shuffles) -> sign, as one packing step with a per-channel
    threshold: the exact float boundary of the model's own modules, found by bisection over all float32 values."""
    modules = [m for _, m in ops[i:j] if not isinstance(m, _SKIPPED)]
    channels = consumer.in_channels
    order = torch.arange(channels)
    for name, m in ops[i:j]:
        if isinstance(m, ChannelShuffle) and m.groups > 1:
            order = compose(order, shuffle_perm(channels, m.groups))
            graph.add(CHANNEL_SHUFFLE, name, m)  # run first: the threshold is on the shuffled floats
    inverse = torch.argsort(order)

    def positive(u: torch.Tensor) -> torch.Tensor:  # u: [channels, k] pack inputs (shuffled order)
        x = u[inverse].t().reshape(-1, channels, 1, 1)
        with torch.no_grad():
            for m in modules:
                x = m(x.clone())
        return x.reshape(-1, channels).t() > 0

    largest = torch.finfo(torch.float32).max
    ends = positive(torch.tensor([[-largest, largest]]).expand(channels, 2))
    up = ~ends[:, 0] & ends[:, 1]
    down = ends[:, 0] & ~ends[:, 1]
    # Bisection on ordered keys between -max and +max (known sides): lo stays below the boundary, hi above it.
    lo = torch.full((channels,), 0x00800000, dtype=torch.int64)
    hi = torch.full((channels,), 0xFF7FFFFF, dtype=torch.int64)
    for _ in range(33):
        mid = (lo + hi) // 2
        high_side = positive(_float_from_key(mid)[:, None])[:, 0] == up
        hi, lo = torch.where(high_side, mid, hi), torch.where(high_side, lo, mid)
    inf = torch.tensor(float("inf"))
    # up: positive iff u >= float(hi); down: positive iff u <= float(lo), i.e. -u >= -float(lo).
    threshold = torch.where(up, _float_from_key(hi), torch.where(down, -_float_from_key(lo), -inf))
    constant_negative = ~(up | down) & ~ends[:, 0]
    threshold = torch.where(constant_negative, inf, threshold)
    sign = torch.where(down, -1.0, 1.0)
    probe = torch.randn(channels, 4096, generator=torch.Generator().manual_seed(0)) * 10.0 ** torch.arange(
        -6, 6, 12 / 4096
    )
    if not torch.equal(positive(probe), sign[:, None] * probe >= threshold[:, None]):
        raise PackedError(f"cannot pack: the ops before the sign {ops[j][0]} are not monotone per channel")
    graph.add(PACK_SIGNS, consumer, sign, threshold)


def build_graph(model: nn.Module, example: torch.Tensor) -> _Graph:
    ops = _trace(model, example)
    graph = _Graph()
    i, n = 0, len(ops)
    while i < n:
        name, m = ops[i]
        sign_at = _sign_run(ops, i)
        if sign_at is not None:
            consumer = ops[sign_at + 1][1]
            if sign_at == i:  # a sign of the float tensor itself
                graph.add(PACK_SIGNS, consumer)
            else:
                _emit_threshold_pack(graph, ops, i, sign_at, consumer)
            i = _binary_block(graph, ops, sign_at + 1)
            continue
        if isinstance(m, BinaryActivation):
            raise PackedError(f"cannot pack: the sign {name} does not feed a binary convolution")
        nxt = ops[i + 1][1] if i + 1 < n and _sign_run(ops, i + 1) is None else None  # no fold into a threshold
        i += 2 if graph.float_module(name, m, nxt) else 1
    if not any(node["op"] == BINARY_CONV2D.name for node in graph.nodes):
        raise PackedError("cannot pack: the model has no binary convolution fed by a sign (BinaryActivation)")
    return graph


def _binary_block(graph: _Graph, ops: list, i: int) -> int:
    """Emit the binary conv at ``ops[i]`` and what follows it up to the next sign or float op; the next index."""
    name, conv = ops[i]
    pending = []
    i += 1
    while i < len(ops) and isinstance(ops[i][1], _FUSIBLE):
        pending.append(ops[i])
        i += 1
    fusible = i + 1 < len(ops) and isinstance(ops[i][1], BinaryActivation) and isinstance(ops[i + 1][1], BinaryConv2d)
    if fusible:
        _emit_fused(graph, name, conv, pending, ops[i + 1][1])
        return _binary_block(graph, ops, i + 1)
    _emit_float_output(graph, name, conv, pending)
    return i


def export_packed(
    model: nn.Module,
    out: str | Path,
    *,
    class_names: list[str] | None = None,
    input_size=None,
    check: bool = True,
    **unused_options,
) -> dict:
    """Write ``model`` (weights loaded) as a packed file; returns a summary (``output``, ``bytes``, ``nodes``,
    ``binary_convs``, ``input_size``, ``check_error``).

    ``input_size`` (C, H, W) defaults to the model's ``pretrained_cfg``; it is used to trace the forward. With
    ``check`` (and the kernel built), the packed runner is compared with the model at batch 1 and 3:
    ``check_error`` is max |diff| / max |logit| (None when not checked). Options of other formats (``batch_size``,
    ``opset``) do not apply: a packed file runs any batch size."""
    from safetensors.torch import save_file

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = tuple(input_size or cfg.get("input_size") or ())
    if len(size) != 3:
        raise PackedError("export_packed needs input_size=(C, H, W) for a model without pretrained_cfg")
    was_training = model.training
    model.eval()
    try:
        graph = build_graph(model, torch.randn(1, *size, generator=torch.Generator().manual_seed(0)))
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "pretrained_cfg": {
                **{k: _jsonable(cfg[k]) for k in PREPROCESSING_KEYS if k in cfg},
                "input_size": list(size),
                "architecture": cfg.get("architecture", type(model).__name__),
                "num_classes": getattr(model, "num_classes", None),
                **({"dataset": cfg["dataset"]} if "dataset" in cfg else {}),
            },
            "param_count": sum(p.numel() for p in model.parameters()),
            "class_names": list(class_names) if class_names else None,
            "nodes": graph.nodes,
        }
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(graph.tensors, str(out), metadata={FORMAT: json.dumps(header)})
        check_error = _check(model, out, size) if check and bk.is_available() else None
    finally:
        model.train(was_training)
    return {"output": str(out), "bytes": out.stat().st_size, "nodes": len(graph.nodes), "batch": None,
            "binary_convs": sum(node["op"] == BINARY_CONV2D.name for node in graph.nodes),
            "input_size": size, "check_error": check_error}  # fmt: skip


@torch.no_grad()
def _check(model: nn.Module, path: Path, size: tuple) -> float:
    """max |packed - float| / max |float| over seeded batches of 1 and 3."""
    runner = load_packed(path)
    worst = 0.0
    for batch in (1, 3):
        x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(batch))
        expected = model(x)
        worst = max(worst, ((runner(x) - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item())
    return worst


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v
