"""Packed deployment of binarized models: 1-bit weights on disk, xor + popcount convolutions at run time.

File format (``*.packed.safetensors``; see docs/binary-inference.md): a safetensors file whose metadata key
``compactnets.packed`` holds a JSON header ``{"format", "version", "pretrained_cfg", "class_names", "nodes"}``.
``nodes`` is the layer graph, a chain run in order; node ``i``'s tensors are stored as ``"{i}.{name}"``. The node
ops are the float ops ``conv2d``, ``batch_norm``, ``relu``, ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``,
``flatten``, ``linear``, ``channel_shuffle`` (NCHW floats) and the binary ops:

- ``pack_signs``: floats -> packed sign bits for the next binary conv (a set bit is -1; sign(0) becomes -1); with
  float32 ``sign`` and ``threshold`` [C], channel c is -1 unless ``sign[c] * x >= threshold[c]`` (the batch norm and
  ReLU between the float op and the sign folded in);
- ``binary_conv2d``: ``weight_bits`` uint8 [out, ceil(kh * kw * in_per_group / 8)], each filter's signs in
  (kh, kw, in) order, bit ``i % 8`` of byte ``i // 8``, set = -1. With ``"output": "float"`` it writes
  ``alpha * dot + bias`` (``relu`` optional); with ``"output": "bits"`` it writes the next binary conv's packed
  input, channel ``j`` being -1 unless ``threshold_sign[j] * dot[out_order[j]] >= threshold[j]`` (bias, ReLU, the
  next batch norm and sign folded in). ``threshold`` is int16 or int32 [out]; ``threshold_sign_bits`` uint8
  [ceil(out / 8)] holds the signs, bit ``j % 8`` of byte ``j // 8`` set where ``threshold_sign[j]`` is -1;
  ``out_shuffle``, present when channel shuffles lie in between, lists their groups: ``out_order`` is the
  identity shuffled by each in turn (version 1 stored int8 ``threshold_sign`` and an ``out_order`` tensor);
- ``bit_max_pool2d``: max pooling on bits (``and_mask`` uint8 [C]: channels whose -1 bit is the AND of the window).

Every file is checked in full before anything runs (:mod:`.packed_format`): a packed file is untrusted input.

:func:`export_packed` finds binary blocks from the module structure alone (a :class:`BinaryActivation` whose output
feeds a :class:`BinaryConv2d`), by recording the modules a forward pass runs; it needs no compiled code.
:func:`load_packed` returns a :class:`PackedModel` runner and needs the kernel (:mod:`.binary_kernel`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import PREPROCESSING_KEYS
from ..layers import BinaryActivation, BinaryConv2d, ChannelShuffle
from ..layers.fold import compose, fold_bn, shuffle_perm
from ..profiler import forward_hooks
from . import binary_kernel as bk
from .packed_format import FORMAT, FORMAT_VERSION, PackedError, check_header, check_packed
from .packed_plan import Plan, build_plan, resolve_precision

_SKIPPED = (nn.Identity, nn.Dropout)
# Per-channel monotone ops (and permutations) that a following sign absorbs as a threshold.
_MONOTONE = (nn.ReLU, nn.BatchNorm2d, ChannelShuffle, *_SKIPPED)
# After a binary conv, max pooling too: it commutes with monotone ops and is an AND/OR of the sign bits.
_FUSIBLE = (*_MONOTONE, nn.MaxPool2d)


# ---------------------------------------------------------------------------------------------------------- export


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


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


class _Graph:
    def __init__(self):
        self.nodes: list[dict] = []
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, op: str, tensors: dict | None = None, **attrs) -> None:
        index = len(self.nodes)
        for key, value in (tensors or {}).items():
            self.tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
        self.nodes.append({"op": op, **attrs})

    def float_module(self, name: str, m: nn.Module, next_module: nn.Module | None = None) -> bool:
        """Append a float op; returns True when it also consumed ``next_module`` (a batch norm folded into a conv)."""
        if isinstance(m, _SKIPPED):
            return False
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise PackedError(f"cannot pack {name}: padding {m.padding!r}/{m.padding_mode!r} is not supported")
            weight = m.binary_weight() if isinstance(m, BinaryConv2d) else m.weight  # float input: no bits to pack
            bias = m.bias
            fold = isinstance(next_module, nn.BatchNorm2d) and next_module.track_running_stats
            if fold:
                weight, bias = fold_bn(weight, bias, next_module)
            attrs = dict(stride=_pair(m.stride), padding=_pair(m.padding), dilation=_pair(m.dilation), groups=m.groups)
            self.add("conv2d", {"weight": weight, **({"bias": bias} if bias is not None else {})}, **attrs)
            return fold
        if isinstance(m, nn.BatchNorm2d):
            if not m.track_running_stats:
                raise PackedError(f"cannot pack {name}: batch norm without running statistics")
            self.add("batch_norm", _bn_tensors(m), eps=m.eps)
        elif isinstance(m, nn.ReLU):
            self.add("relu")
        elif isinstance(m, nn.MaxPool2d):
            self.add("max_pool2d", **_pool_attrs(m), dilation=_pair(m.dilation))
        elif isinstance(m, nn.AvgPool2d):
            attrs = dict(count_include_pad=m.count_include_pad, divisor_override=m.divisor_override)
            self.add("avg_pool2d", **_pool_attrs(m), **attrs)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self.add("adaptive_avg_pool2d", output_size=_pair(m.output_size))
        elif isinstance(m, nn.Flatten):
            self.add("flatten", start_dim=m.start_dim, end_dim=m.end_dim)
        elif isinstance(m, nn.Linear):
            self.add("linear", {"weight": m.weight, **({"bias": m.bias} if m.bias is not None else {})})
        elif isinstance(m, ChannelShuffle):
            if m.groups > 1:
                self.add("channel_shuffle", groups=m.groups)
        else:
            raise PackedError(f"cannot pack {name}: {type(m).__name__} has no packed equivalent")
        return False


def _bn_tensors(m: nn.BatchNorm2d) -> dict:
    ones, zeros = torch.ones_like(m.running_mean), torch.zeros_like(m.running_mean)
    weight = m.weight if m.weight is not None else ones
    bias = m.bias if m.bias is not None else zeros
    return {"weight": weight, "bias": bias, "running_mean": m.running_mean, "running_var": m.running_var}


def _pool_attrs(m) -> dict:
    return dict(
        kernel_size=_pair(m.kernel_size),
        stride=_pair(m.stride if m.stride is not None else m.kernel_size),
        padding=_pair(m.padding),
        ceil_mode=bool(m.ceil_mode),
    )


def _sign_weight(name: str, conv: BinaryConv2d) -> tuple[np.ndarray, torch.Tensor]:
    """Filters as bool [out, kh, kw, in_per_group] (True = -1) and the per-filter scale alpha."""
    w_hat = conv.binary_weight().detach().float()
    alpha = w_hat.abs().amax(dim=(1, 2, 3))
    if (w_hat == 0).any() or not torch.equal(w_hat.abs(), alpha.view(-1, 1, 1, 1).expand_as(w_hat)):
        raise PackedError(f"cannot pack {name}: its binary weight is not sign * alpha with no zeros")
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise PackedError(f"cannot pack {name}: padding {conv.padding!r}/{conv.padding_mode!r} is not supported")
    return (w_hat < 0).permute(0, 2, 3, 1).numpy(), alpha


def _binary_conv_attrs(conv: BinaryConv2d) -> dict:
    return dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=_pair(conv.kernel_size),
        stride=_pair(conv.stride),
        padding=_pair(conv.padding),
        dilation=_pair(conv.dilation),
        groups=conv.groups,
    )


def _weight_bits(negative: np.ndarray) -> torch.Tensor:
    flat = negative.reshape(negative.shape[0], -1)
    return torch.from_numpy(np.packbits(flat, axis=-1, bitorder="little"))


def _small_int(t: torch.Tensor) -> torch.Tensor:
    """int16 when the values fit (per-channel terms are a visible part of a packed file), else int32."""
    fits = t.abs().max() < 2**15
    return t.to(torch.int16 if fits else torch.int32)


def _monotone(positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of booleans over ascending inputs: (non-decreasing, non-increasing) per row."""
    p = positive.to(torch.int8)
    return (p[:, 1:] >= p[:, :-1]).all(1), (p[:, 1:] <= p[:, :-1]).all(1)


