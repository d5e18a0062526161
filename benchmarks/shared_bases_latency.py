"""CPU latency and training throughput of the shared-bases models: compactnets (unique and shared filters as one
convolution) against the same model run as two convolutions and a concat (the official formulation), and, with
``--official``, against the official Net_RL2 code itself, all in one run.

Convention (docs/conventions section 7): ``torch.set_num_threads(N)`` (default 1); latency at batch 1 in eval
mode under ``torch.inference_mode()``; training throughput as SGD steps (forward, loss with the regulariser,
backward, update) at ``--train-batch``; NCHW float32; warm-up, then timed runs with ``time.perf_counter``; median
and min reported. The implementations are interleaved (one run of each per round), so load from other processes
hits all of them alike: compare ratios, not absolute times, on a shared machine.

The official code (ssregibility/Net_RL2, e.g. commit f98cd9d) is imported at run time from ``--official`` (the
repository root, holding ``models/``); it is never part of compactnets. It gets the compactnets model's weights
and the script prints the largest logit difference as a check.

    python benchmarks/shared_bases_latency.py --official /path/to/Net_RL2
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from functools import partial
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from common import environment, randomize_bn, time_interleaved  # benchmarks/common.py

import compactnets
from compactnets.layers import SharedBasisConv2d
from compactnets.profiler import count_params

# compactnets model -> official module, constructor and its (shared_rank, unique_rank) arguments.
OFFICIAL = {
    "resnet32_s8u1_cifar10": ("models.cifar10.resnet", "ResNet32_SingleShared", (8, 1)),
    "resnet32_s16u1_cifar10": ("models.cifar10.resnet", "ResNet32_SingleShared", (16, 1)),
    "resnet32_s16u1_double_cifar10": ("models.cifar10.resnet", "ResNet32_DoubleShared", (16, 1)),
    "resnet56_s8u1_cifar10": ("models.cifar10.resnet", "ResNet56_SingleShared", (8, 1)),
    "resnet56_s16u1_cifar10": ("models.cifar10.resnet", "ResNet56_SingleShared", (16, 1)),
    "resnet56_s16u1_double_cifar10": ("models.cifar10.resnet", "ResNet56_DoubleShared", (16, 1)),
    "resnet34_s16u1_cifar100": ("models.cifar100.resnet", "ResNet34_SingleShared", (16, 1)),
    "mobilenetv2_shared_cifar100": ("models.cifar100.mobilenetv2", "MobileNetV2_Shared", ()),
    "resnet34_s32u1_double": ("models.ilsvrc.resnet", "ResNet34_DoubleShared", (32, 1)),
    "mobilenetv2_shared": ("models.ilsvrc.mobilenetv2", "MobileNetV2_Shared", ()),
}
DEFAULT_MODELS = ["resnet32_s8u1_cifar10", "resnet56_s16u1_double_cifar10", "resnet34_s16u1_cifar100"]


def unfused_forward(self: SharedBasisConv2d, x: torch.Tensor) -> torch.Tensor:
    """The official formulation: the unique conv and the shared conv run separately, then concatenated."""
    conv = dict(padding=self.padding, dilation=self.dilation)
    unique = F.conv2d(x, self.weight, groups=self.groups, **conv)
    return torch.cat([unique, F.conv2d(x, self.shared.weight, groups=self.shared.groups, **conv)], dim=1)


class Unfused(torch.nn.Module):
    """A compactnets model whose shared-basis convs run unfused (same weights, same outputs)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with mock.patch.object(SharedBasisConv2d, "forward", unfused_forward):
            return self.model(x)

    def auxiliary_loss(self) -> torch.Tensor:
        return self.model.auxiliary_loss()


def official_model(root: Path, name: str, model: torch.nn.Module) -> torch.nn.Module:
    """The official model with ``model``'s weights (every per-block alias filled from the single tensor)."""
    if not (root / "models" / "cifar10" / "resnet.py").is_file():
        raise SystemExit(f"--official {root}: no models/cifar10/resnet.py there (give the repository root)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module, ctor, args = OFFICIAL[name]
    official = getattr(importlib.import_module(module), ctor)(*args)
    state = model.state_dict()
    state |= {alias: state[key] for alias, key in model.official_aliases().items()}
    official.load_state_dict(state)
    # The official scripts compute the regulariser inline: the same computation on tensors of the same sizes.
    official.auxiliary_loss = model.auxiliary_loss
    return official


def wall_times(functions: dict, warmup: int, runs: int) -> dict[str, list[float]]:
    return {name: wall for name, (wall, _) in time_interleaved(functions, warmup, runs).items()}


def train_step(model: torch.nn.Module, batch: int, size: int, num_classes: int):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, num_classes, (batch,))

    def step():
        loss = F.cross_entropy(model(x), y) + 10 * model.auxiliary_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(OFFICIAL))
    parser.add_argument("--official", type=Path, help="root of an ssregibility/Net_RL2 checkout")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--train-runs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(environment())
    header = f"{'model':32s} {'params':>10s}  {'implementation':14s} {'batch-1 ms median':>17s} {'min':>7s}"
    header += f"  {'train img/s':>11s}  vs compactnets"
    print(header)
    for name in args.models:
        torch.manual_seed(0)
        model = compactnets.create_model(name)
        randomize_bn(model)
        size, num_classes = model.pretrained_cfg["input_size"][-1], model.num_classes
        variants = {"compactnets": model, "unfused": Unfused(model)}
        if args.official:
            variants["official"] = official_model(args.official, name, model)
        x = torch.randn(1, 3, size, size)
        with torch.inference_mode():
            reference = model.eval()(x)
            for label, net in variants.items():
                diff = (net.eval()(x) - reference).abs().max().item()
                if diff > 1e-3 * reference.abs().max().item():
                    raise SystemExit(f"{name}: {label} differs from compactnets by {diff:.3g}")
            latency = wall_times({k: partial(net, x) for k, net in variants.items()}, args.warmup, args.runs)
        for net in variants.values():
            net.train()
        steps = {k: train_step(net, args.train_batch, size, num_classes) for k, net in variants.items()}
        training = wall_times(steps, 2, args.train_runs)
        base_latency, base_train = statistics.median(latency["compactnets"]), statistics.median(training["compactnets"])
        for label in variants:
            median, fastest = statistics.median(latency[label]), min(latency[label])
            throughput = args.train_batch / statistics.median(training[label])
            train_ratio = statistics.median(training[label]) / base_train
            ratio = f"latency x{median / base_latency:.2f}, train step time x{train_ratio:.2f}"
            print(
                f"{name:32s} {count_params(model):>10,}  {label:14s} {1e3 * median:>17.2f} {1e3 * fastest:>7.2f}"
                f"  {throughput:>11.1f}  {ratio}"
            )


if __name__ == "__main__":
    main()
