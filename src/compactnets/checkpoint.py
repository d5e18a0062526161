"""Checkpoint files: atomic writes, safe loading (``weights_only=True``), prefix cleaning, fit and value checks.

What a compactnets checkpoint holds, and how it becomes a model, is :class:`compactnets.models.Checkpoint`.

Official checkpoints of the supported repositories nest their weights under other keys (see STATE_DICT_KEYS).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

CHECKPOINT_VERSION = 1
# Where known trainers keep the weights, in order of preference.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net_state_dict", "state_dict_ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves half a file.

    A full disk or an unusable destination raises a CheckpointError; the previous file at ``path`` is kept.
    """
    _write_atomic(path, lambda f: torch.save(obj, f))


def save_safetensors(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: str | Path) -> None:
    """Weights as safetensors (no pickle), atomically as :func:`save_atomic`; ``metadata`` is text only."""
    from safetensors.torch import save

    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    _write_atomic(path, lambda f: f.write(save(tensors, metadata=dict(metadata))))


def _write_atomic(path: str | Path, write) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: the rename stays atomic
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if _is_disk_full(e):
            raise CheckpointError(f"no space left on device writing {path}; the previous file is kept") from e
        if isinstance(e, OSError):
            parent = next((p for p in path.parents if p.exists()), None)
            reason = f"{parent} is not a folder" if parent and not parent.is_dir() else e.strerror or e
            raise CheckpointError(f"cannot write {path}: {reason}") from e
        raise


def _is_disk_full(e: BaseException) -> bool:
    # torch's zip writer reports a failed write as a RuntimeError carrying the OS message
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or (
        isinstance(e, RuntimeError) and "No space left on device" in str(e)
    )


def plain(value):
    """``value`` in the types a checkpoint (read with ``weights_only=True``) and JSON hold: containers become dicts
    and lists, anything else not a number, bool or string becomes its string (a path, a dtype)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def orphan_temporaries(folder: str | Path) -> list[Path]:
    """Temporary files that ``save_atomic`` leaves behind when its process is killed mid-write."""
    return sorted(Path(folder).glob(".*.pth.*.tmp"))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _pickle_globals(path: Path) -> list[str]:
    """The globals a torch file's pickle names, read opcode by opcode without running anything."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        names, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if opcode.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
        return names
    except Exception:  # a file this broken is reported with torch's own message instead
        return []


_SAFE_MODULES = ("torch", "collections", "_codecs", "builtins")


def _refused_global(path: Path, error: Exception) -> str | None:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if match:
        return match[1]
    unsafe = [n for n in _pickle_globals(path) if n.split(".")[0] not in _SAFE_MODULES]
    return unsafe[0] if unsafe else None


def load_file(path: str | Path) -> dict:
    """Load a torch checkpoint with ``weights_only=True`` onto the CPU; a CheckpointError for any bad file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; the error below says enough
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(path, e)
        if refused:
            raise CheckpointError(
                f"refusing to load {path}: it asks to import {refused}, which is code, not plain data "
                "(checkpoints are read with torch.load(weights_only=True))"
            ) from e
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {_first_line(e)}") from e
    except Exception as e:  # text or truncated files fail inside the unpickler in many ways (KeyError: 101, ...)
        with open(path, "rb") as f:
            head = f.read(256)
        if all(32 <= b < 127 or b in b"\t\n\r" for b in head):
            raise CheckpointError(f"{path} is a text file, not a torch checkpoint") from e
        reason = f"{type(e).__name__}: {_first_line(e)}"
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({reason})") from e
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


SAFETENSORS_JSON_KEYS = ("model_kwargs", "class_names")  # checkpoint fields a safetensors file holds as JSON metadata


def read_weights(path: str | Path) -> dict:
    """A weights file as a dict: ``.safetensors`` through safetensors (its state dict, plus the ``arch`` and the
    JSON ``model_kwargs`` and ``class_names`` of its metadata, as ``Checkpoint.save`` writes them), anything else as a
    torch checkpoint with ``weights_only=True`` (:func:`load_file`). Never unpickles arbitrary objects."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return load_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            obj = {"state_dict": {key: f.get_tensor(key) for key in f.keys()}}  # noqa: SIM118 (not a dict)
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from e
    for key in SAFETENSORS_JSON_KEYS:
        if key in metadata:
            try:
                obj[key] = json.loads(metadata[key])
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: its metadata {key} is not JSON ({e.msg})") from e
    if "arch" in metadata:
        obj["arch"] = metadata["arch"]
    return obj


PREPROCESSING_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std", "channel_order", "pixel_range")
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
MAX_IMAGE_SIDE = 4096  # input_size and resize bound: a crafted config must not make eval allocate gigabytes


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_preprocessing(cfg: Mapping, where: str = "checkpoint") -> None:
    """Raise a CheckpointError naming the first preprocessing value of ``cfg`` that cannot be right."""

    def fail(key: str, expected: str):
        raise CheckpointError(f"{where}: pretrained_cfg {key} = {cfg[key]!r:.80} should be {expected}")

    size = cfg.get("input_size")
    if "input_size" in cfg and not (
        isinstance(size, (list, tuple))
        and len(size) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        and 1 <= size[0] <= 4
        and all(1 <= v <= MAX_IMAGE_SIDE for v in size[1:])
    ):
        fail("input_size", f"(channels 1-4, height, width) with sides of 1-{MAX_IMAGE_SIDE} pixels")
    crop_pct = cfg.get("crop_pct")
    if "crop_pct" in cfg and not (_is_number(crop_pct) and 0 < crop_pct <= 1.0):
        fail("crop_pct", "a number in (0, 1]")
    if "crop_pct" in cfg and size and size[-1] / crop_pct > MAX_IMAGE_SIDE:
        fail("crop_pct", f"large enough that the resize stays under {MAX_IMAGE_SIDE} pixels")
    channels = size[0] if size else 3
    for key in ("mean", "std"):
        v = cfg.get(key)
        if key in cfg and not (isinstance(v, (list, tuple)) and len(v) == channels and all(map(_is_number, v))):
            fail(key, f"{channels} numbers, one per input channel")
    if "std" in cfg and not all(v > 0 for v in cfg["std"]):
        fail("std", "positive")
    if "interpolation" in cfg and cfg["interpolation"] not in INTERPOLATIONS:
        fail("interpolation", f"one of {', '.join(INTERPOLATIONS)}")
    if "channel_order" in cfg and cfg["channel_order"] not in ("RGB", "BGR"):
        fail("channel_order", "RGB or BGR")
    if "pixel_range" in cfg and cfg["pixel_range"] not in (1.0, 255.0):
        fail("pixel_range", "1.0 or 255.0")


def check_class_names(names, num_classes: int, where: str = "checkpoint") -> None:
    """Class names must be printable strings, one per output of the classifier (None: unnamed)."""
    if names is None:
        return
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}: class_names should be a list of strings")
    if len(names) != num_classes:
        raise CheckpointError(f"{where}: {len(names)} class names for a classifier of {num_classes} classes")
    bad = next((n for n in names if not n or not n.isprintable()), None)
    if bad is not None:
        raise CheckpointError(f"{where}: class name {ascii(bad)[:80]} is not printable text")