def _emit_fused(graph: _Graph, name: str, conv: BinaryConv2d, pending: list, consumer: BinaryConv2d) -> None:
    """A binary conv whose result only passes through per-channel monotone ops (and max pools) into the next sign:
    threshold the integer dot product and write the consumer's packed bits."""
    negative, alpha = _sign_weight(name, conv)
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
    threshold = _small_int(torch.where(up, first_positive - k, k - last_positive))
    # One bit per channel for the sign (set = -1) and the shuffles' groups for the order: a byte or two per
    # channel less, which nin_gc_xnornet's binary layers need to stay 25x smaller than float.
    sign_bits = torch.from_numpy(np.packbits(~up.numpy(), bitorder="little"))
    tensors = {"weight_bits": _weight_bits(negative), "threshold": threshold, "threshold_sign_bits": sign_bits}
    graph.add(
        "binary_conv2d",
        tensors,
        **_binary_conv_attrs(conv),
        output="bits",
        out_groups=consumer.groups,
        **({"out_shuffle": shuffles} if shuffles else {}),
    )
    for m, before, before_order in pools:
        if m.ceil_mode or _pair(m.dilation) != [1, 1]:
            raise PackedError(f"cannot pack the max pool after {name}: ceil_mode and dilation are not supported")
        values = before[0, :, 0, :][torch.argsort(before_order)][order]  # final channel order
        ranked = torch.gather(positive, 1, values.argsort(dim=1, stable=True))
        up, down = _monotone(ranked)
        if not (up | down).all():
            raise PackedError(f"cannot pack the max pool after {name}: the ops after it are not monotone")
        graph.add("bit_max_pool2d", {"and_mask": up.to(torch.uint8)}, **_pool_attrs(m), groups=consumer.groups)


