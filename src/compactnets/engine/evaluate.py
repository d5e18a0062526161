"""Evaluation and prediction: models from checkpoints, top-1/top-5 over a dataset, top-k for image files."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..checkpoint import CheckpointError, apply_preprocessing, extract_state_dict, load_file, load_state_dict_checked
from ..data import build_dataset, class_names, eval_transform, load_rgb_image
from ..data.datasets import subset_indices
from ..registry import create_model, is_model
from .distributed import DistInfo, ShardSampler, all_reduce_sum

IN_MEMORY_KINDS = ("embedded", "cifar10", "cifar100")


def default_workers(kind: str) -> int:
    """In-memory datasets decode nothing: workers would only compete with the model for the cores."""
    import os

    return 0 if kind in IN_MEMORY_KINDS else min(4, os.cpu_count() or 1)


def limit_dataset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A fixed random subset of ``limit`` samples (see ``subset_indices``); keeps ``.classes``."""
    indices = subset_indices(len(dataset), limit, seed)
    if indices is None:
        return dataset
    subset = Subset(dataset, indices)
    subset.classes = dataset.classes
    return subset


def load_model(checkpoint: str | Path, model_name: str | None = None) -> tuple[nn.Module, dict]:
    """The model a checkpoint was saved from (or ``model_name``), with its weights and preprocessing."""
    ckpt = load_file(checkpoint)
    name = model_name or ckpt.get("arch")
    if not name:
        raise CheckpointError(f"{checkpoint} does not name its model; pass --model")
    if not is_model(name):
        create_model(name)  # raises the unknown-model error with suggestions
    saved_cfg = ckpt.get("pretrained_cfg") or {}
    num_classes = saved_cfg.get("num_classes") or (len(ckpt["class_names"]) if ckpt.get("class_names") else None)
    model = create_model(name, num_classes=num_classes, **(ckpt.get("model_kwargs") or {}))
    load_state_dict_checked(model, extract_state_dict(ckpt), what=f"checkpoint {checkpoint}")
    apply_preprocessing(model, saved_cfg)
    return model.eval(), ckpt


def label_names(model: nn.Module, ckpt: dict | None = None) -> list[str]:
    names = (ckpt or {}).get("class_names") or class_names(model.pretrained_cfg.get("dataset", ""))
    num = model.num_classes
    return list(names) if names and len(names) == num else [str(i) for i in range(num)]


def build_eval_loader(
    cfg: dict,
    data=None,
    kind=None,
    split="test",
    batch_size=100,
    workers=None,
    limit=None,
    seed=0,
    dist_info: DistInfo | None = None,
) -> DataLoader:
    from ..data import detect_kind

    kind = kind or detect_kind(data)
    dataset = limit_dataset(build_dataset(data, split, eval_transform(cfg), kind), limit, seed)
    info = dist_info or DistInfo()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), info),
        num_workers=default_workers(kind) if workers is None else workers,
        pin_memory=torch.cuda.is_available(),
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast=None, channels_last=False) -> dict:
    """Mean cross-entropy (no smoothing), top-1 and top-5 in %, over every sample of ``loader``
    (summed across ranks when distributed)."""
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast or contextlib.nullcontext():
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = topk.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += len(targets)
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], device)
    if count == 0:
        raise ValueError("the evaluation set is empty")
    return {
        "loss": loss_sum / count,
        "top1": 100.0 * correct1 / count,
        "top5": 100.0 * correct5 / count,
        "count": int(count),
    }


@torch.no_grad()
def predict_images(model: nn.Module, paths: list[str | Path], names: list[str], topk: int = 5) -> list[dict]:
    """Top-k labels with probabilities for each image file, preprocessed as the model's config says."""
    transform = eval_transform(model.pretrained_cfg)
    batch = torch.stack([transform(load_rgb_image(str(p))) for p in paths])
    probs = model.eval()(batch).float().softmax(dim=1)
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [
        {
            "image": str(path),
            "top": [
                {"label": names[i], "index": i, "probability": p} for p, i in zip(v.tolist(), idx.tolist(), strict=True)
            ],
        }
        for path, v, idx in zip(paths, values, indices, strict=True)
    ]
