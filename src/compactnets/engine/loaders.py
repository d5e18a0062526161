"""The training run's data: the in-memory fast path for CIFAR-size data, else torchvision DataLoaders.

``--fast-data auto`` (the default) takes the fast path (:mod:`compactnets.data.memory`) where it gives what the
torchvision pipeline gives: images of the model's input size, at most 64 px, that fit in memory, and the
``cifar`` or ``none`` augmentation without colour jitter. ``on`` insists (and says why it cannot), ``off`` always
uses the DataLoader. Either way the training batches of an epoch depend only on the seed and the epoch, so a run
resumed inside an epoch continues with the very batches it would have drawn.

``--bn-reestimate N`` adds ``bn_batches``: a fixed random subset of N training images, for
:func:`~compactnets.engine.batchnorm.reestimate_bn`, in one fixed draw of the training augmentation
(``--bn-augment train``, the default) or as the evaluation sees them (``none``).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..data import build_dataset, train_transform
from ..data.classes import match_classes
from ..data.datasets import SeededSamples, check_images_readable, subset_indices
from ..data.memory import DecodedSplit, DeviceBatches, FastDataUnavailable, check_fast_path, decode_split
from .distributed import DistInfo
from .evaluate import build_bn_loader, build_eval_loader, default_workers, limit_dataset

FAST_DATA_CHOICES = ("auto", "on", "off")


@dataclass
class TrainingData:
    """The batches a run trains and evaluates on; ``set_epoch`` before each epoch."""

    train: Iterable
    eval: Iterable | None
    classes: list[str]
    num_train: int
    description: str
    seed: int = 0
    sampler: DistributedSampler | None = None
    generator: torch.Generator | None = field(default=None, repr=False)
    bn_batches: Iterable | None = None

    @property
    def fast(self) -> bool:
        return isinstance(self.train, DeviceBatches)

    def set_epoch(self, epoch: int) -> None:
        # Shuffling and worker seeds depend only on (seed, epoch): a resumed run draws the same batches.
        if self.fast:
            self.train.set_epoch(epoch)
            return
        self.generator.manual_seed(self.seed + epoch)
        self.train.dataset.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def batches_from(self, step: int) -> Iterable:
        """This epoch's training batches after the first ``step`` (the DataLoader loads the skipped ones too)."""
        if self.fast:
            return _Sized(self.train.batches_from(step), len(self.train) - step)
        return _Sized(itertools.islice(self.train, step, None), len(self.train) - step)


@dataclass
class _Sized:
    """An iterator with the length progress bars ask for."""

    iterator: Iterable
    length: int

    def __iter__(self):
        return iter(self.iterator)

    def __len__(self) -> int:
        return self.length


def _fast_data(args, cfg, kind, augment, dist_info: DistInfo, device, log) -> TrainingData:
    splits = ["train"] + (["test"] if args.eval_every else [])
    check_fast_path(cfg, args.data, kind, splits, augment, args.color_jitter)
    # The --train-limit / --eval-limit subsets are those of the DataLoader path.
    train_split = decode_split(args.data, "train", kind, args.train_limit, args.seed, log)
    common = {
        "cfg": cfg,
        "device": device,
        "seed": args.seed,
        "rank": dist_info.rank,
        "world_size": dist_info.world_size,
    }
    train = DeviceBatches(train_split, batch_size=args.batch_size, train=True, augment=augment, **common)
    evaluation = None
    if args.eval_every:
        test_split = _labelled_like(
            decode_split(args.data, "test", kind, args.eval_limit, args.seed, log), train_split.classes, log
        )
        evaluation = DeviceBatches(
            test_split, batch_size=args.eval_batch_size or args.batch_size, train=False, **common
        )
    bn_batches = None
    if args.bn_reestimate:  # the same subset and draw on every rank: every rank's statistics agree
        subset = train_split.select(subset_indices(len(train_split), args.bn_reestimate, args.seed))
        augmented = args.bn_augment == "train"  # one fixed draw of the crops and flips: set_epoch is never called
        bn_batches = DeviceBatches(
            subset, batch_size=args.batch_size, train=augmented, augment=augment, cfg=cfg, device=device, seed=args.seed
        )
    description = f"fast path: uint8 tensors on {device}, batched augmentation"
    return TrainingData(train, evaluation, train_split.classes, train.length, description, bn_batches=bn_batches)


def _labelled_like(split: DecodedSplit, classes: list[str], log) -> DecodedSplit:
    """The evaluation split with its labels mapped by class name to the training split's classes."""
    mapping, note = match_classes(split.classes, classes, len(classes))
    if note:
        log(note)
    if mapping is None:
        return split
    return DecodedSplit(split.images, torch.tensor(mapping)[split.targets], list(classes))


def _dataloaders(args, cfg, kind, augment, dist_info: DistInfo, device, log) -> TrainingData:
    train_set = build_dataset(args.data, "train", train_transform(cfg, augment, args.color_jitter), kind)
    train_set = SeededSamples(limit_dataset(train_set, args.train_limit, args.seed), args.seed)
    workers = default_workers(kind) if args.workers is None else args.workers
    sampler = DistributedSampler(train_set, seed=args.seed) if dist_info.enabled else None
    generator = torch.Generator()
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    eval_loader = None
    if args.eval_every:
        # Problems of the evaluation split surface now, not after the first epoch: classes the training split
        # lacks (labels are matched by class name), unreadable files.
        eval_loader = build_eval_loader(
            cfg, args.data, kind, "test", args.eval_batch_size or args.batch_size, workers, args.eval_limit,
            args.seed, dist_info, classes=list(train_set.classes), note=log,
        )  # fmt: skip
        check_images_readable(eval_loader.dataset)
    bn_batches = None
    if args.bn_reestimate:
        bn_batches = build_bn_loader(
            cfg, args.data, kind, args.batch_size, workers, args.bn_reestimate, args.seed,
            augment if args.bn_augment == "train" else None, classes=list(train_set.classes),
        )  # fmt: skip
    return TrainingData(
        train_loader, eval_loader, list(train_set.classes), len(train_set),
        f"torchvision DataLoader, {workers} worker(s)", args.seed, sampler, generator, bn_batches,
    )  # fmt: skip


def build_training_data(
    args: argparse.Namespace, cfg: dict, kind: str, augment: str, dist_info: DistInfo, device: torch.device, log
) -> TrainingData:
    """The run's training and evaluation batches, by ``args.fast_data``; the path taken is ``description``."""
    mode = getattr(args, "fast_data", "auto")
    data = None
    if mode != "off":
        try:
            data = _fast_data(args, cfg, kind, augment, dist_info, device, log)
        except FastDataUnavailable as e:
            if mode == "on":
                raise FastDataUnavailable(f"--fast-data on: {e} (use --fast-data auto or off)") from None
            log(f"fast data path off: {e}")
    data = data or _dataloaders(args, cfg, kind, augment, dist_info, device, log)
    args.fast_data_resolved = "on" if data.fast else "off"  # recorded in args.json
    return data
