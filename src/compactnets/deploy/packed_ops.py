"""The op table of packed deployment: for each node kind of the packed format, its name in the file, how the
exporter writes it and how the runner runs it, so that the exporter (:mod:`.packed_export`) and the runtime
(:mod:`.packed_runtime`) share one op set. The checks of each node live with the file checks (:mod:`.packed_format`).

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

Each :class:`Op` has a ``write``, which returns the node's tensors and attributes, and a ``run``, which builds what
the runner calls from a checked node. A float op is written from one torch module (``modules``) and runs as its
torch function, the float reference form; a binary op is written from what the exporter found in a whole binary
block and runs in the bit-packed kernel (:mod:`.binary_kernel`), whose library is loaded at the first call only:
writing needs no compiled code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import BinaryConv2d, ChannelShuffle
from ..layers.fold import fold_bn
from ..layers.shuffle import channel_shuffle
from . import binary_kernel as bk
from .packed_format import PackedError

Written = tuple[dict[str, torch.Tensor], dict]  # a node's tensors and attributes (JSON), as the exporter writes it


@dataclass(frozen=True)
class Op:
    """One node kind: ``name`` (its ``op`` in the file); ``write`` (-> :data:`Written`, or None for a module that
    computes nothing: a 1-group shuffle), from ``(name, module)`` for a float op, which is written from the torch
    modules ``modules``, or from the arguments a binary op's writer names; ``run(node, tensors)``: a float op's
    ``x -> y``, a binary op's (``binary``) kernel step ``(x, threads) -> y``."""

    name: str
    write: Callable[..., Written | None]
    run: Callable[[dict, dict], Callable]
    modules: tuple[type[nn.Module], ...] = ()
    binary: bool = False


def pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def pool_attrs(m) -> dict:
    return dict(
        kernel_size=pair(m.kernel_size),
        stride=pair(m.stride if m.stride is not None else m.kernel_size),
        padding=pair(m.padding),
        ceil_mode=bool(m.ceil_mode),
    )


def _check_padding(name: str, conv: nn.Conv2d) -> None:
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise PackedError(f"cannot pack {name}: padding {conv.padding!r}/{conv.padding_mode!r} is not supported")


# ------------------------------------------------------------------------------------------------------- float ops


