"""The packed runner's execution paths: every binary path (popcount, AMX int8) gives the popcount path's integers,
the steps fused around them equal the unfused ones, each input shape gets a plan whose per-layer choice comes from
timing (or from a forced path), and the bf16 precision stays close to float32."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
import torch.nn.functional as F
from test_packed import _assert_same_as_float, _with_bn_statistics  # BN statistics: trained-like

from compactnets import create_model
from compactnets.deploy import binary_kernel as bk
from compactnets.deploy import packed_plan
from compactnets.deploy.packed_export import export_packed
from compactnets.deploy.packed_runtime import load_packed

pytestmark = pytest.mark.skipif(not bk.is_available(), reason="the binary kernel is not built")
PATHS = bk.supported_paths() if bk.is_available() else []
needs_two_paths = pytest.mark.skipif(len(PATHS) < 2, reason="this CPU runs one binary path only")
BF16_PATHS = bk.bf16_conv_paths() if bk.is_available() else []
needs_bf16 = pytest.mark.skipif(
    not (bk.is_available() and bk.bf16_conv_paths()), reason="this CPU has no bf16 conv path (AMX or AVX512-BF16)"
)
F32_PATHS = bk.f32_conv_paths() if bk.is_available() else []
needs_f32 = pytest.mark.skipif(not F32_PATHS, reason="this CPU has no float32 conv path (AVX2 and FMA)")
FUSED_CONVS = [f"bf16 {p}" for p in BF16_PATHS] + [f"f32 {p}" for p in F32_PATHS]  # plan report names


def _signs(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


# (in, out, size, kernel, stride, padding, dilation, groups): padding wider than the kernel's reach, strides,
# dilation, groups with channel counts off the 64-channel blocks of both kernels
CASES = [
    (96, 192, 9, 3, 1, 1, 1, 1),
    (70, 130, 7, 3, 2, 1, 1, 1),
    (66, 36, 6, 3, 1, 1, 1, 2),
    (200, 48, 6, 5, 1, 2, 1, 4),
    (33, 17, 7, 3, 1, 2, 2, 1),
    (256, 32, 4, 3, 1, 1, 1, 16),
    (160, 96, 20, 1, 1, 0, 1, 1),  # 1x1: tiles run across output rows and images
    (24, 40, 5, 1, 1, 1, 1, 1),  # 1x1 with padding: border pixels see only padding
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_each_path_gives_the_popcount_integers(path, case):
    """Float outputs (alpha * dot + bias), bits and bytes for the next layer: equal, bit for bit, to the
    portable popcount path on the same +-1 data."""
    cin, cout, size, k, stride, pad, dil, groups = case
    x, w = _signs(3, cin, size, size + 2, seed=sum(case)), _signs(cout, cin // groups, k, k, seed=len(case))
    weights = bk.prepare_weights((w < 0).permute(0, 2, 3, 1).numpy(), groups)
    geometry = ((k, k), (stride, stride), (pad, pad), (dil, dil))
    g = torch.Generator().manual_seed(3)
    alpha, bias = torch.rand(cout, generator=g) + 0.1, torch.randn(cout, generator=g)
    threshold = torch.randint(-k * k * cin // groups, k * k * cin // groups, (cout,), generator=g).int()
    threshold_sign = torch.where(torch.rand(cout, generator=g) < 0.5, 1, -1).int()
    order = torch.randperm(cout, generator=g).int()
    next_groups = 2 if cout % 2 == 0 else 1

    def run(p, **kwargs):
        if bk.input_format(p) == "int8":
            x_in = bk.pack_signs(x.permute(0, 2, 3, 1), 1, out_format="int8", out_padding=(pad, pad))
        else:
            x_in = bk.pack_signs(x.permute(0, 2, 3, 1), groups)
        return bk.binary_conv(x_in, weights, *geometry, path=p, threads=3, **kwargs)

    signs_out = dict(threshold=threshold, threshold_sign=threshold_sign)
    variants = [
        dict(alpha=alpha, bias=bias, relu=True),
        dict(alpha=alpha, bias=bias, out_order=order),
        dict(signs_out, out_order=order, out_groups=next_groups),
        dict(signs_out, out_format="int8", out_padding=(1, 0)),
    ]
    for shuffle_groups in (2, 4, 16):  # channel shuffles (the exporter's orders): their own epilogue on AVX-512
        if cout % shuffle_groups == 0:
            j = torch.arange(cout)
            shuffle = ((j % shuffle_groups) * (cout // shuffle_groups) + j // shuffle_groups).int()
            variants += [dict(signs_out, out_order=shuffle, out_groups=next_groups),
                         dict(signs_out, out_order=shuffle, out_format="int8", out_padding=(0, 1))]  # fmt: skip
    for kwargs in variants:
        assert torch.equal(run(path, **kwargs), run("portable", **kwargs))
    # and the integers are the zero-padded conv's: the float model pads sign(x) with 0
    dots = run(path, alpha=torch.ones(cout), bias=torch.zeros(cout)).permute(0, 3, 1, 2)
    assert torch.equal(dots, F.conv2d(x, w, stride=stride, padding=pad, dilation=dil, groups=groups))
    ordered = run(path, alpha=torch.ones(cout), bias=torch.zeros(cout), out_order=order).permute(0, 3, 1, 2)
    assert torch.equal(ordered, dots[:, order.long()])


def test_byte_input_needs_its_border_and_slack():
    weights = bk.prepare_weights((_signs(16, 64, 3, 3) < 0).permute(0, 2, 3, 1).numpy(), 1)
    if "amx" not in PATHS:
        pytest.skip("this CPU has no AMX int8 tiles")
    tight = torch.ones(1, 6, 6, 64, dtype=torch.int8)  # no readable bytes after it
    with pytest.raises(ValueError, match="byte_slack"):
        bk.binary_conv(tight, weights, (3, 3), padding=(1, 1), alpha=torch.ones(16), bias=torch.zeros(16))
    with pytest.raises(ValueError, match="takes packed bits"):
        bk.binary_conv(bk.byte_buffer(1, 4, 4, 64, (1, 1)), weights, (3, 3), padding=(1, 1), path="avx2",
                       alpha=torch.ones(16), bias=torch.zeros(16))  # fmt: skip


def test_byte_max_pool_equals_bit_max_pool():
    negative = _signs(2, 70, 9, 9, seed=4) < 0
    and_mask = _signs(70, seed=5) < 0
    x = torch.where(negative, -1.0, 1.0).permute(0, 2, 3, 1)
    mask_words = torch.from_numpy(bk.pack_sign_bits(and_mask.numpy()[None]).reshape(-1).view("<i8").copy())
    bits = bk.bit_max_pool(bk.pack_signs(x, 1), mask_words, (3, 3), (2, 2), (1, 1))
    pooled = bk.byte_max_pool(bk.pack_signs(x, 1, out_format="int8"), and_mask, (3, 3), (2, 2), (1, 1),
                              out_padding=(1, 1))  # fmt: skip
    assert torch.equal(bk.pack_signs(pooled[:, 1:-1, 1:-1].float(), 1), bits)
    assert pooled[:, 0].abs().sum() == 0 and pooled[:, :, -1].abs().sum() == 0  # the next conv's zero padding


@pytest.mark.parametrize("out_format", ["bits", "int8"])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_signs_equals_torch_pool_then_pack(out_format, count_include_pad):
    """Fused in one pass with torch's arithmetic: the same floats, so the same signs even at the threshold."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 130, 15, 16, generator=g).contiguous(memory_format=torch.channels_last)
    sign = torch.where(torch.rand(130, generator=g) < 0.3, -1.0, 1.0)
    pooled = F.avg_pool2d(x, 3, 2, 1, count_include_pad=count_include_pad)
    threshold = sign * pooled[1, :, 3, 4]  # some values exactly at their threshold
    kwargs = dict(out_format=out_format, out_padding=(1, 1) if out_format == "int8" else (0, 0))
    expected = bk.pack_signs(pooled.permute(0, 2, 3, 1), 2, sign, threshold, **kwargs)
    got = bk.avg_pool_signs(x.permute(0, 2, 3, 1), (3, 3), (2, 2), (1, 1), count_include_pad, None, sign, threshold,
                            2, threads=2, **kwargs)  # fmt: skip
    assert torch.equal(got, expected)


