"""The fast path for small-image datasets: the whole split decoded once into a uint8 tensor, batches made on the device.

``decode_split`` returns a split as an (N, H, W, 3) uint8 tensor with its labels and class names. ImageFolder
trees are decoded once and cached in ``$COMPACTNETS_CACHE`` (default ``~/.cache/compactnets``) as an .npz file
(read with ``allow_pickle=False``), keyed by the folder's path and every file's name, size and mtime, so a
changed folder is decoded again; the CIFAR python batches and the embedded subset are uint8 arrays already.

``DeviceBatches`` iterates over such a split as a ``DataLoader`` would, with whole-batch tensor operations
instead of per-image Python: shuffling and sharding as ``DistributedSampler`` does (a permutation seeded by
``seed + epoch``, padded to a multiple of the world size, every ``world_size``-th index from ``rank``), the
``cifar`` augmentation (random crop with 4-pixel zero padding, horizontal flip with p = 0.5: the distribution
of torchvision's ``RandomCrop(padding=4)`` + ``RandomHorizontalFlip``), then the model's pixel conversion with
the very transforms the torchvision pipeline uses. The random offsets and flips of an epoch depend only on
(seed, epoch, rank), so a resumed run draws the same ones and ``--deterministic`` runs repeat exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .datasets import EMBEDDED_FILE, DataError, build_dataset, image_folder_dataset, load_rgb_image, subset_indices
from .transforms import to_model_input

CACHE_ENV = "COMPACTNETS_CACHE"
CACHE_VERSION = 1
MAX_SIDE = 64  # "CIFAR-size": the automatic choice takes images up to this side
MEMORY_FRACTION = 0.25  # ... and only if the decoded splits take at most this share of the available memory
PAD = 4  # the cifar augmentation's zero padding
FAST_AUGMENTATIONS = ("cifar", "none")


class FastDataUnavailable(DataError):
    """The fast path cannot reproduce the torchvision pipeline for this data or these options."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "compactnets")


@dataclass
class DecodedSplit:
    """A dataset split in memory: ``images`` (N, H, W, 3) uint8, ``targets`` (N,) int64, class names."""

    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.targets)

    def select(self, indices: list[int] | None) -> DecodedSplit:
        if indices is None:
            return self
        index = torch.as_tensor(indices, dtype=torch.int64)
        return DecodedSplit(self.images[index], self.targets[index], self.classes)


def _folder_key(root: Path, split: str, files: list[Path]) -> str:
    stats = [(str(f.relative_to(root)), *(lambda s: (s.st_size, s.st_mtime_ns))(f.stat())) for f in files]
    blob = json.dumps({"version": CACHE_VERSION, "root": str(root.resolve()), "split": split, "files": stats})
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _save_npz_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _decode_image_folder(root: Path, split: str, limit: int | None, seed: int, log) -> DecodedSplit:
    folder = image_folder_dataset(root, split)
    files = [Path(p) for p, _ in folder.samples]
    if not files:
        raise DataError(f"{root}: no images in the {split} split")
    indices = subset_indices(len(files), limit, seed)
    cache = cache_dir() / "datasets" / f"{root.name or 'data'}-{split}-{_folder_key(root, split, files)}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            decoded = DecodedSplit(
                torch.from_numpy(npz["images"]), torch.from_numpy(npz["targets"]), npz["classes"].tolist()
            )
        return decoded.select(indices)
    # A subset (--train-limit, --eval-limit) is decoded on its own and not cached: a few images of a large
    # folder should not cost decoding all of it.
    chosen = range(len(files)) if indices is None else indices
    first = load_rgb_image(str(files[chosen[0]]))
    images = np.empty((len(chosen), first.height, first.width, 3), dtype=np.uint8)
    if indices is None:
        log(f"decoding the {len(files)} images of {root / split} once into {cache}")
    for i, k in enumerate(chosen):
        img = first if i == 0 else load_rgb_image(str(files[k]))
        if img.size != first.size:
            raise FastDataUnavailable(
                f"{files[k]} is {img.width}x{img.height}, {files[chosen[0]]} is {first.width}x{first.height}: "
                "the fast data path needs images of one size"
            )
        images[i] = np.asarray(img)
    targets = np.asarray([folder.samples[k][1] for k in chosen], dtype=np.int64)
    if indices is None:
        _save_npz_atomic(cache, images=images, targets=targets, classes=np.asarray(folder.classes, dtype=str))
    return DecodedSplit(torch.from_numpy(images), torch.from_numpy(targets), list(folder.classes))


