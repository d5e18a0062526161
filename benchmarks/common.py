"""What the benchmark scripts share: the machine line, non-trivial BN statistics, and the interleaved timer."""

from __future__ import annotations

import contextlib
import platform
import re
import time
from collections.abc import Callable

import torch


def environment() -> str:
    """CPU model, threads, torch and oneDNN versions: the line to print above a table of timings."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    onednn = re.search(r"MKL-DNN (v[\d.]+)", torch.__config__.show())
    return (
        f"{cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
        f"oneDNN {onednn.group(1) if onednn else '?'}, NCHW float32"
    )


def randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine terms (seeded), so that output checks and BN folding are exercised
    for real."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)


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
