"""Datasets: CIFAR-10/100 in the official python-pickle layout, any ImageFolder tree, and the embedded subset.

``build_dataset(data, split)`` detects the layout from the path (or takes ``kind``):

* ``None`` / ``"embedded"``: the CIFAR-10 subset shipped in the package (500 train and 100 test images per
  class from the JPEG CIFAR-10 of ../shared/data, kept as JPEG bytes in one .npz file);
* a folder with ``data_batch_1`` (or ``cifar-10-batches-py/``): CIFAR-10 python batches;
* a folder with ``train``/``test``/``meta`` files (or ``cifar-100-python/``): CIFAR-100 python files;
* a folder with ``<split>/<class>/<image>``: ImageFolder (ImageNet layout, the JPEG CIFAR-10).

torchvision's CIFAR classes are not used for the pickles: they verify md5 sums (so no generated test data)
and read the batches with plain ``pickle``; these are read with :mod:`compactnets.safe_pickle`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from .. import safe_pickle
from .classes import CIFAR10_CLASSES, CIFAR100_CLASSES

EMBEDDED_FILE = Path(__file__).parent / "embedded" / "cifar10_subset.npz"
KINDS = ("embedded", "cifar10", "cifar100", "imagefolder")
_EVAL_SPLITS = ("test", "val")


class DataError(ValueError):
    pass


class ImageReadError(OSError):
    pass


def load_rgb_image(path: str) -> Image.Image:
    """Open an image file as RGB (grayscale, palette, CMYK and RGBA converted); name the file on failure."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e


class TensorImageDataset(Dataset):
    """Images held in memory as a uint8 tensor (N, 3, H, W)."""

    def __init__(self, images: torch.Tensor, targets: list[int], classes, transform=None):
        self.images = images
        self.targets = list(targets)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.images[index]
        return (self.transform(img) if self.transform else img), self.targets[index]


def subset_indices(length: int, limit: int | None, seed: int) -> list[int] | None:
    """The indices of a fixed random subset of ``limit`` of ``length`` samples (same seed, same subset), or
    None for all of them."""
    if not limit or limit >= length:
        return None
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:limit].tolist()


def _cifar_dir(root: Path, marker: str, subdir: str) -> Path | None:
    for folder in (root, root / subdir):
        if (folder / marker).is_file():
            return folder
    return None


def _rows_to_images(data) -> torch.Tensor:
    return torch.from_numpy(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).copy())


def cifar_pickle_dataset(root: Path, kind: str, train: bool, transform=None) -> TensorImageDataset:
    """CIFAR-10 (data_batch_1..5, test_batch, batches.meta) or CIFAR-100 (train, test, meta) python files."""
    if kind == "cifar10":
        folder = _cifar_dir(root, "data_batch_1", "cifar-10-batches-py")
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key, meta_file, meta_key, default_classes = "labels", "batches.meta", "label_names", CIFAR10_CLASSES
    else:
        folder = _cifar_dir(root, "meta", "cifar-100-python")
        files = ["train" if train else "test"]
        label_key, meta_file, meta_key, default_classes = "fine_labels", "meta", "fine_label_names", CIFAR100_CLASSES
    if folder is None:
        raise DataError(f"{root} holds no {kind} python batches")
    images, targets = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR file missing: {path}")
        batch = safe_pickle.load(path, encoding="latin1")
        images.append(_rows_to_images(batch["data"]))
        targets += list(batch[label_key])
    classes = default_classes
    if (folder / meta_file).is_file():
        classes = safe_pickle.load(folder / meta_file, encoding="latin1").get(meta_key, classes)
    return TensorImageDataset(torch.cat(images), targets, classes, transform)


def embedded_dataset(train: bool, transform=None) -> TensorImageDataset:
    """The CIFAR-10 subset shipped in the package (5,000 train / 1,000 test real images)."""
    split = "train" if train else "test"
    with np.load(EMBEDDED_FILE, allow_pickle=False) as npz:
        blob, offsets = npz[f"{split}_jpeg"].tobytes(), npz[f"{split}_offsets"]
        targets = npz[f"{split}_labels"].tolist()
        classes = npz["classes"].tolist()
    images = np.stack(
        [
            np.asarray(Image.open(io.BytesIO(blob[a:b])).convert("RGB"))
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    )
    return TensorImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), targets, classes, transform)


def _split_dir(root: Path, split: str) -> Path:
    candidates = _EVAL_SPLITS if split in _EVAL_SPLITS else (split,)
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root} has no '{'/'.join(candidates)}' folder for the {split} split")


def image_folder_dataset(root: Path, split: str, transform=None) -> ImageFolder:
    folder = _split_dir(root, split)
    try:
        return ImageFolder(str(folder), transform=transform, loader=load_rgb_image)
    except FileNotFoundError as e:
        raise DataError(f"{folder}: {e}") from e


def detect_kind(data: str | Path | None) -> str:
    if data is None or str(data) == "embedded":
        return "embedded"
    root = Path(data)
    if not root.exists():
        raise DataError(f"data path not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    if _cifar_dir(root, "data_batch_1", "cifar-10-batches-py"):
        return "cifar10"
    if _cifar_dir(root, "meta", "cifar-100-python"):
        return "cifar100"
    if any((root / s).is_dir() for s in ("train", *_EVAL_SPLITS)):
        return "imagefolder"
    raise DataError(
        f"cannot tell the dataset layout of {root}: expected CIFAR-10 python batches (data_batch_1, ...), "
        "CIFAR-100 python files (train, test, meta) or an ImageFolder tree (<split>/<class>/<image>)"
    )


def build_dataset(data: str | Path | None, split: str, transform=None, kind: str | None = None):
    """A dataset with ``.classes``; ``split`` is 'train' or 'test'/'val' (the evaluation split)."""
    kind = kind or detect_kind(data)
    if kind not in KINDS:
        raise DataError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
    if split not in ("train", *_EVAL_SPLITS):
        raise DataError(f"unknown split {split!r}; use train, test or val")
    if kind == "embedded":
        return embedded_dataset(split == "train", transform)
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data path not found: {root}")
    if kind in ("cifar10", "cifar100"):
        return cifar_pickle_dataset(root, kind, split == "train", transform)
    return image_folder_dataset(root, split, transform)