def _emit_float_output(graph: _Graph, name: str, conv: BinaryConv2d, pending: list) -> None:
    """A binary conv followed by ops that do not commute with a sign: write alpha * dot + bias (+ ReLU) as floats."""
    negative, alpha = _sign_weight(name, conv)
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros_like(alpha)
    relu = bool(pending) and isinstance(pending[0][1], nn.ReLU)
    graph.add(
        "binary_conv2d",
        {"weight_bits": _weight_bits(negative), "alpha": alpha, "bias": bias},
        **_binary_conv_attrs(conv),
        output="float",
        relu=relu,
    )
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
    for m in modules:
        if isinstance(m, ChannelShuffle) and m.groups > 1:
            order = compose(order, shuffle_perm(channels, m.groups))
            graph.add("channel_shuffle", groups=m.groups)  # run first: the threshold is on the shuffled floats
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
    graph.add("pack_signs", {"sign": sign, "threshold": threshold.float()}, groups=consumer.groups, channels=channels)


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
                graph.add("pack_signs", groups=consumer.groups, channels=consumer.in_channels)
            else:
                _emit_threshold_pack(graph, ops, i, sign_at, consumer)
            i = _binary_block(graph, ops, sign_at + 1)
            continue
        if isinstance(m, BinaryActivation):
            raise PackedError(f"cannot pack: the sign {name} does not feed a binary convolution")
        nxt = ops[i + 1][1] if i + 1 < n and _sign_run(ops, i + 1) is None else None  # no fold into a threshold
        i += 2 if graph.float_module(name, m, nxt) else 1
    if not any(node["op"] == "binary_conv2d" for node in graph.nodes):
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
            "binary_convs": sum(node["op"] == "binary_conv2d" for node in graph.nodes),
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


# ---------------------------------------------------------------------------------------------------------- runner


class _BinaryStep:
    """A kernel call that writes into the buffer it wrote last time (same shape: no fresh allocation, no page
    faults). So a runner must not run two batches at once from two Python threads."""

    buffer: torch.Tensor | None = None


