"""CPU latency and throughput of models on several backends, measured in one interleaved run, beside their
parameters and MACs.

Convention (``conventions.md`` section 7): a fixed thread count (``torch.set_num_threads``, onnxruntime's
intra-op threads, OpenVINO's ``INFERENCE_NUM_THREADS``), eval mode under ``torch.inference_mode()``, warm-up
calls, then timed calls with ``time.perf_counter``; batch-1 median, p90 and min. Every (model, backend) runner
makes one call per round, so load from other processes hits them alike: on a shared machine compare ratios
within a run.

Models: registered names, ``tv:NAME`` (torchvision) and ``timm:NAME`` (when timm is installed), all random
weights. Each backend runs the :func:`~compactnets.deploy.inference_form` of the model (BN folded, family
forms); :data:`BACKENDS` maps a name to the function that prepares a runner. Each row says the precision its
backend computed in (for OpenVINO, what its compiled model reports: its default is bf16 on CPUs with AMX).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import io
import json
import platform
import re
import statistics
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import DeployError, example_input, inference_form

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Every preprocessing key, as an exported file's metadata must hold: torchvision's ImageNet weights resize to 256
# and crop 224 (bilinear), RGB in [0, 1]; timm's configs lack the last two.
TORCHVISION_CFG = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear", mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, channel_order="RGB", pixel_range=1.0)  # fmt: skip
DEFAULT_ANCHORS = ("tv:shufflenet_v2_x1_0", "tv:mobilenet_v3_small", "tv:mobilenet_v2", "tv:resnet18")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def time_interleaved(
    functions: dict[str, Callable[[], object]], warmup: int, runs: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Per function, the wall-clock and the process CPU seconds of each call, one call of each per round, so
    that load from other processes hits all of them alike.

    CPU time leaves out the time the process waits while other processes hold the cores, so on a busy machine
    it is the steadier figure (with one thread it is the latency an idle core would give)."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    times = {name: ([], []) for name in functions}
    for _ in range(runs):
        for name, fn in functions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name][1].append(time.process_time() - cpu)
            times[name][0].append(time.perf_counter() - wall)
    return times


def cpu_model() -> str:
    """The CPU's model name, with its family/model numbers (a bare "AMD EPYC" says nothing of the generation)."""
    with contextlib.suppress(OSError):
        fields = {}
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():
                break
        if "model name" in fields:
            numbers = f" (family {fields['cpu family']}, model {fields['model']})" if "cpu family" in fields else ""
            return fields["model name"] + numbers
    return platform.processor() or platform.machine()


def environment(threads: int | None = None) -> dict:
    """What the timings depend on: CPU model and its vector extensions, threads, library versions."""
    flags: set[str] = set()
    with contextlib.suppress(OSError, StopIteration):
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split())
    onednn = re.search(r"MKL-DNN (v[\d.]+)", torch.__config__.show())
    versions = {}
    for package in ("onnxruntime", "openvino"):  # read from the installed metadata: importing costs seconds
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu_model(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "onednn": onednn.group(1) if onednn else None,
        **versions,
        "python": platform.python_version(),
        "dtype": "float32",
    }


def environment_line(env: dict) -> str:
    flags = "/".join(env["cpu_flags"]) or "no AVX2"
    return (
        f"{env['cpu']} ({flags}), {env['threads']} thread(s), torch {env['torch']}, oneDNN {env['onednn'] or '?'}, "
        f"onnxruntime {env['onnxruntime'] or '-'}, openvino {env.get('openvino') or '-'}, {env['dtype']} weights"
    )


# --- models ------------------------------------------------------------------------------------------------


def create_bench_model(name: str) -> nn.Module:
    """A registered model, ``tv:NAME`` (torchvision) or ``timm:NAME``, with random weights, in eval mode and
    with a ``pretrained_cfg`` holding at least ``input_size``."""
    if name.startswith("tv:"):
        import torchvision

        try:
            model = torchvision.models.get_model(name[3:], weights=None)
        except ValueError as e:
            raise DeployError(f"{name}: {e}") from e
        model.pretrained_cfg = dict(TORCHVISION_CFG, architecture=name)
    elif name.startswith("timm:"):
        try:
            import timm
        except ImportError as e:
            raise DeployError(f"{name}: timm is not installed (pip install 'compactnets[timm]')") from e
        try:
            model = timm.create_model(name[5:], pretrained=False)
        except RuntimeError as e:
            raise DeployError(f"{name}: {e}") from e
        cfg = {"channel_order": "RGB", "pixel_range": 1.0, **model.pretrained_cfg}
        model.pretrained_cfg = dict(cfg, architecture=name)
    else:
        from ..models import create_model

        model = create_model(name)
    return model.eval()


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
    from .packed import export_packed, load_packed

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
    from ..profiler import count_params, flop_counter_macs

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