def _write_conv2d(name: str, m: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> Written:
    """``bn``: a batch norm after the conv, folded into it."""
    _check_padding(name, m)
    weight = m.binary_weight() if isinstance(m, BinaryConv2d) else m.weight  # float input: no bits to pack
    bias = m.bias
    if bn is not None:
        weight, bias = fold_bn(weight, bias, bn)
    attrs = dict(stride=pair(m.stride), padding=pair(m.padding), dilation=pair(m.dilation), groups=m.groups)
    return {"weight": weight, **({"bias": bias} if bias is not None else {})}, attrs


def _run_conv2d(node: dict, t: dict) -> Callable:
    weight = t["weight"].float().contiguous(memory_format=torch.channels_last)
    bias = t.get("bias")
    args = (node["stride"], node["padding"], node["dilation"], node["groups"])
    return lambda x: F.conv2d(x, weight, bias, *args)


def _write_batch_norm(name: str, m: nn.BatchNorm2d) -> Written:
    if not m.track_running_stats:
        raise PackedError(f"cannot pack {name}: batch norm without running statistics")
    ones, zeros = torch.ones_like(m.running_mean), torch.zeros_like(m.running_mean)
    weight = m.weight if m.weight is not None else ones
    bias = m.bias if m.bias is not None else zeros
    tensors = {"weight": weight, "bias": bias, "running_mean": m.running_mean, "running_var": m.running_var}
    return tensors, {"eps": m.eps}


def _run_batch_norm(node: dict, t: dict) -> Callable:
    return lambda x: F.batch_norm(
        x, t["running_mean"], t["running_var"], t["weight"], t["bias"], False, 0.0, node["eps"]
    )


def _window(node: dict) -> dict:
    return dict(kernel_size=node["kernel_size"], stride=node["stride"], padding=node["padding"])


def _write_max_pool2d(name: str, m: nn.MaxPool2d) -> Written:
    return {}, {**pool_attrs(m), "dilation": pair(m.dilation)}


def _run_max_pool2d(node: dict, t: dict) -> Callable:
    window = _window(node)
    return lambda x: F.max_pool2d(x, **window, ceil_mode=node["ceil_mode"], dilation=node["dilation"])


def _write_avg_pool2d(name: str, m: nn.AvgPool2d) -> Written:
    return {}, {**pool_attrs(m), "count_include_pad": m.count_include_pad, "divisor_override": m.divisor_override}


def _run_avg_pool2d(node: dict, t: dict) -> Callable:
    window = _window(node)
    extra = dict(count_include_pad=node["count_include_pad"], divisor_override=node["divisor_override"])
    return lambda x: F.avg_pool2d(x, **window, ceil_mode=node["ceil_mode"], **extra)


def _write_linear(name: str, m: nn.Linear) -> Written:
    return {"weight": m.weight, **({"bias": m.bias} if m.bias is not None else {})}, {}


def _write_channel_shuffle(name: str, m: ChannelShuffle) -> Written | None:
    return ({}, {"groups": m.groups}) if m.groups > 1 else None


CONV2D = Op("conv2d", _write_conv2d, _run_conv2d, (nn.Conv2d,))
BATCH_NORM = Op("batch_norm", _write_batch_norm, _run_batch_norm, (nn.BatchNorm2d,))
RELU = Op("relu", lambda name, m: ({}, {}), lambda node, t: F.relu, (nn.ReLU,))
MAX_POOL2D = Op("max_pool2d", _write_max_pool2d, _run_max_pool2d, (nn.MaxPool2d,))
AVG_POOL2D = Op("avg_pool2d", _write_avg_pool2d, _run_avg_pool2d, (nn.AvgPool2d,))
ADAPTIVE_AVG_POOL2D = Op(
    "adaptive_avg_pool2d",
    lambda name, m: ({}, {"output_size": pair(m.output_size)}),
    lambda node, t: lambda x: F.adaptive_avg_pool2d(x, node["output_size"]),
    (nn.AdaptiveAvgPool2d,),
)
FLATTEN = Op(
    "flatten",
    lambda name, m: ({}, {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    lambda node, t: lambda x: torch.flatten(x, node["start_dim"], node["end_dim"]),
    (nn.Flatten,),
)
LINEAR = Op("linear", _write_linear, lambda node, t: lambda x: F.linear(x, t["weight"], t.get("bias")), (nn.Linear,))
CHANNEL_SHUFFLE = Op(
    "channel_shuffle",
    _write_channel_shuffle,
    lambda node, t: lambda x: channel_shuffle(x, node["groups"]),
    (ChannelShuffle,),
)


# ------------------------------------------------------------------------------------------------------ binary ops


class _BinaryStep:
    """A kernel call that writes into the buffer it wrote last time (same shape: no fresh allocation, no page
    faults). So a runner must not run two batches at once from two Python threads."""

    buffer: torch.Tensor | None = None


def _write_pack_signs(consumer: BinaryConv2d, sign=None, threshold=None) -> Written:
    """The packing of floats for ``consumer``; with ``sign`` and ``threshold``, the per-channel threshold of what
    lies between the float op and the sign."""
    tensors = {"sign": sign, "threshold": threshold.float()} if sign is not None else {}
    return tensors, {"groups": consumer.groups, "channels": consumer.in_channels}


class _PackSigns(_BinaryStep):
    def __init__(self, node: dict, t: dict):
        self.groups, self.channels = node["groups"], node["channels"]
        self.folded = {k: t[k].float().contiguous() for k in ("sign", "threshold") if k in t}

    def __call__(self, x: torch.Tensor, threads: int | None) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"pack_signs expects {self.channels} channels, got {x.shape[1]}")
        self.buffer = bk.pack_signs(x.permute(0, 2, 3, 1), self.groups, out=self.buffer, **self.folded)
        return self.buffer


def sign_weight(name: str, conv: BinaryConv2d) -> tuple[np.ndarray, torch.Tensor]:
    """Filters as bool [out, kh, kw, in_per_group] (True = -1) and the per-filter scale alpha."""
    w_hat = conv.binary_weight().detach().float()
    alpha = w_hat.abs().amax(dim=(1, 2, 3))
    if (w_hat == 0).any() or not torch.equal(w_hat.abs(), alpha.view(-1, 1, 1, 1).expand_as(w_hat)):
        raise PackedError(f"cannot pack {name}: its binary weight is not sign * alpha with no zeros")
    _check_padding(name, conv)
    return (w_hat < 0).permute(0, 2, 3, 1).numpy(), alpha


def _small_int(t: torch.Tensor) -> torch.Tensor:
    """int16 when the values fit (per-channel terms are a visible part of a packed file), else int32."""
    fits = t.abs().max() < 2**15
    return t.to(torch.int16 if fits else torch.int32)


def _write_binary_conv2d(
    conv: BinaryConv2d,
    negative: np.ndarray,
    *,
    alpha: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    threshold: torch.Tensor | None = None,
    threshold_negative: torch.Tensor | None = None,
    out_groups: int | None = None,
    out_shuffle: tuple[int, ...] = (),
) -> Written:
    """``conv`` with filters ``negative`` (:func:`sign_weight`): float output ``alpha * dot + bias`` (``relu``),
    or, given ``threshold`` (integers) and ``threshold_negative`` (bool, where its sign is -1), bits output for a
    consumer of ``out_groups`` after the channel shuffles of ``out_shuffle`` (their groups)."""
    flat = negative.reshape(negative.shape[0], -1)
    tensors = {"weight_bits": torch.from_numpy(np.packbits(flat, axis=-1, bitorder="little"))}
    attrs = dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=pair(conv.kernel_size),
        stride=pair(conv.stride),
        padding=pair(conv.padding),
        dilation=pair(conv.dilation),
        groups=conv.groups,
    )
    if threshold is None:
        return {**tensors, "alpha": alpha, "bias": bias}, {**attrs, "output": "float", "relu": relu}
    # One bit per channel for the sign (set = -1) and the shuffles' groups for the order: a byte or two per
    # channel less, which nin_gc_xnornet's binary layers need to stay 25x smaller than float.
    sign_bits = torch.from_numpy(np.packbits(threshold_negative.numpy(), bitorder="little"))
    tensors.update(threshold=_small_int(threshold), threshold_sign_bits=sign_bits)
    shuffles = {"out_shuffle": list(out_shuffle)} if out_shuffle else {}
    return tensors, {**attrs, "output": "bits", "out_groups": out_groups, **shuffles}


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


def _write_bit_max_pool2d(m: nn.MaxPool2d, and_mask: torch.Tensor, groups: int) -> Written:
    """``and_mask`` (bool per channel): where the pool's -1 bit is the AND of the window."""
    return {"and_mask": and_mask.to(torch.uint8)}, {**pool_attrs(m), "groups": groups}


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


PACK_SIGNS = Op("pack_signs", _write_pack_signs, _PackSigns, binary=True)
BINARY_CONV2D = Op("binary_conv2d", _write_binary_conv2d, _BinaryConv, binary=True)
BIT_MAX_POOL2D = Op("bit_max_pool2d", _write_bit_max_pool2d, _BitMaxPool, binary=True)

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        CONV2D,
        BATCH_NORM,
        RELU,
        MAX_POOL2D,
        AVG_POOL2D,
        ADAPTIVE_AVG_POOL2D,
        FLATTEN,
        LINEAR,
        CHANNEL_SHUFFLE,
        PACK_SIGNS,
        BINARY_CONV2D,
        BIT_MAX_POOL2D,
    )
}


def module_op(name: str, m: nn.Module) -> Op:
    """The float op that writes module ``m`` (named ``name`` in its model)."""
    op = next((op for op in OPS.values() if isinstance(m, op.modules)), None)
    if op is None:
        raise PackedError(f"cannot pack {name}: {type(m).__name__} has no packed equivalent")
    return op


def node_op(node: dict) -> Op:
    """The op of a (checked) node."""
    op = OPS.get(node["op"])
    if op is None:
        raise PackedError(f"unknown node op {node['op']!r} in the packed file (written by a newer compactnets?)")
    return op
