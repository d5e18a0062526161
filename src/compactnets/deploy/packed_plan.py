"""Execution plans of the packed runner: for one input shape and thread count, every layer's path, chosen by timing
the candidates at the first call with that shape (as oneDNN and OpenVINO pick kernels when they compile a model),
with all buffers allocated once and neighbouring nodes fused where one pass does both.

Paths of a binary conv (:mod:`.binary_kernel`): xor + popcount on packed bits (``avx512``, ``avx2``, ``portable``)
or int8 AMX tile multiplies on +-1 bytes (``amx``). They compute the same integers, so the choice changes the time
only, never a bit. Each layer's producer (the previous conv's epilogue, the packing of floats, a max pool on signs)
writes its signs in the format the chosen path reads: bits, or bytes inside a zero border as wide as the conv's
padding (the float model pads sign(x) with 0; the popcount paths correct for it instead).

Precision of the full-precision layers: ``"exact"`` runs them in float32 with torch, as the float model does (the
runner then matches it up to float summation order); ``"fast"`` (the default) also times two fused forms of a float
conv that feeds a sign (the first layer of an XNOR net), and takes the fastest: a bfloat16 form (AMX bf16 tiles, or
AVX512-BF16; three bf16 products per term, float32 sums) and a float32 one (AVX2 and FMA,
:class:`~.binary_kernel.Float32ConvSigns`: torch's arithmetic up to summation order, without torch's conv, its
thread pool or a packing pass); ``"bf16"`` takes the bfloat16 form untimed. Its signs are float32's: each one whose
value lies within the bf16 form's error bound of its threshold is recomputed in float32
(:class:`~.binary_kernel.Bf16ConvSigns`). One bf16 product per term, as OpenVINO's default precision computes,
changed 15 % of a trained nin_xnornet's CIFAR-10 predictions. Default: :data:`DEFAULT_PRECISION`, or the
``COMPACTNETS_PACKED_PRECISION`` environment variable.

Fused steps: float conv -> pack_signs (float32 or bf16, above); avg_pool2d -> pack_signs (one pass, torch's
arithmetic); the classifier head, 1x1 conv -> [ReLU] -> global average pool (one C pass); another 1x1 float conv on
channels-last floats as a matrix product (fewer torch calls on small tensors, where each costs more than its
arithmetic). A channel shuffle between float ops runs as no op of its own: after a binary conv with float output
and an average pool (a per-channel op), as the conv's output order; before the classifier head, as an order of its
weights.

Large batches: a batch of at least two chunks of :data:`CHUNK` images is also run chunk by chunk through one
smaller plan (:class:`ChunkedPlan`), so that each layer's input and output stay in the cores' L2 caches, and the
faster of the two is kept (both timed on the same random batch).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..layers.fold import shuffle_perm
from . import binary_kernel as bk

ENV_PRECISION = "COMPACTNETS_PACKED_PRECISION"
PRECISIONS = ("exact", "fast", "bf16")
DEFAULT_PRECISION = "fast"
_SIGN_OPS = ("pack_signs", "binary_conv2d", "bit_max_pool2d")  # nodes whose output (bits mode) is signs
CHUNK = 8  # images per chunk of a large batch (nin_xnornet: ~0.4 MB of activations per image and layer)


def resolve_precision(precision: str | None) -> str:
    """``precision``, else the environment's, else :data:`DEFAULT_PRECISION`; checked."""
    value = precision or os.environ.get(ENV_PRECISION) or DEFAULT_PRECISION
    if value not in PRECISIONS:
        where = "precision" if precision else ENV_PRECISION
        raise ValueError(f"{where}: unknown packed precision {value!r} (choose from {', '.join(PRECISIONS)})")
    return value