# --- output ------------------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    ("model", "model", "{}"),
    ("backend", "backend", "{}"),
    ("precision", "precision", "{}"),
    ("params", "params (M)", "{:.2f}"),
    ("macs", "MACs (M)", "{:.1f}"),
    ("latency_ms_median", "median ms", "{:.2f}"),
    ("latency_ms_p90", "p90 ms", "{:.2f}"),
    ("latency_ms_min", "min ms", "{:.2f}"),
    ("cpu_ms_median", "cpu ms", "{:.2f}"),
    ("throughput_ips", "img/s", "{:.0f}"),
    ("gmacs_per_s", "GMAC/s", "{:.1f}"),
    ("best", "best", "{}"),
)


# What "latency" means in the best-backend mark and the plot: the wall-clock median (the convention), or the
# CPU-time median (steadier on a shared machine: with one thread, the latency an idle core would give).
METRICS = {"wall": "latency_ms_median", "cpu": "cpu_ms_median"}


def _best_backends(rows: list[BenchRow], metric: str = "wall") -> dict[str, str]:
    best, key = {}, METRICS[metric]
    for row in rows:
        if row.model not in best or getattr(row, key) < getattr(best[row.model], key):
            best[row.model] = row
    return {model: row.backend for model, row in best.items()}


def _cells(row: BenchRow, best: dict[str, str]) -> list[str]:
    values = row.as_dict()
    values["params"] /= 1e6
    values["macs"] /= 1e6
    values["best"] = "*" if best[row.model] == row.backend else ""
    return ["-" if values[key] is None else fmt.format(values[key]) for key, _, fmt in TABLE_COLUMNS]


def format_table(rows: list[BenchRow], markdown: bool = False, metric: str = "wall") -> str:
    """One line per (model, backend); ``*`` marks each model's fastest backend at batch 1 (by ``metric``)."""
    best = _best_backends(rows, metric)
    header = [title for _, title, _ in TABLE_COLUMNS]
    body = [_cells(r, best) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in body]
    return "\n".join(lines)


def to_json(rows: list[BenchRow], env: dict) -> str:
    return json.dumps({"environment": env, "results": [r.as_dict() for r in rows]}, indent=2)


def to_csv(rows: list[BenchRow], env: dict) -> str:
    """One row per (model, backend), the environment repeated on each row (a CSV has no header block)."""
    buffer = io.StringIO()
    env_columns = {"cpu": env["cpu"], "threads": env["threads"], "torch": env["torch"],
                   "onnxruntime": env["onnxruntime"], "openvino": env.get("openvino"),  # absent before openvino
                   "onednn": env["onednn"]}  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=[*rows[0].as_dict(), *env_columns])
    writer.writeheader()
    for row in rows:
        writer.writerow({**row.as_dict(), **env_columns})
    return buffer.getvalue()


def rows_from_json(text: str) -> tuple[list[BenchRow], dict]:
    """The rows and environment of a :func:`to_json` output (to re-plot or re-tabulate a run)."""
    data = json.loads(text)
    # runs from before the precision column computed everything in float32
    return [BenchRow(**{"precision": "f32", **r}) for r in data["results"]], data["environment"]


def plot(rows: list[BenchRow], env: dict, out: str | Path, metric: str = "wall") -> None:
    """Batch-1 median latency (``metric``: wall or CPU time) against MACs, log-log: one marker per (model,
    backend), labelled with the model."""
    key = METRICS[metric]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise DeployError("--plot needs matplotlib: pip install 'compactnets[plot]'") from e
    markers = dict(zip(BACKENDS, "os^DvPX", strict=False))
    sources = {"tv": "tab:gray", "timm": "tab:brown"}
    fig, ax = plt.subplots(figsize=(10, 7), dpi=120)
    for backend in dict.fromkeys(r.backend for r in rows):
        subset = [r for r in rows if r.backend == backend]
        colors = [sources.get(r.model.split(":")[0], "tab:blue") if ":" in r.model else "tab:blue" for r in subset]
        ax.scatter(
            [r.macs / 1e6 for r in subset],
            [getattr(r, key) for r in subset],
            marker=markers.get(backend, "o"),
            facecolors=colors if backend == "eager" else "none",
            edgecolors=colors,
            label=backend,
            s=40,
        )
        for r in subset:
            ax.annotate(r.model, (r.macs / 1e6, getattr(r, key)), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs (millions, batch 1)")
    ax.set_ylabel(f"batch-1 median latency (ms, {'CPU time' if metric == 'cpu' else 'wall clock'})")
    wrapped = "\n".join(textwrap.wrap(environment_line(env), 150))  # one line overflows the figure
    ax.set_title(f"Latency vs MACs: blue compactnets, gray torchvision, brown timm\n{wrapped}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="backend")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
