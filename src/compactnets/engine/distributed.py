"""torchrun support: process group from the environment, rank-0 output, exact sharded evaluation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..cpu import cpu_model
from ..errors import OptionError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU if there is one) or a torch device name; a GPU that is not there is an OptionError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise OptionError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:1, ...)") from e
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} GPUs" if torch.cuda.is_available() else "no GPU"
        raise OptionError(f"--device {name}: this machine has {found} that torch can use")
    return device


def device_description(device: torch.device) -> str:
    """The device in words, as a results table names it: 'cuda:0 (NVIDIA H200)', 'cpu (AMD EPYC ... (family 26,
    model 2), 2 threads)'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({cpu_model()}, {torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return info, device


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group before the process exits: one that exits holding it can be aborted by the
    backend's still-running threads ("terminate called without an active exception", SIGABRT)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th sample from ``rank``, no padding: summed metrics count each sample once."""

    def __init__(self, length: int, info: DistInfo):
        self.indices = range(info.rank, length, info.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
