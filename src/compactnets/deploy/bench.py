"""CPU latency and throughput of models on several backends, measured in one interleaved run, beside their
parameters and MACs.

Convention (``conventions.md`` section 7): a fixed thread count (``torch.set_num_threads``, onnxruntime's
intra-op threads, OpenVINO's ``INFERENCE_NUM_THREADS``), eval mode under ``torch.inference_mode()``, warm-up
calls, then timed calls with ``time.perf_counter``; batch-1 median, p90 and min. Every (model, backend) runner
makes one call per round, so load from other processes hits them alike: on a shared machine compare ratios
within a run.

Models: registered names, ``tv:NAME`` (torchvision) and ``timm:NAME`` (when timm is installed), all random
weights (:mod:`.bench_models`). Each backend runs the :func:`~compactnets.deploy.inference_form` of the model (BN
folded, family forms); :data:`BACKENDS` maps a name to the function that prepares a runner. Each row says the
precision its backend computed in (for OpenVINO, what its compiled model reports: its default is bf16 on CPUs
with AMX). Tables, JSON, CSV and plots of the rows: :mod:`.bench_report`.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..cpu import cpu_model, vector_flags
from . import DeployError, example_input, inference_form
from .bench_models import create_bench_model


def time_interleaved(
    functions: dict[str, Callable[[], object]], warmup: int, runs: int, settle_s: float = 0.0
) -> dict[str, tuple[list[float], list[float]]]:
    """Per function, the wall-clock and the process CPU seconds of each call, one call of each per round, so
    that load from other processes hits all of them alike.

    CPU time leaves out the time the process waits while other processes hold the cores, so on a busy machine
    it is the steadier figure (with one thread it is the latency an idle core would give). ``settle_s``: an
    untimed pause before each call, in which the thread pools of the call before (torch's OpenMP, onnxruntime's,
    OpenVINO's) stop spinning; with several threads on few cores a pool still spinning slows whatever runs next."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    times = {name: ([], []) for name in functions}
    for _ in range(runs):
        for name, fn in functions.items():
            if settle_s:
                time.sleep(settle_s)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name][1].append(time.process_time() - cpu)
            times[name][0].append(time.perf_counter() - wall)
    return times


def environment(threads: int | None = None) -> dict:
    """What the timings depend on: CPU model and its vector extensions, threads, library versions."""
    onednn = re.search(r"MKL-DNN (v[\d.]+)", torch.__config__.show())
    versions = {}
    for package in ("onnxruntime", "openvino"):  # read from the installed metadata: importing costs seconds
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu_model(),
        "cpu_flags": vector_flags(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "onednn": onednn.group(1) if onednn else None,
        **versions,
        "python": platform.python_version(),
        "dtype": "float32",
    }


# --- backends ----------------------------------------------------------------------------------------------


@dataclass
class Runner:
    """A prepared forward: ``run(x)`` on inputs that ``prepare(x)`` made once, outside the timed calls."""

    run: Callable[[torch.Tensor], object]
    prepare: Callable[[torch.Tensor], torch.Tensor]
    memory_format: str
    kernel: str  # what runs the convolutions
    precision: str = "f32"  # what the convolutions compute in


def _no_grad(module: nn.Module) -> Callable[[torch.Tensor], object]:
    def run(x):
        with torch.inference_mode():
            return module(x)

    return run


def _eager(model: nn.Module, example: torch.Tensor, workdir: Path, threads: int) -> Runner:
    return Runner(_no_grad(inference_form(model, example)), lambda x: x, "NCHW", "torch eager (oneDNN/ATen)")


def _channels_last(model: nn.Module, example: torch.Tensor, workdir: Path, threads: int) -> Runner:
    form = inference_form(model, example).to(memory_format=torch.channels_last)
    return Runner(
        _no_grad(form), lambda x: x.contiguous(memory_format=torch.channels_last), "NHWC", "torch eager (oneDNN/ATen)"
    )


def _compile(model: nn.Module, example: torch.Tensor, workdir: Path, threads: int) -> Runner:
    compiled = torch.compile(inference_form(model, example), dynamic=False)
    return Runner(_no_grad(compiled), lambda x: x, "NCHW", "torch.compile (inductor, C++)")


ONNX_KERNELS = {"onnxruntime": "onnxruntime CPU (MLAS)", "openvino": "OpenVINO CPU (oneDNN)"}


def _onnx(runtime: str) -> Callable[[nn.Module, torch.Tensor, Path, int], Runner]:
    """The runner of what ``compactnets export`` writes, on ``runtime`` (a key of ``onnx.RUNTIMES``)."""

    def prepare(model: nn.Module, example: torch.Tensor, workdir: Path, threads: int) -> Runner:
        from .onnx import RUNTIMES, export_onnx, load_onnx

        path = workdir / f"{model.pretrained_cfg['architecture'].replace(':', '_')}.onnx"
        if not path.exists():  # one export per model serves every ONNX backend of the run
            export_onnx(model, path, input_size=tuple(example.shape[1:]))
        runner = load_onnx(path, threads=threads, runtime=runtime)
        return Runner(runner.forward, lambda x: x, "NCHW", ONNX_KERNELS[RUNTIMES[runtime][0]], runner.precision)

    return prepare


