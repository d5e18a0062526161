"""Evaluation and prediction: models from checkpoints, top-1/top-5 over a dataset, top-k for image files."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import DataError, ImageReadError, build_dataset, eval_transform, load_rgb_image, train_transform
from ..data.classes import match_classes
from ..data.datasets import RelabelledDataset, SeededSamples, subset_indices
from ..models import Checkpoint, create_model, dataset_class_names
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


def checkpoint_path(path: str | Path, name: str = "best.pth") -> Path:
    """A checkpoint file, or the ``name`` checkpoint of a run folder."""
    path = Path(path)
    return path / name if path.is_dir() else path


def load_model(checkpoint: str | Path, model_name: str | None = None, ema: bool = False) -> nn.Module:
    """The model a checkpoint (or a run folder's best.pth) was saved from, or ``model_name``, with its weights
    (``ema``: the run's exponential moving average of them), its validated preprocessing and ``class_names``
    (the checkpoint's, else the dataset's when they fit), in eval mode."""
    ckpt = Checkpoint.read(checkpoint_path(checkpoint))
    return (ckpt.ema() if ema else ckpt).build_model(model_name)


def load_shipped(name: str) -> nn.Module:
    """``name`` (``arch`` or ``arch.tag``) with the weights shipped in the package, its dataset's class names."""
    model = create_model(name, pretrained=True)
    model.class_names = dataset_class_names(model)
    return model.eval()


def label_names(model: nn.Module) -> list[str]:
    """A name per output: the loaded object's ``class_names`` (checkpoint or runner), else numbers."""
    names = getattr(model, "class_names", None) or dataset_class_names(model)
    num = model.pretrained_cfg["num_classes"]
    return list(names) if names and len(names) == num else [str(i) for i in range(num)]


def build_eval_dataset(
    cfg: dict, data=None, kind=None, split="test", limit=None, seed=0, classes=None, match="name", note=None,
    transform=None,
) -> Dataset:  # fmt: skip
    """The evaluation split with its labels mapped by class name to ``classes`` (the model's; see
    :func:`~compactnets.data.classes.match_classes`), or taken as they are with ``match='index'``; ``transform``:
    other than the evaluation's (resize, centre crop, normalise)."""
    from ..data import detect_kind

    kind = kind or detect_kind(data)
    dataset = build_dataset(data, split, transform or eval_transform(cfg), kind)
    num_classes = len(classes) if classes else cfg["num_classes"]
    if match == "index":
        if len(dataset.classes) > num_classes:
            raise DataError(f"the data has {len(dataset.classes)} classes, more than the model's {num_classes}")
    else:
        mapping, message = match_classes(dataset.classes, classes, num_classes)
        if message and note:
            note(message)
        if mapping is not None:
            dataset = RelabelledDataset(dataset, mapping, classes)
    return limit_dataset(dataset, limit, seed)


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
    classes=None,
    match="name",
    note=None,
) -> DataLoader:
    from ..data import detect_kind

    kind = kind or detect_kind(data)
    dataset = build_eval_dataset(cfg, data, kind, split, limit, seed, classes, match, note)
    info = dist_info or DistInfo()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), info),
        num_workers=default_workers(kind) if workers is None else workers,
        pin_memory=torch.cuda.is_available(),
    )


def build_bn_loader(
    cfg: dict, data, kind, batch_size: int, workers, limit: int, seed: int, augment: str | None, classes=None,
    match="name",
) -> DataLoader:  # fmt: skip
    """``limit`` random training images (drawn by ``seed``) for re-estimating batch-norm statistics, in one fixed
    draw (by ``seed``) of the ``augment`` training augmentation, or as the evaluation sees them (``None``)."""
    from ..data import detect_kind

    kind = kind or detect_kind(data)
    transform = train_transform(cfg, augment) if augment else None
    dataset = build_eval_dataset(cfg, data, kind, "train", limit, seed, classes, match, transform=transform)
    if augment:
        dataset = SeededSamples(dataset, seed)
    return DataLoader(dataset, batch_size=batch_size, num_workers=default_workers(kind) if workers is None else workers)


TTA_CHOICES = ("none", "flip")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast=None,
    channels_last=False,
    progress=None,
    tta: str = "none",
) -> dict:
    """Mean cross-entropy (no smoothing), top-1 and top-5 in %, over every sample of ``loader``
    (summed across ranks when distributed); ``progress`` (a :class:`~compactnets.engine.progress.Progress`)
    wraps the loader. ``tta="flip"``: the logits are the mean of the image's and its mirror image's."""
    if tta not in TTA_CHOICES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_CHOICES)}")
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, targets in progress(loader) if progress else loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast or contextlib.nullcontext():
            logits = model(images).float()
            if tta == "flip":
                logits = (logits + model(images.flip(3)).float()) / 2
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
def predict_images(
    model: nn.Module,
    paths: list[str | Path],
    names: list[str],
    topk: int = 5,
    batch_size: int = 32,
    device: torch.device | None = None,
    on_error: Callable[[ImageReadError], None] | None = None,
) -> Iterator[dict]:
    """Top-k labels with probabilities for each image file, preprocessed as the model's config says.

    Images are read ``batch_size`` at a time, so memory is bounded by the batch, not by the number of files.
    An unreadable file is passed to ``on_error`` and skipped (raised when ``on_error`` is None).
    """
    transform = eval_transform(model.pretrained_cfg)
    model.eval()
    for start in range(0, len(paths), batch_size):
        images, kept = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(transform(load_rgb_image(str(path))))
            except ImageReadError as e:
                if on_error is None:
                    raise
                on_error(e)
                continue
            kept.append(path)
        if not kept:
            continue
        batch = torch.stack(images)
        if device is not None:
            batch = batch.to(device)
        probs = model(batch).float().softmax(dim=1).cpu()
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        for path, v, idx in zip(kept, values.tolist(), indices.tolist(), strict=True):
            yield {
                "image": str(path),
                "top": [{"label": names[i], "index": i, "probability": p} for p, i in zip(v, idx, strict=True)],
            }