def fastest(candidates: dict[str, Callable[[], object]], budget_s: float = 0.03) -> tuple[str, dict[str, float]]:
    """The candidate with the least wall time (min over rounds, interleaved; at least 3 rounds, more while within
    ``budget_s``), and each one's time in ms."""
    for fn in candidates.values():
        fn()  # warm: first-touch page faults, caches
    times = {name: float("inf") for name in candidates}
    start, rounds = time.perf_counter(), 0
    while rounds < 3 or (rounds < 20 and time.perf_counter() - start < budget_s):
        for name, fn in candidates.items():
            t = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - t)
        rounds += 1
    ms = {name: 1e3 * t for name, t in times.items()}
    return min(ms, key=ms.get), ms


@dataclass
class _Signs:
    """Where a node's signs go: packed bits for ``groups``, or bytes inside a zero border of ``padding`` with slack
    for a conv of ``stride_w``."""

    format: str = "bits"
    groups: int = 1
    padding: tuple = (0, 0)
    stride_w: int = 1


@dataclass
class _Op:
    fn: Callable  # value -> value
    fresh: bool  # returns a new tensor each call (not a buffer the next call overwrites)
    collect: Callable | None = None  # the +-1 input of a binary conv, NCHW floats (run_with_signs)
    any_strides: bool = False  # reads float32 input at any strides (the others take channels-last)
    name: str = ""  # the nodes it runs, e.g. "avg_pool2d + channel_shuffle + pack_signs"


@dataclass
class Plan:
    """The ops of one input shape and thread count, and what was chosen for each layer (``report``: per layer, the
    candidates' times in ms, the path taken and its thread count)."""

    shape: tuple
    threads: int
    precision: str
    ops: list[_Op] = field(default_factory=list)
    report: list[dict] = field(default_factory=list)

    def run(self, x: torch.Tensor, collect: list | None = None) -> torch.Tensor:
        """Logits of a float batch of ``shape`` (any strides)."""
        if not self.ops[0].any_strides:
            x = x.float().contiguous(memory_format=torch.channels_last)
        fresh = True
        for op in self.ops:
            if collect is not None and op.collect is not None:
                collect.append(op.collect())
            x, fresh = op.fn(x), op.fresh
        return x if fresh else x.clone()  # never hand out a buffer that the next call overwrites


@dataclass
class ChunkedPlan:
    """A batch of ``shape`` run as chunks of ``plan.shape[0]`` images through ``plan`` (the last, smaller chunk
    through ``rest``); ``report``: the chunk plan's, and the batch's choice."""

    shape: tuple
    plan: Plan
    rest: Plan | None
    report: list[dict] = field(default_factory=list)

    @property
    def threads(self) -> int:
        return self.plan.threads

    @property
    def precision(self) -> str:
        return self.plan.precision

    def run(self, x: torch.Tensor, collect: list | None = None) -> torch.Tensor:
        size, logits, signs = self.plan.shape[0], [], []
        for start in range(0, x.shape[0], size):
            chunk = x[start : start + size]
            collected = None if collect is None else []
            logits.append((self.plan if chunk.shape[0] == size else self.rest).run(chunk, collected))
            signs.append(collected)
        if collect is not None:  # per binary conv, its input over the whole batch
            collect.extend(torch.cat(parts) for parts in zip(*signs, strict=True))
        return torch.cat(logits)


