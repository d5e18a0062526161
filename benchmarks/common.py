"""What the benchmark scripts share: the machine line, non-trivial BN statistics, real CIFAR-10 test images, and the
interleaved timer (from :mod:`compactnets.deploy.bench` and :mod:`compactnets.deploy.bench_report`)."""

from __future__ import annotations

import torch

from compactnets.data.datasets import embedded_dataset
from compactnets.data.transforms import to_model_input
from compactnets.deploy.bench import environment as bench_environment
from compactnets.deploy.bench import time_interleaved
from compactnets.deploy.bench_report import environment_line

__all__ = ["cifar10_batch", "environment", "randomize_bn", "time_interleaved"]


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


def cifar10_batch(batch: int, cfg: dict) -> torch.Tensor:
    """The first ``batch`` test images of the CIFAR-10 subset inside the package, preprocessed by ``cfg`` (a model's
    pretrained_cfg): what a classifier is timed on where the work depends on the data (the packed runner recomputes
    the few first-layer signs that bf16 leaves unsure)."""
    data = embedded_dataset(train=False, transform=to_model_input(cfg))
    return torch.stack([data[i % len(data)][0] for i in range(batch)])
