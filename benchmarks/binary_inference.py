"""Packed XNOR-Net against what a user would run instead, on this CPU: the same network exported to ONNX in
onnxruntime and OpenVINO (its default precision and float32), and its full-precision twin in OpenVINO; at batch 1
and 64, with 1 thread and with all threads. Per binary layer, every kernel path against the others, torch's float
conv and torch's int8 quantized conv (oneDNN) of the same +-1 data, and the path the runner's plan took.

    PYTHONPATH=src python benchmarks/binary_inference.py --model nin_xnornet
    PYTHONPATH=src python benchmarks/binary_inference.py --model nin_gc_xnornet

Whole networks: every execution of a configuration (batch, threads) interleaved round by round (batch 1: 8 calls
back to back per round), median per call and the 90th percentile of the rounds: process CPU time with 1 thread
(the latency of an idle core; steadier on a shared machine), wall time with more threads (CPU time would add the
threads up), each execution then after a 5 ms pause in which the thread pools of the one before stop spinning.
The goal ratios are printed under each table: packed / OpenVINO's fastest on the same network (goal <= 0.5) and
packed / OpenVINO's fastest on the full-precision twin (goal <= 1.0). Layers: min wall time over interleaved rounds
(as the runner's plan times them). Inputs: real CIFAR-10 test images (the package's subset); weights random, with BN
statistics made non-trivial, unless ``--checkpoint`` is given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from compactnets import create_model
from compactnets.cpu import cpu_flags
from compactnets.deploy import binary_kernel as bk
from compactnets.deploy import packed_plan
from compactnets.deploy.onnx import export_onnx
from compactnets.deploy.packed_export import export_packed
from compactnets.deploy.packed_runtime import load_packed
from compactnets.engine.evaluate import load_model

sys.path.insert(0, str(Path(__file__).parent))
from common import cifar10_batch, environment, randomize_bn, time_interleaved  # noqa: E402

TWINS = {"nin_xnornet": "nin_k3", "nin_gc_xnornet": "nin_gc_k3"}
FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
         "amx_bf16")  # fmt: skip


def flags_line() -> str:
    have = cpu_flags()
    if not have:
        return "unknown"
    return " ".join(f for f in FLAGS if f in have) or "none of " + " ".join(FLAGS)


# ---------------------------------------------------------------------------------------------------- layers


def quantized_conv(node: dict, weights: bk.KernelWeights, size: tuple):
    """torch's int8 quantized conv (engine onednn: AMX where the CPU has it) of the layer on +-1 quint8 input
    (scale 1, zero point 1: its zero padding is the float model's 0); None where the engine is missing."""
    if "onednn" not in torch.backends.quantized.supported_engines:
        return None
    torch.backends.quantized.engine = "onednn"
    warnings.filterwarnings("ignore", message="torch.quantize_per_tensor")  # deprecated; still the reference here
    n, h, w = size
    x = torch.randint(0, 2, (n, node["in_channels"], h, w)).float() * 2 - 1
    qx = torch.quantize_per_tensor(x.contiguous(memory_format=torch.channels_last), 1.0, 1, torch.quint8)
    signs = 1.0 - 2.0 * torch.from_numpy(weights.negative).float().permute(0, 3, 1, 2)
    conv = torch.ao.nn.quantized.Conv2d(node["in_channels"], node["out_channels"], node["kernel_size"],
                                        node["stride"], node["padding"], node["dilation"], node["groups"])  # fmt: skip
    conv.set_weight_bias(torch.quantize_per_tensor(signs, 1.0, 0, torch.qint8), None)
    conv.scale, conv.zero_point = 16.0, 128  # the output is requantized; only its time matters here
    return lambda: conv(qx)


def op_table(runner, batch: int, threads: int, rounds: int = 20) -> list[str]:
    """Where a call's time goes: each op of the plan timed alone (min wall ms over rounds, on real images), their
    sum, and the whole call (the rest: Python between the ops); then the whole call's spread, calls back to back
    with nothing else running (the slow ones: threads waiting for a core, e.g. while another pool spins)."""
    x = cifar10_batch(batch, runner.pretrained_cfg)
    plan = runner.plan(tuple(x.shape), threads)
    chunked = isinstance(plan, packed_plan.ChunkedPlan)
    ops_plan = plan.plan if chunked else plan
    first = x[: ops_plan.shape[0]].contiguous(memory_format=torch.channels_last)
    times = [float("inf")] * len(ops_plan.ops)
    whole = float("inf")
    with torch.no_grad():
        for _ in range(rounds):
            value = first
            for k, op in enumerate(ops_plan.ops):
                start = time.perf_counter()
                value = op.fn(value)
                times[k] = min(times[k], time.perf_counter() - start)
            start = time.perf_counter()
            runner(x)
            whole = min(whole, time.perf_counter() - start)
        calls = []
        for _ in range(max(10, 400 // batch)):
            start = time.perf_counter()
            runner(x)
            calls.append(time.perf_counter() - start)
    scope = f"per chunk of {ops_plan.shape[0]} images" if chunked else "per call"
    lines = [f"| op ({scope}) | ms |", "|---|---|"]
    lines += [f"| {op.name} | {1e3 * t:.3f} |" for op, t in zip(ops_plan.ops, times, strict=True)]
    lines.append(f"| sum of the ops | {1e3 * sum(times):.3f} |")
    lines.append(f"| whole call, batch {batch} | {1e3 * whole:.3f} |")
    spread = f"whole call, {len(calls)} back to back"
    lines.append(f"| {spread}: median | {1e3 * statistics.median(calls):.3f} |")
    lines.append(f"| {spread}: 90th percentile | {1e3 * statistics.quantiles(calls, n=10)[-1]:.3f} |")
    return lines


def layer_table(runner, batch: int, threads: int) -> list[str]:
    plan = runner.plan((batch, 3, 32, 32), threads)
    paths = bk.supported_paths()
    head = ["layer", *paths, "torch float (channels-last)", "torch int8 (onednn)", "plan took", "popcount / AMX"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in plan.report:
        i = row["node"]
        if i is None or runner.nodes[i]["op"] != "binary_conv2d":  # the first conv and its packing: float32
            # (torch) or bf16 paths; the batch: whole, or in chunks
            times = ", ".join(f"{k} {v:.3f}" for k, v in row["times_ms"].items())
            lines.append(f"| {row['layer']}: {times} |" + " |" * (len(head) - 3) + f" {_took(row, threads)} | |")
            continue
        node, step = runner.nodes[i], runner._steps[i][1]
        n, h, w = batch, *(int(s) for s in row["layer"].split("@")[1].split("x"))
        calls = packed_plan.conv_candidates(runner, i, (n, h, w), threads)
        x = torch.randint(0, 2, (n, node["in_channels"], h, w)).float().contiguous(memory_format=torch.channels_last)
        signs = (1.0 - 2.0 * torch.from_numpy(step.weights.negative).float()).permute(0, 3, 1, 2)
        weight = signs.contiguous(memory_format=torch.channels_last)
        geometry = (node["stride"], node["padding"], node["dilation"], node["groups"])
        calls["float"] = lambda x=x, weight=weight, g=geometry: F.conv2d(x, weight, None, *g)
        quantized = quantized_conv(node, step.weights, (n, h, w))
        if quantized is not None:
            calls["int8"] = quantized
        with torch.no_grad():
            _, ms = packed_plan.fastest(calls, budget_s=0.2)
        popcount = min(ms[p] for p in paths if bk.input_format(p) == "bits")
        ratio = f"{popcount / ms['amx']:.2f}" if "amx" in ms else ""
        cells = " | ".join(f"{ms[p]:.3f}" for p in paths)
        lines.append(f"| {row['layer']} | {cells} | {ms['float']:.3f} | {ms.get('int8', float('nan')):.3f} | "
                     f"{_took(row, threads)} | {ratio} |")  # fmt: skip
    return lines


def _took(row: dict, threads: int) -> str:
    return row["path"] + (f" ({row['threads']} thread)" if row["threads"] != threads else "")


# ---------------------------------------------------------------------------------------------------- networks


def openvino_request(path: Path, batch: int, threads: int, precision: str | None):
    import openvino as ov
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("onnx")
    model = frontend.convert(frontend.load(str(path)))
    model.reshape([batch, 3, 32, 32])  # static shapes: OpenVINO's fastest form
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(model, "CPU", config)
    return compiled.create_infer_request(), str(compiled.get_property("INFERENCE_PRECISION_HINT"))


def onnxruntime_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# With several threads, an untimed pause before each execution: the thread pool of the one before (torch's OpenMP
# after the exact runner, onnxruntime's, OpenVINO's) would otherwise still spin on the cores it needs (a packed
# runner timed after the exact one took 0.48-0.53 ms at batch 1 on 2 threads, 0.35 ms after another packed one).
SETTLE_S = 0.005


def network_table(name, runners, onnx: dict, batch: int, threads: int, rounds: int) -> list[str]:
    x = cifar10_batch(batch, next(iter(runners.values())).pretrained_cfg)
    xn = x.numpy()
    twin = TWINS[name]
    fns = {f"packed {name} ({precision})": (lambda r=r: r(x)) for precision, r in runners.items()}
    session = onnxruntime_session(onnx[name], threads)
    fns[f"{name} onnxruntime"] = lambda: session.run(None, {"input": xn})
    for model in (name, twin):
        for precision in (None, "f32"):
            request, chosen = openvino_request(onnx[model], batch, threads, precision)
            fns[f"{model} OpenVINO {'default' if precision is None else 'f32'} ({chosen})"] = lambda r=request: r.infer(
                {0: xn}, share_inputs=True
            )
    repeat = max(1, 8 // batch)
    with torch.no_grad():
        times = time_interleaved({k: _repeated(f, repeat) for k, f in fns.items()}, warmup=3, runs=rounds,
                                 settle_s=SETTLE_S if threads > 1 else 0.0)  # fmt: skip
    kind = 1 if threads == 1 else 0  # CPU time with one thread, wall time with more
    ms = {k: 1e3 * statistics.median(t[kind]) / repeat for k, t in times.items()}
    p90 = {k: 1e3 * statistics.quantiles(t[kind], n=10)[-1] / repeat for k, t in times.items()}
    label = "CPU" if threads == 1 else "wall"
    lines = [f"batch {batch}, {threads} thread(s): median {label} ms per batch ({repeat} calls back to back per round, "
             f"{rounds} rounds) and the slowest rounds' (90th percentile)",
             "| execution | ms | images/s | p90 ms |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v:.3f} | {1e3 * batch / v:,.0f} | {p90[k]:.3f} |" for k, v in ms.items()]
    same = min(v for k, v in ms.items() if k.startswith(f"{name} OpenVINO"))
    fp = min(v for k, v in ms.items() if k.startswith(f"{twin} OpenVINO"))
    for precision in runners:
        packed = ms[f"packed {name} ({precision})"]
        lines.append(f"packed ({precision}) / OpenVINO's fastest {name}: **{packed / same:.2f}** (goal <= 0.5); "
                     f"/ OpenVINO's fastest {twin}: **{packed / fp:.2f}** (goal <= 1.0)")  # fmt: skip
    return lines


def _repeated(fn, times: int):
    def run():
        for _ in range(times):
            fn()

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nin_xnornet", choices=sorted(TWINS))
    parser.add_argument("--checkpoint", help="a checkpoint of --model (default: random weights)")
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 and all)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=30, help="rounds at batch 1 (fewer at larger batches)")
    parser.add_argument("--skip-layers", action="store_true")
    args = parser.parse_args(argv)
    thread_counts = args.threads or sorted({1, os.cpu_count() or 1})
    name = args.model
    model = load_model(args.checkpoint) if args.checkpoint else _randomized(name)
    print(f"{environment()}\nCPU flags: {flags_line()}; binary paths: {', '.join(bk.supported_paths())}")
    # "bf16" takes the bf16 first-conv path untimed, so a CPU without one (no AMX, no AVX512-BF16) has no such runner
    precisions = [p for p in packed_plan.PRECISIONS if p != "bf16" or bk.bf16_conv_paths()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx = {}
        for m in (name, TWINS[name]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's notes on tracing
                export_onnx(model if m == name else _randomized(m), tmp / f"{m}.onnx", check=False)
            onnx[m] = tmp / f"{m}.onnx"
        export_packed(model, tmp / "m.packed.safetensors", check=False)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            runners = {p: load_packed(tmp / "m.packed.safetensors", precision=p) for p in precisions}
            for batch in args.batch_sizes:
                start = time.perf_counter()
                for runner in runners.values():
                    runner.plan((batch, 3, 32, 32), threads)
                planned = time.perf_counter() - start
                if not args.skip_layers:
                    print(f"\n{name}, batch {batch}, {threads} thread(s), per layer: min wall ms "
                          f"(plans built in {planned:.2f} s)")  # fmt: skip
                    print("\n".join(layer_table(runners["fast"], batch, threads)))
                    print(f"\n{name}, batch {batch}, {threads} thread(s), packed fast, where the time goes")
                    print("\n".join(op_table(runners["fast"], batch, threads)))
                rounds = max(5, args.rounds // (1 + batch // 8))
                print()
                print("\n".join(network_table(name, runners, onnx, batch, threads, rounds)))


def _randomized(name: str):
    model = create_model(name)
    randomize_bn(model)
    return model.eval()


if __name__ == "__main__":
    main()