@pytest.fixture(scope="module")
def packed_models(tmp_path_factory):
    out = {}
    for seed, name in enumerate(("nin_xnornet", "nin_gc_xnornet")):
        torch.manual_seed(seed)
        model = _with_bn_statistics(create_model(name), seed)
        path = tmp_path_factory.mktemp("paths") / f"{name}.packed.safetensors"
        export_packed(model, path, check=False)
        out[name] = model, path
    return out


@pytest.mark.parametrize("name", ["nin_xnornet", "nin_gc_xnornet"])
def test_plan_times_every_path_and_takes_the_fastest(packed_models, name):
    model, path = packed_models[name]
    runner = load_packed(path, precision="exact")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    plan = runner.plan(tuple(x.shape), threads=1)
    layers = [row for row in plan.report if "->" in row["layer"] and not row["layer"].startswith("float")]
    assert len(layers) == 7
    candidates = packed_plan.auto_paths()  # the best popcount path and AMX where the CPU has it
    assert candidates[0] == bk.kernel_path() and set(candidates) <= set(PATHS)
    for row in layers:
        if len(candidates) > 1:
            assert set(row["times_ms"]) == set(candidates)  # one thread: no one-thread variants to time
            assert row["path"] == min(row["times_ms"], key=row["times_ms"].get) and row["threads"] == 1
        else:
            assert row["path"] == candidates[0] and row["times_ms"] == {}
    assert runner.plan(tuple(x.shape), threads=1) is plan  # built once per shape and thread count
    two = runner.plan(tuple(x.shape), threads=2)  # each path also timed on one thread: the faster is taken
    for row in two.report:
        if row["times_ms"]:
            best = min(row["times_ms"], key=row["times_ms"].get)
            assert (row["path"], row["threads"]) == (best.removesuffix(" x1"), 1 if best.endswith(" x1") else 2)
    runner.threads = 1
    torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=1e-4)


