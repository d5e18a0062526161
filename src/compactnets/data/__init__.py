"""Data: datasets (CIFAR pickles, ImageFolder, the embedded CIFAR-10 subset), class names, transform presets."""

from .classes import class_names
from .datasets import DataError, ImageReadError, build_dataset, detect_kind, load_rgb_image
from .transforms import default_augment, eval_transform, train_transform

__all__ = [
    "DataError",
    "ImageReadError",
    "build_dataset",
    "class_names",
    "default_augment",
    "detect_kind",
    "eval_transform",
    "load_rgb_image",
    "train_transform",
]