def _packed(model: nn.Module, example: torch.Tensor, workdir: Path, threads: int) -> Runner:
    from ..layers import BinaryConv2d
    from .binary_kernel import kernel_path
    from .packed_export import export_packed
    from .packed_runtime import load_packed

    if not any(isinstance(m, BinaryConv2d) for m in model.modules()):
        return None
    path = workdir / f"{model.pretrained_cfg['architecture']}.packed.safetensors"
    export_packed(model, path, input_size=tuple(example.shape[1:]), check=False)
    runner = load_packed(path, threads=threads)
    kernel = f"compactnets binary kernel ({kernel_path()})"
    return Runner(_no_grad(runner), lambda x: x, "NCHW", kernel, "1-bit+f32")  # full-precision first/last layers


# One entry per backend: (model, example input, scratch folder, threads) -> Runner, or None where it does not apply.
BACKENDS: dict[str, Callable[[nn.Module, torch.Tensor, Path, int], Runner | None]] = {
    "eager": _eager,
    "channels_last": _channels_last,
    "compile": _compile,
    "onnxruntime": _onnx("onnxruntime"),
    "openvino": _onnx("openvino"),  # OpenVINO's default precision for the CPU
    "openvino_f32": _onnx("openvino_f32"),
    "packed": _packed,  # binarized models only
}


# --- the run -----------------------------------------------------------------------------------------------


@dataclass
class BenchRow:
    model: str
    backend: str
    kernel: str
    precision: str
    memory_format: str
    input_size: str
    params: int
    macs: int
    latency_ms_median: float
    latency_ms_p90: float
    latency_ms_min: float
    cpu_ms_median: float
    batch: int
    throughput_ips: float | None
    gmacs_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_bench(
    models: list[str],
    backends: list[str],
    threads: int = 1,
    warmup: int = 20,
    runs: int = 100,
    batch: int = 16,
    batch_runs: int = 10,
    input_size=None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[BenchRow], dict]:
    """Time every model on every backend in one interleaved run; returns the rows and the environment.

    ``batch`` images per call for the throughput (0 or 1: skipped); ``input_size`` (C, H, W) overrides every
    model's own input size (a quick run)."""
    from ..counting import flop_counter_macs
    from ..profiler import count_params

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise DeployError(f"unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    torch.set_num_threads(threads)
    entries, info, inputs = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="compactnets-bench-") as workdir:
        for name in models:
            model = create_bench_model(name)
            size = tuple(input_size or model.pretrained_cfg["input_size"])
            model.pretrained_cfg = dict(model.pretrained_cfg, input_size=size)  # what an exported file says it takes
            x1 = example_input(model, 1, size)
            macs, _ = flop_counter_macs(model, x1)
            for backend in backends:
                if log:
                    log(f"preparing {name} ({backend})")
                runner = BACKENDS[backend](model, example_input(model, 2, size), Path(workdir), threads)
                if runner is None:
                    if log:
                        log(f"  {name}: the {backend} backend does not apply (skipped)")
                    continue
                key = f"{name} [{backend}]"
                entries[key] = runner
                info[key] = (name, backend, size, count_params(model), macs)
                inputs[key] = (
                    runner.prepare(x1),
                    runner.prepare(example_input(model, batch, size)) if batch > 1 else None,
                )
        if log:
            log(f"timing {len(entries)} runners: {warmup} warm-up + {runs} rounds at batch 1")
        single = time_interleaved({k: (lambda r=r, x=inputs[k][0]: r.run(x)) for k, r in entries.items()}, warmup, runs)
        multi = {}
        if batch > 1 and batch_runs > 0:
            if log:
                log(f"timing throughput: 2 warm-up + {batch_runs} rounds at batch {batch}")
            functions = {k: (lambda r=r, x=inputs[k][1]: r.run(x)) for k, r in entries.items()}
            multi = time_interleaved(functions, 2, batch_runs)
    rows = []
    for key, runner in entries.items():
        name, backend, size, params, macs = info[key]
        wall, cpu = single[key]
        median = statistics.median(wall)
        rows.append(
            BenchRow(
                model=name,
                backend=backend,
                kernel=runner.kernel,
                precision=runner.precision,
                memory_format=runner.memory_format,
                input_size="x".join(map(str, size)),
                params=params,
                macs=macs,
                latency_ms_median=1e3 * median,
                latency_ms_p90=1e3 * _percentile(wall, 0.9),
                latency_ms_min=1e3 * min(wall),
                cpu_ms_median=1e3 * statistics.median(cpu),
                batch=batch if multi else 1,
                throughput_ips=batch / statistics.median(multi[key][0]) if multi else None,
                gmacs_per_s=macs / median / 1e9,
            )
        )
    env = environment(threads)
    env.update(warmup=warmup, runs=runs, batch_runs=batch_runs if multi else 0)
    return rows, env