class _BinaryConv(_BinaryStep):
    def __init__(self, node: dict, t: dict):
        self.node = node
        out, cin = node["out_channels"], node["in_channels"]
        groups, (kh, kw) = node["groups"], node["kernel_size"]
        bits = t["weight_bits"].numpy()
        negative = np.unpackbits(bits, axis=-1, bitorder="little")[:, : kh * kw * cin // groups].astype(bool)
        self.weights = bk.prepare_weights(negative.reshape(out, kh, kw, cin // groups), groups)
        self.groups, self.in_channels = groups, cin
        self.geometry = (node["kernel_size"], node["stride"], node["padding"], node["dilation"])
        if node["output"] == "bits":
            self.kwargs = dict(threshold=t["threshold"].int().contiguous(),
                               threshold_sign=t["threshold_sign"].int().contiguous(),
                               out_order=t["out_order"].int().contiguous() if "out_order" in t else None,
                               out_groups=node["out_groups"])  # fmt: skip
        else:
            self.kwargs = dict(alpha=t["alpha"].float().contiguous(), bias=t["bias"].float().contiguous(),
                               relu=node["relu"])  # fmt: skip

    def __call__(self, bits: torch.Tensor, threads: int | None) -> torch.Tensor:
        self.buffer = bk.binary_conv(
            bits, self.weights, *self.geometry, threads=threads, out=self.buffer, **self.kwargs
        )
        if self.node["output"] == "bits":
            return self.buffer
        return self.buffer.permute(0, 3, 1, 2)  # NCHW view, channels-last memory


class _BitMaxPool(_BinaryStep):
    def __init__(self, node: dict, t: dict):
        mask = t["and_mask"].numpy().astype(bool)
        self.channel_mask = torch.from_numpy(mask)  # for the same pool on +-1 bytes (packed_plan)
        groups = node["groups"]
        words = bk.pack_sign_bits(mask.reshape(groups, -1)).reshape(-1)
        self.and_mask = torch.from_numpy(words.view(np.int64).copy())
        self.geometry = (node["kernel_size"], node["stride"], node["padding"])

    def __call__(self, bits: torch.Tensor, threads: int | None) -> torch.Tensor:
        self.buffer = bk.bit_max_pool(bits, self.and_mask, *self.geometry, out=self.buffer)
        return self.buffer


class _PackSigns(_BinaryStep):
    def __init__(self, node: dict, t: dict):
        self.groups, self.channels = node["groups"], node["channels"]
        self.folded = {k: t[k].float().contiguous() for k in ("sign", "threshold") if k in t}

    def __call__(self, x: torch.Tensor, threads: int | None) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"pack_signs expects {self.channels} channels, got {x.shape[1]}")
        self.buffer = bk.pack_signs(x.permute(0, 2, 3, 1), self.groups, out=self.buffer, **self.folded)
        return self.buffer


def _float_op(node: dict, t: dict):
    op = node["op"]
    if op == "conv2d":
        weight = t["weight"].float().contiguous(memory_format=torch.channels_last)
        bias = t.get("bias")
        args = (node["stride"], node["padding"], node["dilation"], node["groups"])
        return lambda x: F.conv2d(x, weight, bias, *args)
    if op == "batch_norm":
        return lambda x: F.batch_norm(
            x, t["running_mean"], t["running_var"], t["weight"], t["bias"], False, 0.0, node["eps"]
        )
    if op == "relu":
        return F.relu
    if op in ("max_pool2d", "avg_pool2d"):
        extra = (
            dict(dilation=node["dilation"])
            if op == "max_pool2d"
            else dict(count_include_pad=node["count_include_pad"], divisor_override=node["divisor_override"])
        )
        fn = getattr(F, op)
        geometry = dict(kernel_size=node["kernel_size"], stride=node["stride"], padding=node["padding"])
        return lambda x: fn(x, **geometry, ceil_mode=node["ceil_mode"], **extra)
    if op == "adaptive_avg_pool2d":
        return lambda x: F.adaptive_avg_pool2d(x, node["output_size"])
    if op == "flatten":
        return lambda x: torch.flatten(x, node["start_dim"], node["end_dim"])
    if op == "linear":
        return lambda x: F.linear(x, t["weight"], t.get("bias"))
    if op == "channel_shuffle":
        from ..layers.shuffle import channel_shuffle

        return lambda x: channel_shuffle(x, node["groups"])
    raise PackedError(f"unknown node op {op!r} in the packed file (written by a newer compactnets?)")


_BINARY_OPS = {"binary_conv2d": _BinaryConv, "bit_max_pool2d": _BitMaxPool, "pack_signs": _PackSigns}


class PackedModel(nn.Module):
    """Runs a packed file: float layers with torch, binary convs with the bit-packed kernel.

    ``forward`` takes a preprocessed float NCHW batch and returns logits. ``threads`` (None: the current
    ``torch.get_num_threads()`` at each call) sets the kernel's thread count. Each input shape and thread count gets
    an execution plan at its first call (:mod:`.packed_plan`): every binary layer's path (popcount or AMX) chosen by
    timing, unless ``kernel_path`` (or ``COMPACTNETS_BINARY_KERNEL``) forces one, and the float layers' precision
    (``precision``: ``"exact"``, float32 in torch; ``"fast"``, a bf16x3 first conv with float32's signs where faster;
    ``"bf16"``, that conv untimed; None: ``COMPACTNETS_PACKED_PRECISION``, else fast). :meth:`plan` shows what was
    chosen.
    """

    def __init__(
        self,
        header: dict,
        tensors: dict[str, torch.Tensor],
        threads: int | None = None,
        precision: str | None = None,
        kernel_path: str | None = None,
    ):
        super().__init__()
        bk.library()  # fail here, with the reason, when the kernel is missing
        node_tensors = check_packed(header, tensors)  # untrusted input: all of it, before anything is built
        # JSON has no tuples; model configs hold them (as timm's do).
        self.pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in header["pretrained_cfg"].items()}
        self.class_names = header.get("class_names")
        self.num_classes = self.pretrained_cfg.get("num_classes")
        self.param_count = header.get("param_count")  # of the float model it was exported from
        self.threads = threads
        self.precision, self.kernel_path = precision, kernel_path
        self._plans: dict[tuple, Plan] = {}
        self._node_tensors = node_tensors
        self.nodes = header["nodes"]
        self._steps = []
        for node, t in zip(self.nodes, node_tensors, strict=True):
            binary = _BINARY_OPS.get(node["op"])
            self._steps.append((node["op"], binary(node, t) if binary else _float_op(node, t), binary is not None))

    def _run(self, x: torch.Tensor, collect: list | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4:
            raise ValueError(f"the packed runner takes a CPU batch (N, C, H, W), not {x.device} {tuple(x.shape)}")
        x = x.float().contiguous(memory_format=torch.channels_last)
        return self.plan(tuple(x.shape)).run(x, collect)

    def plan(self, shape: tuple, threads: int | None = None) -> Plan:
        """The execution plan for float inputs of ``shape`` (N, C, H, W), built (and its choices timed) at first use;
        its ``report`` lists each layer's candidates and the path taken. A few shapes are kept."""
        threads = max(1, threads or self.threads or torch.get_num_threads())
        path, precision = self.kernel_path or bk.forced_path(), resolve_precision(self.precision)
        key = (tuple(shape), threads, path, precision)
        if key not in self._plans:
            if len(self._plans) >= 4:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = build_plan(self, tuple(shape), threads, path, precision)
        return self._plans[key]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)

    @torch.no_grad()
    def run_with_signs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the +-1 input of every binary conv (NCHW floats), to compare with the float model's signs."""
        collect = []
        return self._run(x, collect), collect

    def extra_repr(self) -> str:
        ops = [node["op"] for node in self.nodes]
        return f"{self.pretrained_cfg['architecture']}, {ops.count('binary_conv2d')} binary convs, {len(ops)} nodes"


def unpack_signs(bits: torch.Tensor, groups: int, channels: int) -> torch.Tensor:
    """Packed bits [N, H, W, words] -> +-1 floats [N, C, H, W]."""
    n, h, w, words = bits.shape
    per_group = bk.unpack_sign_bits(bits.numpy().reshape(n, h, w, groups, words // groups), channels // groups)
    negative = torch.from_numpy(per_group.reshape(n, h, w, channels)).permute(0, 3, 1, 2)
    return 1.0 - 2.0 * negative.float()


def read_packed(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Header and tensors of a packed file (no code runs: safetensors + JSON)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise PackedError(f"packed file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as e:
        raise PackedError(f"{path} is not a safetensors file: {e}") from e
    if FORMAT not in metadata:
        raise PackedError(f"{path} is a safetensors file but not a compactnets packed model (no {FORMAT} header)")
    try:
        header = json.loads(metadata[FORMAT])
        check_header(header)
    except (json.JSONDecodeError, RecursionError) as e:
        raise PackedError(f"{path}: the {FORMAT} header is not readable JSON ({type(e).__name__})") from None
    except PackedError as e:
        raise PackedError(f"{path}: {e}") from None
    return header, tensors


def load_packed(path: str | Path, threads: int | None = None, **options) -> PackedModel:
    """The runner of a packed file (an ``nn.Module`` with ``pretrained_cfg`` and ``class_names``); ``options``:
    ``precision`` and ``kernel_path`` of :class:`PackedModel`."""
    header, tensors = read_packed(path)
    try:
        return PackedModel(header, tensors, threads=threads, **options).eval()
    except PackedError as e:
        raise PackedError(f"{path}: {e}") from None
