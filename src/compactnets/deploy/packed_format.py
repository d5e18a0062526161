"""Checks of a packed file (``*.packed.safetensors``) before anything is built from it: a packed file is untrusted
input, and its tensors end up in native code that trusts their sizes.

:func:`check_header` checks the JSON header's structure and types, the format and version, the preprocessing
(with the checks of a checkpoint's ``pretrained_cfg``) and the class names. :func:`check_packed` then walks the
chain from the header's ``input_size``: every node's op, each attribute's type and range, each tensor's dtype and
shape against the attributes, and every node's input against the previous node's output (floats or packed bits,
channels, the groups of the bit layout, spatial size), up to ``num_classes`` logits. Activations and the kernel's
weight layout stay within bounds, so no file makes the runner allocate without limit. Any problem is one line, a
:class:`PackedError` naming the node and the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch

from ..checkpoint import MAX_IMAGE_SIDE, PREPROCESSING_KEYS, check_class_names, check_preprocessing
from ..errors import CheckpointError
from ..layers.fold import compose, shuffle_perm

FORMAT = "compactnets.packed"
# 2: a bits-output binary conv stores its threshold signs as bits (``threshold_sign_bits``) and the channel
# shuffles after it as their groups (``out_shuffle``), where version 1 stored int8 signs and an ``out_order``
# permutation. Both are read.
FORMAT_VERSION = 2

MAX_NODES = 4096
MAX_CHANNELS = 1 << 16  # channels, features and classes
MAX_ACTIVATION = 1 << 26  # values per image between two nodes (256 MB of float32)
MAX_DOT = 1 << 24  # kh * kw * in_channels / groups of a binary conv: its popcount sums stay far inside int32
MAX_KERNEL_WORDS = 1 << 25  # a binary conv's filters in the kernel's layout (uint64 words, plus int32 corrections)

_HEADER_KEYS = {"format", "version", "pretrained_cfg", "param_count", "class_names", "nodes"}
_CFG_KEYS = {*PREPROCESSING_KEYS, "architecture", "num_classes", "dataset"}
_FLOAT = (torch.float32,)
_SMALL_INT = (torch.int16, torch.int32)


class PackedError(CheckpointError):
    """A model that cannot be packed, or a file that is not a readable packed model."""


def _is_int(v) -> bool:
    return type(v) is int  # JSON integers; not bool


def _is_real(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _is_text(v) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable()


def check_header(header) -> int:
    """Raise a PackedError for the first thing wrong in a header outside its nodes' contents; returns its version."""
    if not isinstance(header, dict):
        raise PackedError(f"the header is a JSON {type(header).__name__}, not an object")
    unknown = sorted(set(header) - _HEADER_KEYS)
    if unknown:
        raise PackedError(f"unknown header key {unknown[0]!r:.80}")
    if header.get("format") != FORMAT:
        raise PackedError(f"header format {header.get('format')!r:.80} is not {FORMAT!r}")
    version = header.get("version")
    if not (_is_int(version) and version >= 1):
        raise PackedError(f"header version {version!r:.80} should be a positive integer")
    if version > FORMAT_VERSION:
        raise PackedError(f"packed format version {version}; this compactnets reads up to {FORMAT_VERSION} "
                          "(written by a newer compactnets?)")  # fmt: skip
    cfg = header.get("pretrained_cfg")
    if not isinstance(cfg, dict):
        raise PackedError(f"header pretrained_cfg {cfg!r:.80} should be an object")
    unknown = sorted(set(cfg) - _CFG_KEYS)
    if unknown:
        raise PackedError(f"unknown pretrained_cfg key {unknown[0]!r:.80}")
    for key, check, expected in (
        ("input_size", lambda v: v is not None, "(channels, height, width)"),
        ("architecture", _is_text, "a name"),
        ("num_classes", lambda v: _is_int(v) and 1 <= v <= MAX_CHANNELS, f"an integer in 1..{MAX_CHANNELS}"),
    ):
        if not check(cfg.get(key)):
            raise PackedError(f"header pretrained_cfg {key} = {cfg.get(key)!r:.80} should be {expected}")
    if "dataset" in cfg and not _is_text(cfg["dataset"]):
        raise PackedError(f"header pretrained_cfg dataset = {cfg['dataset']!r:.80} should be a name")
    try:
        check_preprocessing(cfg, "header")
        check_class_names(header.get("class_names"), cfg["num_classes"], "header")
    except CheckpointError as e:
        raise PackedError(str(e)) from None
    count = header.get("param_count")
    if count is not None and not (_is_int(count) and count >= 0):
        raise PackedError(f"header param_count = {count!r:.80} should be a non-negative integer")
    nodes = header.get("nodes")
    if not (isinstance(nodes, list) and 1 <= len(nodes) <= MAX_NODES):
        raise PackedError(f"header nodes should be a list of 1-{MAX_NODES} nodes")
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise PackedError(f"node {i} is a JSON {type(node).__name__}, not an object")
        if node.get("op") not in _OPS:
            raise PackedError(f"node {i} has an unknown op {node.get('op')!r:.80} (written by a newer compactnets?)")
    return version


