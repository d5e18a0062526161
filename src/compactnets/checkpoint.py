"""Checkpoint files: atomic writes, safe loading (``weights_only=True``), prefix cleaning and fit checks.

A compactnets checkpoint is a dict of plain types and tensors::

    {'version', 'arch', 'state_dict', 'pretrained_cfg', 'class_names', ...training state...}

Official checkpoints of the supported repositories nest their weights under other keys (see STATE_DICT_KEYS).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

CHECKPOINT_VERSION = 1
# Where known trainers keep the weights, in order of preference.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net_state_dict", "state_dict_ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


class CheckpointError(ValueError):
    pass


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: the rename stays atomic
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_file(path: str | Path) -> dict:
    """Load a torch checkpoint with ``weights_only=True`` onto the CPU; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} cannot be loaded safely (torch.load weights_only=True refused it): {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {str(e).splitlines()[0]}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
    return dict(obj)


def extract_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint dict (a bare state dict is returned as is), wrapper prefixes stripped."""
    for key in STATE_DICT_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state_dict = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state_dict:
        raise CheckpointError(f"no tensors found in the checkpoint (top-level keys: {sorted(obj)[:8]})")
    return clean_state_dict(state_dict)


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def check_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise a CheckpointError naming the first key whose shape differs, then missing/unexpected keys."""
    expected = model.state_dict()
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    for key, value in state_dict.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{what} does not fit {arch}: {key!r} has shape {tuple(value.shape)} in the checkpoint "
                f"but {tuple(expected[key].shape)} in the model"
            )
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]!r})")
        raise CheckpointError(f"{what} does not fit {arch}: " + ", ".join(parts))


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what="checkpoint"):
    check_fits(model, state_dict, what)
    model.load_state_dict(state_dict, strict=True)


def read_weights(path: str | Path) -> dict:
    """A weights file as a dict: ``.safetensors`` through safetensors (its state dict, plus the ``model_kwargs``
    JSON of its metadata when there is one, as ``tools/ship_weights.py`` writes), anything else as a torch
    checkpoint with ``weights_only=True`` (:func:`load_file`). Never unpickles arbitrary objects."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return load_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            state_dict = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from e
    if "model_kwargs" not in metadata:
        return state_dict
    return {"state_dict": state_dict, "model_kwargs": json.loads(metadata["model_kwargs"])}


def load_pretrained(model: nn.Module, source: str | Path | Mapping, what: str | None = None) -> dict:
    """Load weights (a file, or a checkpoint dict already read) into ``model``, as timm's ``load_pretrained``
    adapts them: the first conv to the model's input channels (``cfg['first_conv']``), and a classifier of
    another width, or none (``num_classes=0``), keeps the model's own. Everything else must fit exactly. A
    compactnets checkpoint's ``pretrained_cfg`` preprocessing replaces the model's. Returns the checkpoint dict.
    """
    obj = source if isinstance(source, Mapping) else read_weights(source)
    what = what or f"checkpoint {source}"
    state_dict = _adapt_input_conv(model, extract_state_dict(obj))
    state_dict = _keep_own_classifier_if_resized(model, state_dict)
    load_state_dict_checked(model, state_dict, what=what)
    apply_preprocessing(model, obj.get("pretrained_cfg"))
    return dict(obj)


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """First-conv weights for ``in_chans`` input channels (timm's rule): summed over the channels for one,
    tiled and scaled by ``C / in_chans`` for more, so a constant image gives the same response."""
    channels = weight.shape[1]
    if in_chans == channels:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    repeats = -(-in_chans // channels)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (channels / in_chans)


def _adapt_input_conv(model: nn.Module, state_dict: dict) -> dict:
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    key = f"{first_conv}.weight" if first_conv else None
    own = model.state_dict().get(key) if key else None
    if own is None or key not in state_dict or state_dict[key].ndim != 4 or state_dict[key].shape[1] == own.shape[1]:
        return state_dict
    return {**state_dict, key: adapt_input_conv(state_dict[key], own.shape[1])}


def _keep_own_classifier_if_resized(model: nn.Module, state_dict: dict) -> dict:
    """Swap in the model's own classifier tensors when the checkpoint's classifier has another shape or the
    model has none (``num_classes=0``)."""
    if not hasattr(model, "get_classifier"):
        return state_dict
    head = model.get_classifier()
    prefix = next((name + "." for name, m in model.named_modules() if m is head and name), None)
    if prefix is None:
        return state_dict
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    theirs = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    if any(k not in own or own[k].shape != v.shape for k, v in theirs.items()):
        state_dict = {k: v for k, v in state_dict.items() if k not in theirs} | own
    return state_dict


PREPROCESSING_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std", "channel_order", "pixel_range")


def apply_preprocessing(model: nn.Module, cfg: Mapping | None) -> None:
    if cfg and hasattr(model, "pretrained_cfg"):
        model.pretrained_cfg.update({k: cfg[k] for k in PREPROCESSING_KEYS if k in cfg})