def decode_split(data, split: str, kind: str, limit: int | None = None, seed: int = 0, log=print) -> DecodedSplit:
    """The whole split, or the fixed random subset of ``limit`` samples that ``limit_dataset`` takes, as uint8
    tensors (whole ImageFolder splits through the on-disk cache)."""
    if kind == "imagefolder":
        return _decode_image_folder(Path(data), split, limit, seed, log)
    dataset = build_dataset(data, split, None, kind)  # TensorImageDataset: (N, 3, H, W) uint8
    images = dataset.images.permute(0, 2, 3, 1).contiguous()
    decoded = DecodedSplit(images, torch.as_tensor(dataset.targets, dtype=torch.int64), list(dataset.classes))
    return decoded.select(subset_indices(len(decoded), limit, seed))


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _image_size(data, split: str, kind: str) -> tuple[int, int, int]:
    """(count, height, width) of a split without decoding it (ImageFolder: the first image's size)."""
    if kind == "imagefolder":
        folder = image_folder_dataset(Path(data), split)
        if not folder.samples:
            raise DataError(f"{data}: no images in the {split} split")
        with Image.open(folder.samples[0][0]) as img:
            return len(folder.samples), img.height, img.width
    if kind == "embedded":
        with np.load(EMBEDDED_FILE, allow_pickle=False) as npz:
            return len(npz[f"{split}_labels"]), 32, 32
    return 0, 32, 32  # CIFAR python batches: held in memory as uint8 by either path


def check_fast_path(cfg: dict, data, kind: str, splits: list[str], augment: str, color_jitter: float) -> None:
    """Raise ``FastDataUnavailable`` with the reason if the fast path would not give what the torchvision
    pipeline gives, or the data is not CIFAR-size or would not fit in memory."""
    if augment not in FAST_AUGMENTATIONS:
        raise FastDataUnavailable(
            f"the fast data path implements the {' and '.join(FAST_AUGMENTATIONS)} augmentations, not {augment!r}"
        )
    if color_jitter:
        raise FastDataUnavailable("the fast data path does not implement --color-jitter")
    crop = cfg["input_size"][-1]
    if int(crop / cfg["crop_pct"]) != crop:
        raise FastDataUnavailable(f"the model's crop_pct {cfg['crop_pct']} resizes its images: no fast data path")
    total = 0
    for split in splits:
        count, height, width = _image_size(data, split, kind)
        if (height, width) != (crop, crop):
            raise FastDataUnavailable(
                f"the {split} images are {width}x{height}, the model takes {crop}x{crop}: no fast data path"
            )
        if crop > MAX_SIDE:
            raise FastDataUnavailable(f"{crop}x{crop} images: the fast data path takes up to {MAX_SIDE}x{MAX_SIDE}")
        total += count * (height + 2 * PAD) * (width + 2 * PAD) * 3
    available = _available_memory()
    if available is not None and total > MEMORY_FRACTION * available:
        raise FastDataUnavailable(
            f"the decoded images would take {total / 2**30:.1f} GiB, over {MEMORY_FRACTION:.0%} of the "
            f"{available / 2**30:.1f} GiB available"
        )


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class DeviceBatches:
    """Batches of ``split`` as model inputs on ``device``.

    ``train=True``: a new shuffled shard per ``set_epoch`` and the ``augment`` augmentation; the last batch may
    be smaller, as with a ``DataLoader`` without ``drop_last``. ``train=False``: every ``world_size``-th sample
    from ``rank`` in order, no padding (as ``ShardSampler``), no augmentation.
    """

    def __init__(
        self,
        split: DecodedSplit,
        cfg: dict,
        device: torch.device,
        batch_size: int,
        train: bool,
        augment: str = "cifar",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        images, targets = split.images, split.targets
        self.pad = PAD if train and augment == "cifar" else 0
        if self.pad:  # padded once: a crop is then one gather
            images = torch.nn.functional.pad(images, (0, 0, self.pad, self.pad, self.pad, self.pad))
        self.images, self.targets = images.to(device), targets.to(device)
        self.height, self.width = split.images.shape[1:3]
        self.classes = split.classes
        self.convert = to_model_input(cfg)
        self.device, self.batch_size, self.train = device, batch_size, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.length = len(targets)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        n = self.length
        if not self.train:
            self.order = torch.arange(self.rank, n, self.world_size)
            return
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        if self.world_size > 1:
            total = -(-n // self.world_size) * self.world_size
            order = torch.cat([order, order[: total - n]])[self.rank : total : self.world_size]
        self.order = order
        if self.pad:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch, self.rank))
            self.offsets = torch.randint(0, 2 * self.pad + 1, (len(order), 2), generator=generator)
            self.flips = torch.rand(len(order), generator=generator) < 0.5

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def crop_flip(self, index: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8: the padded images ``index`` cropped at ``offsets`` (top, left), mirrored where
        ``flips``."""
        rows = offsets[:, :1] + torch.arange(self.height, device=self.device)
        cols = torch.arange(self.width, device=self.device).expand(len(index), -1)
        cols = offsets[:, 1:] + torch.where(flips[:, None], self.width - 1 - cols, cols)
        return self.images[index[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def __iter__(self):
        return self.batches_from(0)

    def batches_from(self, step: int):
        """The batches after the first ``step`` (a run resumed inside an epoch): nothing is drawn for those."""
        for start in range(step * self.batch_size, len(self.order), self.batch_size):
            batch = slice(start, start + self.batch_size)
            index = self.order[batch].to(self.device)
            if self.pad:
                images = self.crop_flip(index, self.offsets[batch].to(self.device), self.flips[batch].to(self.device))
            else:  # evaluation, or the "none" augmentation: the images as they are
                images = self.images[index].permute(0, 3, 1, 2)
            yield self.convert(images), self.targets[index]
