"""Transform presets driven by a model's config (torchvision.transforms.v2).

Eval: resize the shorter side to ``int(crop / crop_pct)``, center-crop, then pixels as the weights expect them:
scaled to 0-1 (``pixel_range=1``) or raw 0-255, RGB or BGR, normalised with the config's mean/std.
Train: the recipe's augmentation (``cifar``: pad-4 random crop + flip; ``imagenet``: random-resized crop +
flip; ``none``), optional colour jitter, then the same pixel conversion.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

AUGMENTATIONS = ("cifar", "imagenet", "none")


class ReverseChannels(torch.nn.Module):
    """RGB -> BGR for weights trained on OpenCV-decoded images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-3)


def _interpolation(cfg: dict) -> InterpolationMode:
    return InterpolationMode(cfg["interpolation"])


def _to_model_input(cfg: dict) -> list:
    steps = [T.ToDtype(torch.float32, scale=cfg["pixel_range"] == 1.0)]
    if cfg["channel_order"] == "BGR":
        steps.append(ReverseChannels())
    steps.append(T.Normalize(mean=list(cfg["mean"]), std=list(cfg["std"])))
    return steps


def to_model_input(cfg: dict) -> T.Compose:
    """uint8 image(s) (..., 3, H, W) -> the model's float input: the last steps of both presets."""
    return T.Compose(_to_model_input(cfg))


def eval_transform(cfg: dict) -> T.Compose:
    crop = cfg["input_size"][-1]
    resize = int(crop / cfg["crop_pct"])
    return T.Compose(
        [
            T.ToImage(),
            T.Resize(resize, interpolation=_interpolation(cfg), antialias=True),
            T.CenterCrop(crop),
            *_to_model_input(cfg),
        ]
    )


def default_augment(cfg: dict) -> str:
    """The training augmentation a model's input size calls for: CIFAR's padded crop up to 64 px, else ImageNet's."""
    return "cifar" if cfg["input_size"][-1] <= 64 else "imagenet"


def train_transform(cfg: dict, augment: str = "cifar", color_jitter: float = 0.0, hflip: float = 0.5) -> T.Compose:
    crop = cfg["input_size"][-1]
    if augment == "cifar":
        geometry = [T.Resize(crop, antialias=True), T.CenterCrop(crop), T.RandomCrop(crop, padding=4)]
    elif augment == "imagenet":
        geometry = [T.RandomResizedCrop(crop, interpolation=_interpolation(cfg), antialias=True)]
    elif augment == "none":
        return eval_transform(cfg)
    else:
        raise ValueError(f"unknown augmentation {augment!r}; choose from {', '.join(AUGMENTATIONS)}")
    steps = [T.ToImage(), *geometry]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    if color_jitter > 0:
        steps.append(T.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return T.Compose(steps + _to_model_input(cfg))
