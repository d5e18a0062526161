"""What the benchmark scripts share: the machine line, non-trivial BN statistics, and the interleaved timer
(from :mod:`compactnets.deploy.bench` and :mod:`compactnets.deploy.bench_report`)."""

from __future__ import annotations

import torch

from compactnets.deploy.bench import environment as bench_environment
from compactnets.deploy.bench import time_interleaved
from compactnets.deploy.bench_report import environment_line

__all__ = ["environment", "randomize_bn", "time_interleaved"]


def environment() -> str:
    """CPU model and flags, threads, torch/oneDNN/onnxruntime versions: the line to print above a table."""
    return environment_line(bench_environment())


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