def _collect_bits(buffer: torch.Tensor, groups: int, channels: int) -> Callable:
    def collect():  # packed bits [N, H, W, words] -> +-1 floats [N, C, H, W]
        n, h, w, words = buffer.shape
        per_group = bk.unpack_sign_bits(buffer.numpy().reshape(n, h, w, groups, words // groups), channels // groups)
        negative = torch.from_numpy(per_group.reshape(n, h, w, channels)).permute(0, 3, 1, 2)
        return 1.0 - 2.0 * negative.float()

    return collect


def _collect_bytes(buffer: torch.Tensor, padding) -> Callable:
    def collect():
        n, hp, wp, _ = buffer.shape
        inside = buffer[:, padding[0] : hp - padding[0], padding[1] : wp - padding[1]]
        return inside.permute(0, 3, 1, 2).float()

    return collect


def _random_signs(shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """+-1 floats, channels-last [N, H, W, C]."""
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


def describe_conv(node: dict, input_shape) -> str:
    """``in->out kxk [gG] @HxW`` of a binary conv node and its input (bits [N, H, W, words])."""
    (kh, kw), groups = node["kernel_size"], node["groups"]
    layer = f"{node['in_channels']}->{node['out_channels']} {kh}x{kw}" + (f" g{groups}" if groups > 1 else "")
    return f"{layer} @{input_shape[1]}x{input_shape[2]}"


def auto_paths() -> list[str]:
    """The paths a plan times for each binary conv: the best popcount path (the others are slower on the same CPU:
    AVX2 and portable emulate the popcount) and every bytes path this CPU runs."""
    return [bk.kernel_path(), *(p for p in bk.supported_paths() if bk.input_format(p) == "int8")]


def conv_candidates(runner, i: int, size: tuple, threads: int, paths: list | None = None) -> dict[str, Callable]:
    """Node ``i`` (a binary conv of ``runner``) on random +-1 input of ``size`` (N, H, W), once per path (default:
    every path this CPU runs), each reading the format its path takes: what the plan times. With more than one
    thread, each path also on one thread (``"<path> x1"``): a small layer can lose more to waking a second thread
    than it gains."""
    node, step = runner.nodes[i], runner._steps[i][1]
    signs = _random_signs((*size, node["in_channels"]), torch.Generator().manual_seed(i))
    calls = {}
    paths = paths or bk.supported_paths()
    for p in paths:
        if bk.input_format(p) == "int8" and len(paths) > 1 and step.weights.amx_bytes() > bk.AMX_MAX_WEIGHT_BYTES:
            continue  # not a candidate (forced, it says why)
        if bk.input_format(p) == "int8":
            x = bk.pack_signs(signs, 1, out_format="int8", out_padding=tuple(node["padding"]))
        else:
            x = bk.pack_signs(signs, node["groups"])
        call = bk.conv_call(x, step.weights, *step.geometry, path=p, **step.kwargs)
        calls[p] = lambda call=call: call(threads)
        if threads > 1:
            calls[f"{p} x1"] = lambda call=call: call(1)
    return calls


def _path_threads(choice: str, threads: int) -> tuple[str, int]:
    """``"amx"`` -> (amx, threads); ``"amx x1"`` -> (amx, 1)."""
    path, _, one = choice.partition(" x")
    return path, 1 if one else threads


def build_batch_plan(runner, shape: tuple, threads: int, path: str | None, precision: str) -> Plan | ChunkedPlan:
    """The plan for ``shape``: :func:`build_plan`, or for a batch of two chunks or more, that or a
    :class:`ChunkedPlan`, whichever runs the batch faster here (its report row: node None, ``layer`` "batch of N")."""
    whole = build_plan(runner, shape, threads, path, precision)
    n = shape[0]
    if n < 2 * CHUNK:
        return whole
    rest = build_plan(runner, (n % CHUNK, *shape[1:]), threads, path, precision) if n % CHUNK else None
    chunked = ChunkedPlan(tuple(shape), build_plan(runner, (CHUNK, *shape[1:]), threads, path, precision), rest)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chosen, ms = fastest({"whole": lambda: whole.run(x), f"chunks of {CHUNK}": lambda: chunked.run(x)})
    row = {"node": None, "layer": f"batch of {n}", "times_ms": ms, "path": chosen, "threads": threads}
    if chosen == "whole":
        whole.report.append(row)
        return whole
    chunked.report = [*chunked.plan.report, row]
    return chunked


def build_plan(runner, shape: tuple, threads: int, path: str | None, precision: str) -> Plan:
    """The plan of ``runner`` (a :class:`~.packed_runtime.PackedModel`) for float inputs of ``shape``."""
    plan = Plan(tuple(shape), threads, precision)
    nodes, steps = runner.nodes, runner._steps
    # Pass 1: every node's input, from one reference run on zeros (its shapes; nothing else is kept).
    inputs = []
    with torch.no_grad():
        value = torch.zeros(shape).contiguous(memory_format=torch.channels_last)
        for _, step, binary in steps:
            inputs.append(value)
            value = step(value, threads) if binary else step(value)
    # Pass 2: each binary conv's path (and thread count), by timing the candidates on its input shape.
    paths, conv_threads = {}, {}
    for i, node in enumerate(nodes):
        if node["op"] != "binary_conv2d":
            continue
        calls = conv_candidates(runner, i, tuple(inputs[i].shape[:3]), threads, [path] if path else auto_paths())
        chosen, ms = fastest(calls) if len(calls) > 1 else (next(iter(calls)), {})
        paths[i], conv_threads[i] = _path_threads(chosen, threads)
        plan.report.append({"node": i, "layer": describe_conv(node, inputs[i].shape), "times_ms": ms,
                            "path": paths[i], "threads": conv_threads[i]})  # fmt: skip
    # Pass 3: the format each node writes its signs in, from its consumer back.
    signs_out: dict[int, _Signs] = {}
    for i in reversed(range(len(nodes))):
        if nodes[i]["op"] not in _SIGN_OPS or i + 1 >= len(nodes):
            continue
        consumer = nodes[i + 1]
        if consumer["op"] == "binary_conv2d":
            fmt = bk.input_format(paths[i + 1])
            padding = tuple(consumer["padding"]) if fmt == "int8" else (0, 0)
            signs_out[i] = _Signs(fmt, consumer["groups"], padding, consumer["stride"][1])
        elif consumer["op"] == "bit_max_pool2d" and i + 1 in signs_out:
            fmt = signs_out[i + 1].format
            signs_out[i] = _Signs(fmt, consumer["groups"], (0, 0), 1)
    # Pass 4: the ops, each run once here on the reference inputs (binding the buffers they hand on).
    i, value = 0, inputs[0]
    with torch.no_grad():
        while i < len(nodes):
            ops, used = _build_ops(plan, runner, i, inputs, (paths, conv_threads), signs_out)
            covered = [node["op"] for node in nodes[i : i + used]]
            for k, op in enumerate(ops):
                op.name = covered[k] if len(ops) == used else " + ".join(covered)
                value = op.fn(value)
                plan.ops.append(op)
            i += used
    return plan


def _build_ops(plan: Plan, runner, i: int, inputs: list, paths: tuple, signs_out: dict):
    """The ops of node ``i`` (and of the nodes after it when fused), and how many nodes they cover; ``paths``: each
    binary conv's path and thread count."""
    nodes, steps, tensors, threads = runner.nodes, runner._steps, runner._node_tensors, plan.threads
    node, step = nodes[i], steps[i][1]
    op = node["op"]
    following = nodes[i + 1] if i + 1 < len(nodes) else None
    packs_next = following is not None and following["op"] == "pack_signs" and "threshold" in tensors[i + 1]
    if op == "binary_conv2d":
        return [_binary_conv_op(plan, runner, i, *paths, signs_out, _pooled_shuffle(nodes, tensors, i))], 1
    if op == "avg_pool2d" and i > 0 and _pooled_shuffle(nodes, tensors, i - 1):  # the conv wrote it shuffled
        return [_avg_pool_pack_op(runner, i, inputs, signs_out, threads, pack_at=i + 2)], 3
    if op == "channel_shuffle":
        head = _head(nodes, tensors, i + 1, threads, shuffle=node["groups"])
        if head:
            return head[0], head[1] + 1
    if op == "bit_max_pool2d":
        return [_max_pool_op(plan, runner, i, signs_out)], 1
    if op == "pack_signs":
        return [_pack_op(step, inputs[i], signs_out.get(i, _Signs(groups=step.groups)), threads)], 1
    if op == "conv2d" and packs_next:
        return _conv_pack_ops(plan, runner, i, inputs, signs_out), 2
    head = _head(nodes, tensors, i, threads)
    if head:
        return head
    if op == "avg_pool2d" and packs_next and not node["ceil_mode"]:
        return [_avg_pool_pack_op(runner, i, inputs, signs_out, threads)], 2
    return [_Op(_float_fn(node, tensors[i], step), fresh=True)], 1


def _pooled_shuffle(nodes: list, tensors: list, i: int) -> int:
    """The groups of the channel shuffle that binary conv ``i`` writes as its output order, or 0: a conv with
    float output, then avg_pool2d, channel_shuffle and a pack_signs that the pool fuses with."""
    ops = [n["op"] for n in nodes[i : i + 4]]
    if ops != ["binary_conv2d", "avg_pool2d", "channel_shuffle", "pack_signs"] or nodes[i]["output"] != "float":
        return 0
    fuses = not nodes[i + 1]["ceil_mode"] and "threshold" in tensors[i + 3]
    return nodes[i + 2]["groups"] if fuses else 0


def _binary_conv_op(plan, runner, i, paths, conv_threads, signs_out, shuffle: int = 0) -> _Op:
    node, step = runner.nodes[i], runner._steps[i][1]
    x = _source(plan)
    out = signs_out.get(i)
    kwargs = dict(step.kwargs)
    if shuffle:  # channel j of the output is conv channel order[j], with that channel's alpha and bias
        order = shuffle_perm(node["out_channels"], shuffle)
        kwargs.update(out_order=order, alpha=kwargs["alpha"][order].contiguous(),
                      bias=kwargs["bias"][order].contiguous())  # fmt: skip
    if node["output"] == "bits":
        kwargs.update(out_format=out.format if out else "bits", out_padding=out.padding if out else (0, 0))
        if out and out.format == "int8":
            kwargs["out"] = _byte_buffer(*_out_size(node, x, paths[i]), node["out_channels"], out)
    call = bk.conv_call(x, step.weights, *step.geometry, path=paths[i], **kwargs)
    threads = conv_threads[i]
    fmt = bk.input_format(paths[i])
    collect = (
        _collect_bytes(x, tuple(node["padding"])) if fmt == "int8" else _collect_bits(x, node["groups"],
                                                                                       node["in_channels"])
    )  # fmt: skip
    if node["output"] == "bits":
        return _Op(_Bound(lambda _: call(threads), call.out), fresh=False, collect=collect)
    nchw = call.out.permute(0, 3, 1, 2)  # NCHW view, channels-last memory
    return _Op(_Bound(lambda _: (call(threads), nchw)[1], call.out), fresh=False, collect=collect)


def _out_size(node: dict, x: torch.Tensor, path: str) -> tuple:
    n, h, w, _ = x.shape
    if bk.input_format(path) == "int8":
        h, w = h - 2 * node["padding"][0], w - 2 * node["padding"][1]
    sizes = zip((h, w), node["kernel_size"], node["stride"], node["padding"], node["dilation"], strict=True)
    return (n, *(bk.conv_output_size(*args) for args in sizes))


def _source(plan: Plan) -> torch.Tensor:
    """The buffer the last op writes: a binary op's input (signs only ever come from such ops)."""
    return plan.ops[-1].fn.buffer


class _Bound:
    """An op reading a buffer fixed at build time; ``buffer`` is what it writes, for the next op to bind to."""

    def __init__(self, fn: Callable, buffer: torch.Tensor):
        self.fn, self.buffer = fn, buffer

    def __call__(self, value):
        return self.fn(value)


def _max_pool_op(plan, runner, i, signs_out) -> _Op:
    node, step = runner.nodes[i], runner._steps[i][1]
    out = signs_out.get(i, _Signs(groups=node["groups"]))
    geometry = (node["kernel_size"], node["stride"], node["padding"])
    source = _source(plan)
    if out.format == "int8":
        n, h, w, c = source.shape
        ho, wo = (bk.conv_output_size(s, k, st, p) for s, k, st, p in zip((h, w), *geometry, strict=True))
        buffer = _byte_buffer(n, ho, wo, c, out)
        call = bk.byte_max_pool_call(
            source, step.channel_mask, *geometry, out=buffer, out_padding=out.padding, threads=plan.threads
        )
    else:
        call = bk.bit_max_pool_call(source, step.and_mask, *geometry)
    return _Op(_Bound(lambda _: call(), call.out), fresh=False)


def _byte_buffer(n: int, h: int, w: int, c: int, out: _Signs) -> torch.Tensor:
    return bk.byte_buffer(n, h, w, c, out.padding, max(4, out.stride_w))


def _pack_op(step, x: torch.Tensor, out: _Signs, threads: int) -> _Op:
    """pack_signs of the floats the op before returns (a new tensor each call, NCHW view of channels-last)."""
    n, c, h, w = x.shape
    buffer = _byte_buffer(n, h, w, c, out) if out.format == "int8" else None
    call = bk.pack_signs_call(x.permute(0, 2, 3, 1), out.groups, out=buffer, out_format=out.format,
                              out_padding=out.padding, threads=threads, **step.folded)  # fmt: skip
    return _Op(_Bound(lambda value: call(value.permute(0, 2, 3, 1)), call.out), fresh=False)


def _avg_pool_pack_op(runner, i, inputs, signs_out, threads, pack_at: int | None = None) -> _Op:
    """avg_pool2d at node ``i`` and the pack_signs at node ``pack_at`` (default: the next) in one pass."""
    pack_at = i + 1 if pack_at is None else pack_at
    node, pack = runner.nodes[i], runner._steps[pack_at][1]
    out = signs_out.get(pack_at, _Signs(groups=pack.groups))
    x = inputs[i].permute(0, 2, 3, 1)
    n, h, w, c = x.shape
    sizes = zip((h, w), node["kernel_size"], node["stride"], node["padding"], strict=True)
    ho, wo = (bk.conv_output_size(*args) for args in sizes)
    buffer = _byte_buffer(n, ho, wo, c, out) if out.format == "int8" else None
    call = bk.avg_pool_signs_call(x, node["kernel_size"], node["stride"], node["padding"], node["count_include_pad"],
                                  node["divisor_override"], pack.folded["sign"], pack.folded["threshold"], out.groups,
                                  out=buffer, out_format=out.format, out_padding=out.padding,
                                  threads=threads)  # fmt: skip
    return _Op(_Bound(lambda value: call(value.permute(0, 2, 3, 1)), call.out), fresh=False)


def _conv_pack_ops(plan, runner, i, inputs, signs_out) -> list[_Op]:
    """A float conv and the pack_signs after it: float32 in torch then the C packing, or (precision "fast") one
    fused pass, the bf16x3 conv with float32 signs or the float32 conv, whichever is faster here (precision "bf16":
    the bf16x3 one, untimed)."""
    node, t, pack = runner.nodes[i], runner._node_tensors[i], runner._steps[i + 1][1]
    out = signs_out.get(i + 1, _Signs(groups=pack.groups))
    conv = _Op(_float_fn(node, t, runner._steps[i][1]), fresh=True)
    exact = [conv, _pack_op(pack, conv.fn(inputs[i]), out, plan.threads)]
    fusable = plan.precision != "exact" and node["groups"] == 1
    bf16_paths = bk.bf16_conv_paths() if fusable else []
    f32_paths = bk.f32_conv_paths() if fusable and plan.precision == "fast" else []
    if plan.precision == "bf16":
        if fusable and not bf16_paths:
            raise bk.BinaryKernelUnavailable("precision bf16: this CPU has no bf16 conv path (AMX or AVX512-BF16)")
        bf16_paths = bf16_paths[:1]  # untimed: the first bf16 path (AMX where there are tiles)
    if not bf16_paths and not f32_paths:
        return exact
    x, threads = inputs[i], plan.threads
    args = (t["weight"], t.get("bias"), node["stride"], node["padding"], node["dilation"], pack.folded["sign"],
            pack.folded["threshold"], tuple(x.shape))  # fmt: skip
    layout = {"groups": out.groups, "out_format": out.format, "out_padding": out.padding}
    fused = {f"bf16 {p}": bk.Bf16ConvSigns(*args, **layout, path=p) for p in bf16_paths}
    fused |= {f"f32 {p}": bk.Float32ConvSigns(*args, **layout) for p in f32_paths}
    if plan.precision == "bf16":
        chosen, ms = f"bf16 {bf16_paths[0]}", {}
    else:
        calls = {"f32 torch": lambda: exact[1].fn(exact[0].fn(x))}
        for name, conv in fused.items():
            calls[name] = lambda conv=conv: conv(x, threads)
            if threads > 1:  # as conv_candidates
                calls[f"{name} x1"] = lambda conv=conv: conv(x, 1)
        chosen, ms = fastest(calls)
    out_channels, in_channels, kh, kw = t["weight"].shape
    layer = f"float {in_channels}->{out_channels} {kh}x{kw} @{x.shape[2]}x{x.shape[3]} + pack"
    path, threads = _path_threads(chosen, threads)
    plan.report.append({"node": i, "layer": layer, "times_ms": ms, "path": path, "threads": threads})
    if path == "f32 torch":
        return exact
    conv = fused[path]
    return [_Op(_Bound(lambda value: conv(value.float(), threads), conv.out), fresh=False, any_strides=True)]


def _head(nodes: list, tensors: list, i: int, threads: int, shuffle: int = 0) -> tuple[list[_Op], int] | None:
    """conv2d 1x1 (stride 1, no padding, groups 1) -> [relu] -> adaptive_avg_pool2d(1) -> [flatten(1)] at node ``i``,
    as one op (``cn_head``), and the nodes it covers; ``shuffle``: the groups of a channel shuffle before it, folded
    into the order of its weights' input channels."""
    if i >= len(nodes):
        return None
    node, t = nodes[i], tensors[i]
    if not (node["op"] == "conv2d" and tuple(t["weight"].shape[2:]) == (1, 1) and node["groups"] == 1):
        return None
    if list(node["stride"]) != [1, 1] or list(node["padding"]) != [0, 0]:
        return None
    j = i + 1
    relu = j < len(nodes) and nodes[j]["op"] == "relu"
    j += relu
    if not (j < len(nodes) and nodes[j]["op"] == "adaptive_avg_pool2d" and list(nodes[j]["output_size"]) == [1, 1]):
        return None
    j += 1
    flatten = j < len(nodes) and nodes[j]["op"] == "flatten"
    flatten = flatten and nodes[j]["start_dim"] == 1 and nodes[j]["end_dim"] in (-1, 3)
    weight = t["weight"]
    if shuffle:  # input channel order[j] meets the weights of shuffled channel j
        weight = weight[:, shuffle_perm(weight.shape[1], shuffle).argsort()]
    head = bk.Head(weight, t.get("bias"), relu)

    def run(x):
        logits = head(x.permute(0, 2, 3, 1), threads)
        return logits if flatten else logits.view(*logits.shape, 1, 1)

    return [_Op(run, fresh=True)], j + flatten - i


def _float_fn(node: dict, t: dict, step: Callable) -> Callable:
    """The step's torch op, or a cheaper equivalent for small tensors: a 1x1 conv (stride 1, no padding, groups 1)
    as a matrix product over channels-last pixels, a global average pool as a mean."""
    op = node["op"]
    if op == "conv2d" and tuple(t["weight"].shape[2:]) == (1, 1) and node["groups"] == 1:
        if list(node["stride"]) == [1, 1] and list(node["padding"]) == [0, 0]:
            weight, bias = t["weight"].float().flatten(1), t.get("bias")

            def conv1x1(x):
                n, c, h, w = x.shape
                y = F.linear(x.permute(0, 2, 3, 1).reshape(-1, c), weight, bias)
                return y.view(n, h, w, -1).permute(0, 3, 1, 2)

            return conv1x1
    if op == "adaptive_avg_pool2d" and list(node["output_size"]) == [1, 1]:
        return lambda x: x.mean((2, 3), keepdim=True)
    return step
