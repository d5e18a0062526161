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
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from .. import safe_pickle
from ..errors import DataError, ImageReadError
from .classes import CIFAR10_CLASSES, CIFAR100_CLASSES

EMBEDDED_FILE = Path(__file__).parent / "embedded" / "cifar10_subset.npz"
KINDS = ("embedded", "cifar10", "cifar100", "imagefolder")
_EVAL_SPLITS = ("test", "val")


_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit PNG/TIFF grayscale (Pillow says "I" too)


def load_rgb_image(path: str) -> Image.Image:
    """Open an image file as 8-bit RGB (grayscale, 16-bit grayscale, palette, CMYK and RGBA converted); name the
    file on failure."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _WIDE_GRAY_MODES:
                # Pillow's convert("RGB") clips these at 255 (a white image); scale the 16-bit range instead.
                wide = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
                img = Image.fromarray(np.rint(wide / 257).astype(np.uint8))
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e


def _sample_paths(dataset) -> list[str]:
    """The image files of a folder dataset, through Subset and relabelling wrappers; [] for in-memory data."""
    if hasattr(dataset, "samples"):
        return [path for path, _ in dataset.samples]
    if isinstance(dataset, Subset):
        paths = _sample_paths(dataset.dataset)
        return [paths[i] for i in dataset.indices] if paths else []
    return _sample_paths(dataset.dataset) if hasattr(dataset, "dataset") else []


def check_images_readable(dataset) -> None:
    """Open the header of every image file of a folder dataset (a few seconds for 50,000 files): an
    unreadable file is found before training starts, not at the end of the first epoch."""
    bad = []
    for path in _sample_paths(dataset):
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(path)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ImageReadError(f"cannot read image {bad[0]}{more}")


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


class SeededSamples(Dataset):
    """``dataset`` whose random transforms draw from a generator seeded by (seed, epoch, sample index): the
    augmentation of a sample depends on nothing else (not on the worker count, nor on the random numbers the model
    drew before), so a run resumed inside an epoch loads exactly the batches it would have loaded."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.classes = dataset.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 100_000_007 + index)
            return self.dataset[index]


class RelabelledDataset(Dataset):
    """``dataset`` with each label ``t`` replaced by ``mapping[t]`` (its class in another class list)."""

    def __init__(self, dataset: Dataset, mapping: list[int], classes):
        self.dataset, self.mapping, self.classes = dataset, list(mapping), list(classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, self.mapping[target]


def _read_cifar_file(path: Path, keys: tuple[str, ...]) -> dict:
    """A CIFAR python file as a dict holding ``keys``; a DataError naming the file otherwise."""
    try:
        batch = safe_pickle.load(path, encoding="latin1")
    except safe_pickle.UnsafePickleError:
        raise
    except Exception as e:  # truncated or foreign files fail inside the unpickler in many ways
        raise DataError(f"{path} is not a CIFAR python file ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or any(k not in batch for k in keys):
        found = sorted(map(str, batch))[:6] if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path} is not a CIFAR python file: expected the keys {list(keys)}, found {found}")
    return batch


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[torch.Tensor, list[int]]:
    batch = _read_cifar_file(path, ("data", label_key))
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data is {data.dtype} of shape {data.shape}, expected uint8 rows of 3072 pixels")
    labels = batch[label_key]
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != len(data):
        count = len(labels) if hasattr(labels, "__len__") else type(labels).__name__
        raise DataError(f"{path}: {len(data)} images but {count} labels")
    labels = [int(t) for t in labels]
    bad = next((t for t in labels if not 0 <= t < num_classes), None)
    if bad is not None:
        raise DataError(f"{path}: label {bad} outside the {num_classes} classes")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), labels


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
    classes = default_classes
    if (folder / meta_file).is_file():
        classes = _read_cifar_file(folder / meta_file, (meta_key,))[meta_key]
        if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
            raise DataError(f"{folder / meta_file}: {meta_key} should be a list of class names")
    images, targets = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR file missing: {path}")
        batch_images, batch_targets = _cifar_batch(path, label_key, len(classes))
        images.append(batch_images)
        targets += batch_targets
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


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _image_files(class_dir: str, is_valid_file) -> list[str]:
    """Files under ``class_dir``, hidden entries skipped, each real folder once; a link back to the class
    folder or above it (a symlink loop) is not followed. Same order as torchvision's make_dataset."""
    stop = os.path.realpath(class_dir)
    seen, found, pending = set(), [], [class_dir]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in seen or (folder != class_dir and (stop + os.sep).startswith(real + os.sep)):
            continue
        seen.add(real)
        files = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if _hidden(entry.name):
                    continue
                if entry.is_dir():
                    pending.append(entry.path)
                elif entry.is_file() and is_valid_file(entry.path):
                    files.append(entry.path)
        found.append((folder, sorted(files)))
    return [path for _, files in sorted(found) for path in files]


class ImageFolderTree(ImageFolder):
    """torchvision's ImageFolder, except that hidden entries (``.ipynb_checkpoints/``, ``.DS_Store``) are
    neither classes nor samples and a symlink loop does not repeat samples."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        with os.scandir(directory) as entries:
            classes = sorted(e.name for e in entries if e.is_dir() and not _hidden(e.name))
        if not classes:
            raise FileNotFoundError(f"no class folder in {directory}")
        return classes, {name: i for i, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx=None, extensions=None, is_valid_file=None, allow_empty=False):
        if is_valid_file is None:

            def is_valid_file(path: str) -> bool:
                return has_file_allowed_extension(path, extensions or IMG_EXTENSIONS)

        samples = []
        for name in sorted(class_to_idx):
            files = _image_files(os.path.join(directory, name), is_valid_file)
            if not files and not allow_empty:
                raise FileNotFoundError(f"no image file in the class folder {os.path.join(directory, name)}")
            samples += [(path, class_to_idx[name]) for path in files]
        return samples


def image_folder_dataset(root: Path, split: str, transform=None) -> ImageFolderTree:
    folder = _split_dir(root, split)
    try:
        return ImageFolderTree(str(folder), transform=transform, loader=load_rgb_image)
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