@dataclass(frozen=True)
class _Value:
    """What one node hands the next, per image: floats of ``shape``, or, with ``bits_groups``, packed sign bits of
    ``shape`` (channels, height, width) laid out in that many groups."""

    shape: tuple[int, ...]
    bits_groups: int | None = None


def _describe(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


class _Node:
    """One node's attributes and tensors, each read with its check; what no check reads is an error (``finish``).
    ``runtime`` holds the tensors in the form the runner takes."""

    def __init__(self, index: int, node: dict, tensors: dict[str, torch.Tensor], version: int):
        self.index, self.node, self.tensors, self.version = index, node, tensors, version
        self.op = node["op"]
        self.runtime = dict(tensors)
        self._read, self._taken = {"op"}, set()

    def fail(self, message: str) -> NoReturn:
        raise PackedError(f"node {self.index} ({self.op}): {message}")

    def value(self, key: str, required: bool = True):
        if key not in self.node and required:
            self.fail(f"has no {key!r}")
        self._read.add(key)
        return self.node.get(key)

    def int(self, key: str, low: int, high: int) -> int:
        v = self.value(key)
        if not (_is_int(v) and low <= v <= high):
            self.fail(f"{key} = {v!r:.80} should be an integer in {low}..{high}")
        return v

    def pair(self, key: str, low: int) -> tuple[int, int]:
        v = self.value(key)
        if not (isinstance(v, list) and len(v) == 2 and all(_is_int(i) and low <= i <= MAX_IMAGE_SIDE for i in v)):
            self.fail(f"{key} = {v!r:.80} should be two integers in {low}..{MAX_IMAGE_SIDE}")
        return v[0], v[1]

    def flag(self, key: str) -> bool:
        v = self.value(key)
        if not isinstance(v, bool):
            self.fail(f"{key} = {v!r:.80} should be true or false")
        return v

    def tensor(self, name: str, dtypes: tuple, shape=None, ndim: int | None = None, required: bool = True):
        t = self.tensors.get(name)
        if t is None:
            if required:
                self.fail(f"tensor {name!r} is missing")
            return None
        self._taken.add(name)
        if t.dtype not in dtypes:
            expected = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
            self.fail(f"tensor {name!r} is {str(t.dtype).removeprefix('torch.')}, not {expected}")
        if shape is not None and tuple(t.shape) != tuple(shape):
            self.fail(f"tensor {name!r} has shape {list(t.shape)}, not {list(shape)}")
        if ndim is not None and (t.dim() != ndim or t.numel() == 0):
            self.fail(f"tensor {name!r} has shape {list(t.shape)}, not {ndim} non-empty dimensions")
        return t

    def floats(self, x: _Value, dims: int | None = 3) -> tuple[int, ...]:
        if x.bits_groups is not None:
            self.fail("takes floats, but the node before it gives packed bits")
        if dims is not None and len(x.shape) != dims:
            self.fail(f"takes {dims}-dim floats per image, but gets {_describe(x.shape)}")
        return x.shape

    def bits(self, x: _Value, groups: int) -> tuple[int, ...]:
        if x.bits_groups is None:
            self.fail("takes packed bits, but the node before it gives floats")
        if x.bits_groups != groups:
            self.fail(f"groups = {groups}, but its input bits are laid out in {x.bits_groups} groups")
        return x.shape

    def output(self, shape: tuple[int, ...], bits_groups: int | None = None) -> _Value:
        if math.prod(shape) > MAX_ACTIVATION:
            self.fail(f"its output, {_describe(shape)} per image, exceeds {MAX_ACTIVATION:,} values")
        return _Value(tuple(shape), bits_groups)

    def finish(self) -> None:
        unread = sorted(set(self.node) - self._read)
        if unread:
            self.fail(f"unknown attribute {unread[0]!r:.80}")
        unused = sorted(set(self.tensors) - self._taken)
        if unused:
            self.fail(f"unknown tensor {self.index}.{unused[0]:.80}")


def _window_output(n: _Node, size, kernel, stride, padding, dilation=(1, 1), ceil_mode=False) -> tuple[int, int]:
    """Output height and width of a convolution or pooling window (PyTorch's rule, ceil_mode included)."""
    out = []
    for s, k, st, p, d in zip(size, kernel, stride, padding, dilation, strict=True):
        o = (s + 2 * p - d * (k - 1) - 1 + (st - 1 if ceil_mode else 0)) // st + 1
        if ceil_mode and (o - 1) * st >= s + p:  # the last window must start inside the input or its left padding
            o -= 1
        if o < 1:
            n.fail(f"its window (kernel {k}, dilation {d}, padding {p}) does not fit its input of {s} pixels")
        out.append(o)
    return out[0], out[1]


def _pool_padding(n: _Node, kernel, padding) -> None:
    if any(p > k // 2 for k, p in zip(kernel, padding, strict=True)):
        n.fail(f"padding {list(padding)} is more than half of kernel_size {list(kernel)}")


def _divides(n: _Node, groups: int, channels: int, what: str) -> None:
    if channels % groups:
        n.fail(f"groups = {groups} does not divide its {channels} {what}")


def _conv2d(n: _Node, x: _Value) -> _Value:
    c, h, w = n.floats(x)
    stride, padding, dilation = n.pair("stride", 1), n.pair("padding", 0), n.pair("dilation", 1)
    groups = n.int("groups", 1, MAX_CHANNELS)
    out, in_per_group, kh, kw = n.tensor("weight", _FLOAT, ndim=4).shape
    if in_per_group * groups != c:
        n.fail(f"its weight takes {in_per_group} x groups {groups} channels, but its input has {c}")
    _divides(n, groups, out, "filters")
    n.tensor("bias", _FLOAT, (out,), required=False)
    return n.output((out, *_window_output(n, (h, w), (kh, kw), stride, padding, dilation)))


def _batch_norm(n: _Node, x: _Value) -> _Value:
    c, _, _ = n.floats(x)
    eps = n.value("eps")
    if not (_is_real(eps) and eps >= 0):
        n.fail(f"eps = {eps!r:.80} should be a non-negative number")
    for name in ("weight", "bias", "running_mean", "running_var"):
        n.tensor(name, _FLOAT, (c,))
    return x


def _relu(n: _Node, x: _Value) -> _Value:
    n.floats(x, dims=None)
    return x


def _pool2d(n: _Node, x: _Value) -> _Value:
    c, h, w = n.floats(x)
    kernel, stride, padding = n.pair("kernel_size", 1), n.pair("stride", 1), n.pair("padding", 0)
    ceil_mode = n.flag("ceil_mode")
    dilation = n.pair("dilation", 1) if n.op == "max_pool2d" else (1, 1)
    if n.op == "avg_pool2d":
        n.flag("count_include_pad")
        divisor = n.value("divisor_override")
        if divisor is not None and not (_is_int(divisor) and 1 <= divisor <= MAX_ACTIVATION):
            n.fail(f"divisor_override = {divisor!r:.80} should be null or a positive integer")
    _pool_padding(n, kernel, padding)
    return n.output((c, *_window_output(n, (h, w), kernel, stride, padding, dilation, ceil_mode)))


def _adaptive_avg_pool2d(n: _Node, x: _Value) -> _Value:
    c, _, _ = n.floats(x)
    return n.output((c, *n.pair("output_size", 1)))


def _flatten(n: _Node, x: _Value) -> _Value:
    shape = n.floats(x, dims=None)
    dims = len(shape) + 1  # with the batch dimension
    start, end = (n.int(key, -dims, dims - 1) % dims for key in ("start_dim", "end_dim"))
    if not 1 <= start <= end:
        n.fail(f"flattens dimensions {start}..{end} of a {dims}-dim batch; only 1 <= start <= end keeps the batch")
    return n.output((*shape[: start - 1], math.prod(shape[start - 1 : end]), *shape[end:]))


def _linear(n: _Node, x: _Value) -> _Value:
    shape = n.floats(x, dims=None)
    out, features = n.tensor("weight", _FLOAT, ndim=2).shape
    if features != shape[-1]:
        n.fail(f"its weight takes {features} features, but its input has {shape[-1]}")
    n.tensor("bias", _FLOAT, (out,), required=False)
    return n.output((*shape[:-1], out))


def _channel_shuffle(n: _Node, x: _Value) -> _Value:
    c, _, _ = n.floats(x)
    _divides(n, n.int("groups", 1, MAX_CHANNELS), c, "channels")
    return x


def _pack_signs(n: _Node, x: _Value) -> _Value:
    c, h, w = n.floats(x)
    channels, groups = n.int("channels", 1, MAX_CHANNELS), n.int("groups", 1, MAX_CHANNELS)
    if channels != c:
        n.fail(f"channels = {channels}, but its input has {c}")
    _divides(n, groups, c, "channels")
    sign = n.tensor("sign", _FLOAT, (c,), required=False)
    threshold = n.tensor("threshold", _FLOAT, (c,), required=False)
    if (sign is None) != (threshold is None):
        n.fail("has one of the tensors 'sign' and 'threshold' without the other")
    if sign is not None and not ((sign == 1) | (sign == -1)).all():
        n.fail("tensor 'sign' holds values other than +1 and -1")
    if threshold is not None and threshold.isnan().any():
        n.fail("tensor 'threshold' holds NaN")
    return n.output((c, h, w), bits_groups=groups)


def _binary_conv2d(n: _Node, x: _Value) -> _Value:
    cin, cout = n.int("in_channels", 1, MAX_CHANNELS), n.int("out_channels", 1, MAX_CHANNELS)
    groups = n.int("groups", 1, MAX_CHANNELS)
    c, h, w = n.bits(x, groups)
    if cin != c:
        n.fail(f"in_channels = {cin}, but its input has {c}")
    _divides(n, groups, cin, "input channels")
    _divides(n, groups, cout, "output channels")
    kernel, stride = n.pair("kernel_size", 1), n.pair("stride", 1)
    padding, dilation = n.pair("padding", 0), n.pair("dilation", 1)
    taps, in_per_group, out_per_group = kernel[0] * kernel[1], cin // groups, cout // groups
    if taps * in_per_group > MAX_DOT:
        n.fail(f"its filters of {taps * in_per_group:,} weights exceed {MAX_DOT:,}")
    kernel_words = groups * taps * -(-in_per_group // 64) * -(-out_per_group // 8) * 8 + cout * taps
    if kernel_words > MAX_KERNEL_WORDS:
        n.fail(f"its filters take {kernel_words:,} words in the kernel's layout, more than {MAX_KERNEL_WORDS:,}")
    n.tensor("weight_bits", (torch.uint8,), (cout, -(-taps * in_per_group // 8)))
    size = _window_output(n, (h, w), kernel, stride, padding, dilation)
    output = n.value("output")
    if output == "float":
        n.flag("relu")
        n.tensor("alpha", _FLOAT, (cout,))
        n.tensor("bias", _FLOAT, (cout,))
        return n.output((cout, *size))
    if output != "bits":
        n.fail(f"output = {output!r:.80} should be 'float' or 'bits'")
    out_groups = n.int("out_groups", 1, MAX_CHANNELS)
    _divides(n, out_groups, cout, "output channels (out_groups)")
    n.tensor("threshold", _SMALL_INT, (cout,))
    if n.version == 1:
        sign = n.tensor("threshold_sign", (torch.int8,), (cout,))
        if not ((sign == 1) | (sign == -1)).all():
            n.fail("tensor 'threshold_sign' holds values other than +1 and -1")
        order = n.tensor("out_order", _SMALL_INT, (cout,), required=False)
        if order is not None and not torch.equal(order.long().sort().values, torch.arange(cout)):
            n.fail(f"tensor 'out_order' is not a permutation of 0..{cout - 1}")
    else:
        negative = np.unpackbits(n.tensor("threshold_sign_bits", (torch.uint8,), (-(-cout // 8),)).numpy(),
                                 bitorder="little")[:cout]  # fmt: skip
        n.runtime["threshold_sign"] = torch.from_numpy(1 - 2 * negative.astype(np.int8))
        del n.runtime["threshold_sign_bits"]
        shuffles = n.value("out_shuffle", required=False)
        if shuffles is not None:
            if not (isinstance(shuffles, list) and 1 <= len(shuffles) <= 8 and all(map(_is_int, shuffles))
                    and all(1 <= g <= cout and cout % g == 0 for g in shuffles)):  # fmt: skip
                n.fail(f"out_shuffle = {shuffles!r:.80} should be a list of 1-8 divisors of {cout}")
            order = None
            for g in shuffles:
                order = compose(order, shuffle_perm(cout, g))
            n.runtime["out_order"] = order
    return n.output((cout, *size), bits_groups=out_groups)


def _bit_max_pool2d(n: _Node, x: _Value) -> _Value:
    groups = n.int("groups", 1, MAX_CHANNELS)
    c, h, w = n.bits(x, groups)
    kernel, stride, padding = n.pair("kernel_size", 1), n.pair("stride", 1), n.pair("padding", 0)
    if n.flag("ceil_mode"):
        n.fail("ceil_mode is not supported on packed bits")
    _pool_padding(n, kernel, padding)
    mask = n.tensor("and_mask", (torch.uint8,), (c,))
    if (mask > 1).any():
        n.fail("tensor 'and_mask' holds values other than 0 and 1")
    return n.output((c, *_window_output(n, (h, w), kernel, stride, padding)), bits_groups=groups)


_OPS = {
    "conv2d": _conv2d,
    "batch_norm": _batch_norm,
    "relu": _relu,
    "max_pool2d": _pool2d,
    "avg_pool2d": _pool2d,
    "adaptive_avg_pool2d": _adaptive_avg_pool2d,
    "flatten": _flatten,
    "linear": _linear,
    "channel_shuffle": _channel_shuffle,
    "pack_signs": _pack_signs,
    "binary_conv2d": _binary_conv2d,
    "bit_max_pool2d": _bit_max_pool2d,
}


def _tensors_by_node(tensors: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
    per_node = [{} for _ in range(count)]
    for key, t in tensors.items():
        index, _, name = key.partition(".")
        if not (index.isascii() and index.isdigit() and str(int(index)) == index and int(index) < count and name):
            raise PackedError(f"tensor {key!r:.80} belongs to no node")
        per_node[int(index)][name] = t
    return per_node


def check_packed(header, tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Check a whole packed model (see the module docstring); returns each node's tensors as the runner takes
    them (version 2's sign bits and shuffle groups decoded into ``threshold_sign`` and ``out_order``)."""
    version = check_header(header)
    per_node = _tensors_by_node(tensors, len(header["nodes"]))
    x = _Value(tuple(header["pretrained_cfg"]["input_size"]))
    runtime = []
    for i, (node, node_tensors) in enumerate(zip(header["nodes"], per_node, strict=True)):
        n = _Node(i, node, node_tensors, version)
        x = _OPS[n.op](n, x)
        n.finish()
        runtime.append(n.runtime)
    classes = header["pretrained_cfg"]["num_classes"]
    if x.bits_groups is not None or x.shape != (classes,):
        given = "packed bits" if x.bits_groups is not None else f"floats of {_describe(x.shape)}"
        raise PackedError(f"the nodes end in {given} per image, not the {classes} logits of num_classes")
    return runtime