def test_channel_shuffles_between_float_ops_are_folded(packed_models):
    """nin_gc_xnornet's two float shuffles run as no op of their own (one as the output order of the binary conv
    before an average pool, one in the order of the classifier's weights), with the float model's results."""
    model, path = packed_models["nin_gc_xnornet"]
    runner = load_packed(path, precision="exact", threads=1)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    ops = [node["op"] for node in runner.nodes]
    assert ops.count("channel_shuffle") == 2
    # conv, pack, 7 binary convs, max pool, avg pool + pack, head (conv, relu, pool, flatten): 12 ops, no shuffle
    assert len(runner.plan(tuple(x.shape)).ops) == 12
    _assert_same_as_float(model, runner, x)  # every binary conv's signs and the logits
    torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("choice", ["whole", f"chunks of {packed_plan.CHUNK}"])
def test_a_large_batch_runs_whole_or_in_chunks_with_the_same_results(packed_models, monkeypatch, choice):
    """Two chunks and a rest: the logits and every binary conv's signs of a chunked batch equal those of the
    image-by-image runs; the batch's choice is timed and reported."""
    model, path = packed_models["nin_xnornet"]
    x = torch.randn(2 * packed_plan.CHUNK + 3, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    singles = load_packed(path, threads=1, precision="exact")
    alone = [singles.run_with_signs(x[i : i + 1]) for i in range(len(x))]
    timed = packed_plan.fastest

    def chosen(calls, **kwargs):
        if "whole" not in calls:
            return timed(calls, **kwargs)
        return choice, timed(calls, **kwargs)[1]

    monkeypatch.setattr(packed_plan, "fastest", chosen)
    runner = load_packed(path, threads=1, precision="exact")
    logits, signs = runner.run_with_signs(x)
    plan = runner.plan(tuple(x.shape))
    assert isinstance(plan, packed_plan.ChunkedPlan) == (choice != "whole")
    row = plan.report[-1]
    assert (row["node"], row["layer"], row["path"]) == (None, f"batch of {len(x)}", choice)
    assert set(row["times_ms"]) == {"whole", f"chunks of {packed_plan.CHUNK}"}
    torch.testing.assert_close(logits, torch.cat([lg for lg, _ in alone]), atol=1e-5, rtol=1e-5)
    assert len(signs) == 7
    for i, batch_signs in enumerate(signs):
        assert torch.equal(batch_signs, torch.cat([s[i] for _, s in alone]))
    torch.testing.assert_close(logits, model(x), atol=1e-4, rtol=1e-4)


@needs_two_paths
def test_forcing_a_path_changes_no_bit(packed_models, monkeypatch):
    model, path = packed_models["nin_gc_xnornet"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    outputs = {}
    for p in PATHS:
        runner = load_packed(path, threads=2, precision="exact", kernel_path=p)
        logits, signs = runner.run_with_signs(x)
        assert {row["path"] for row in runner.plan(tuple(x.shape)).report} == {p}
        outputs[p] = logits, signs
    first = outputs[PATHS[0]]
    for logits, signs in outputs.values():
        assert torch.equal(logits, first[0]) and all(torch.equal(a, b) for a, b in zip(signs, first[1], strict=True))
    monkeypatch.setenv(bk.ENV_PATH, PATHS[0])  # the environment variable forces it too
    runner = load_packed(path, precision="exact")
    assert {row["path"] for row in runner.plan(tuple(x.shape)).report} == {PATHS[0]}


def test_unknown_or_unsupported_path_and_precision_are_errors(packed_models, monkeypatch):
    _, path = packed_models["nin_xnornet"]
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown binary kernel path 'sse9'"):
        load_packed(path, kernel_path="sse9")(x)
    with pytest.raises(ValueError, match="unknown packed precision 'half'"):
        load_packed(path, precision="half")(x)
    monkeypatch.setenv(packed_plan.ENV_PRECISION, "f16")
    with pytest.raises(ValueError, match=f"{packed_plan.ENV_PRECISION}: unknown packed precision 'f16'"):
        load_packed(path)(x)
    monkeypatch.delenv(packed_plan.ENV_PRECISION)
    monkeypatch.setattr(bk, "_supported_paths", lambda: ("portable",))  # a CPU without the others
    with pytest.raises(bk.BinaryKernelUnavailable, match="cannot run the avx2"):
        load_packed(path, kernel_path="avx2")(x)


@needs_bf16
@pytest.mark.parametrize("path", BF16_PATHS)
def test_bf16_conv_gives_the_float32_signs(path):
    """Three bf16 products per term and a float32 recount of every sign within their error bound of its threshold:
    the signs of float32 arithmetic, where one bf16 product alone flips some."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 32, 32, generator=g)
    weight, bias = torch.randn(192, 3, 5, 5, generator=g) * 0.2, torch.randn(192, generator=g) * 0.1
    sign = torch.where(torch.rand(192, generator=g) < 0.3, -1.0, 1.0)
    threshold = torch.randn(192, generator=g) * 0.5
    threshold[:4] = torch.tensor([float("inf"), -float("inf"), float("inf"), -float("inf")])  # constant channels
    y = F.conv2d(x, weight, bias, padding=2)
    exact_negative = ~(sign[:, None, None] * y >= threshold[:, None, None])
    one_bf16 = F.conv2d(x.bfloat16().float(), weight.bfloat16().float(), bias, padding=2)
    assert (~(sign[:, None, None] * one_bf16 >= threshold[:, None, None]) != exact_negative).sum() > 10
    fused = bk.Bf16ConvSigns(weight, bias, (1, 1), (2, 2), (1, 1), sign, threshold, tuple(x.shape),
                             out_format="int8", out_padding=(1, 1), path=path)  # fmt: skip
    got = fused(x, threads=2)[:, 1:-1, 1:-1].permute(0, 3, 1, 2) < 0
    differ = got != exact_negative
    margin = (sign[:, None, None] * y - threshold[:, None, None]).abs()
    scale = F.conv2d(x.abs(), weight.abs(), padding=2)  # float32 summation orders differ by ~2**-20 of this
    assert differ.sum() <= 2 and (margin[differ] <= 2.0**-18 * scale[differ]).all()
    bits = bk.Bf16ConvSigns(weight, bias, (1, 1), (2, 2), (1, 1), sign, threshold, tuple(x.shape), groups=2,
                            path=path)  # fmt: skip
    assert torch.equal(bits(x), bk.pack_signs(torch.where(got, -1.0, 1.0).permute(0, 2, 3, 1), 2))


# (batch, in, out, height, width, kernel, stride, padding, dilation): channel counts off the 24-channel blocks, rows
# of no multiple of 4 pixels, strides, dilation, padding wider than the kernel's reach
F32_CASES = [
    (2, 3, 192, 32, 32, 5, 1, 2, 1),
    (3, 5, 50, 11, 13, 3, 2, 1, 1),
    (1, 4, 17, 9, 7, 3, 1, 3, 2),
    (2, 3, 30, 6, 6, 1, 1, 0, 1),
]


@needs_f32
@pytest.mark.parametrize("case", F32_CASES, ids=lambda c: "x".join(map(str, c)))
def test_f32_conv_gives_the_signs_of_torchs_conv(case):
    """The fused float32 conv decides each sign as pack_signs decides it after torch's float32 conv: the same signs
    but where float summation order moves a value across its threshold, for input at any strides, as +-1 bytes
    inside an untouched border and as packed bits."""
    n, cin, cout, h, w, k, s, p, d = case
    g = torch.Generator().manual_seed(sum(case))
    x = torch.randn(n, cin, h, w, generator=g)
    weight, bias = torch.randn(cout, cin, k, k, generator=g) * 0.2, torch.randn(cout, generator=g) * 0.1
    sign = torch.where(torch.rand(cout, generator=g) < 0.3, -1.0, 1.0)
    threshold = torch.randn(cout, generator=g) * 0.5
    threshold[:2] = torch.tensor([float("inf"), -float("inf")])  # constant channels
    y = F.conv2d(x, weight, bias, stride=s, padding=p, dilation=d)
    expected = ~(sign[:, None, None] * y >= threshold[:, None, None])
    geometry = ((s, s), (p, p), (d, d))
    fused = bk.Float32ConvSigns(weight, bias, *geometry, sign, threshold, tuple(x.shape), out_format="int8",
                                out_padding=(1, 2))  # fmt: skip
    out = fused(x.contiguous(memory_format=torch.channels_last), threads=2)
    inside = out[:, 1:-1, 2:-2]
    assert inside.abs().eq(1).all() and out.abs().sum() == inside.abs().sum()  # every pixel written, nothing else
    negative = inside.permute(0, 3, 1, 2) < 0
    differ = negative != expected
    margin = (sign[:, None, None] * y - threshold[:, None, None]).abs()
    scale = F.conv2d(x.abs(), weight.abs(), stride=s, padding=p, dilation=d)  # summation orders differ by ~2**-20
    assert differ.sum() <= 2 and (margin[differ] <= 2.0**-18 * scale[differ]).all()
    groups = 2 if cout % 2 == 0 else 1
    bits = bk.Float32ConvSigns(weight, bias, *geometry, sign, threshold, tuple(x.shape), groups=groups)
    assert torch.equal(bits(x, threads=1), bk.pack_signs(torch.where(negative, -1.0, 1.0).permute(0, 2, 3, 1), groups))


@pytest.mark.skipif(not FUSED_CONVS, reason="this CPU has no fused float conv path (bf16 or float32)")
@pytest.mark.parametrize("fused", FUSED_CONVS)
def test_fast_precision_runs_the_first_conv_fused_when_faster(packed_models, monkeypatch, fused):
    model, path = packed_models["nin_xnornet"]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    exact, exact_signs = load_packed(path, precision="exact").run_with_signs(x)

    def fused_first(calls, **_):
        return fused if fused in calls else next(iter(calls)), {}

    monkeypatch.setattr(packed_plan, "fastest", fused_first)
    runner = load_packed(path, precision="fast")
    fast, signs = runner.run_with_signs(x)
    assert any(row["path"] == fused for row in runner.plan(tuple(x.shape)).report)
    assert all(torch.equal(a, b) for a, b in zip(signs, exact_signs, strict=True))  # float32's signs
    torch.testing.assert_close(fast, exact, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, model(x), atol=1e-4, rtol=1e-4)


def _fork_child(path, queue):
    torch.set_num_threads(1)  # torch's own OpenMP pool hangs after a fork (why DataLoader workers do this)
    runner = load_packed(path, threads=2, precision="exact")  # the kernel's pool: two threads
    queue.put(runner(torch.ones(1, 3, 32, 32)).sum().item())


def test_worker_threads_survive_fork(packed_models):
    """The kernel's persistent worker threads do not exist in a forked child; it starts its own (a child that
    waited for the parent's would hang)."""
    _, path = packed_models["nin_xnornet"]
    runner = load_packed(path, threads=2, precision="exact")
    expected = runner(torch.ones(1, 3, 32, 32)).sum().item()  # the parent's workers are running now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fork_child, args=(path, queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and abs(queue.get(timeout=5) - expected) < 1e-3  # torch's conv: 1 thread vs 2


def test_every_share_of_a_parallel_call_runs_once_whoever_claims_it():
    """The kernel's pool hands each share of a call to whichever thread claims it first (the caller takes those a
    late worker has not): calls back to back with changing thread counts (workers of one call waking during the
    next, workers left over from a larger call), some right after torch's OpenMP pool ran (it spins on the other
    cores for milliseconds), each fill every output pixel with the one-thread values."""
    cin, cout, size, k = 96, 130, 9, 3
    x, w = _signs(2, cin, size, size, seed=5), _signs(cout, cin, k, k, seed=6)
    weights = bk.prepare_weights((w < 0).permute(0, 2, 3, 1).numpy(), 1)
    bits = bk.pack_signs(x.permute(0, 2, 3, 1), 1)
    g = torch.Generator().manual_seed(7)
    alpha, bias = torch.rand(cout, generator=g) + 0.1, torch.randn(cout, generator=g)
    call = bk.conv_call(bits, weights, (k, k), (1, 1), (1, 1), (1, 1), alpha=alpha, bias=bias)
    expected = call(1).clone()
    a = torch.randn(256, 256)
    for i, threads in enumerate([2, 7, 3, 1, 5, 2, 8, 4] * 25):
        call.out.fill_(float("nan"))  # a share left out would leave NaNs
        if i % 2:
            torch.mm(a, a)
        assert torch.equal(call(threads), expected), f"call {i}, {threads} threads"


def test_runner_keeps_no_reference_to_its_output(packed_models):
    """Outputs are fresh tensors: the next call must not overwrite what the caller holds."""
    _, path = packed_models["nin_xnornet"]
    runner = load_packed(path, precision="exact")
    a = runner(torch.zeros(1, 3, 32, 32))
    kept = a.clone()
    runner(torch.ones(1, 3, 32, 32))
    assert torch.equal(a, kept)
