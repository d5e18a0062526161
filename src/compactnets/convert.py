"""Official checkpoints -> compactnets checkpoints, through each family's registered converter."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    extract_state_dict,
    load_file,
    load_state_dict_checked,
    save_atomic,
)
from .data import class_names
from .models import create_model, get_converter, get_model_cfg, model_family


def convert_checkpoint(
    family: str, model_name: str, src: str | Path, dst: str | Path, model_kwargs: dict | None = None
) -> dict:
    """Read ``src`` (an official checkpoint of ``family``), load it strictly into ``model_name`` (built with
    ``model_kwargs``) and write a compactnets checkpoint to ``dst`` that ``eval``/``predict`` take."""
    converter = get_converter(family)
    if model_family(model_name) != family:
        raise CheckpointError(f"model {model_name!r} belongs to family {model_family(model_name)!r}, not {family!r}")
    src = Path(src)
    raw = converter.reader(src) if converter.reader else load_file(src)
    state_dict = extract_state_dict(raw)
    cfg = get_model_cfg(model_name)
    classifier = state_dict.get(cfg["classifier"] + ".weight") if cfg["classifier"] else None
    num_classes = classifier.shape[0] if classifier is not None else None
    model_kwargs = {**converter.model_kwargs.get(model_name, {}), **(model_kwargs or {})}
    model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    state_dict = converter.filter_fn(state_dict, model)
    load_state_dict_checked(model, state_dict, what=f"official checkpoint {src}")
    names = class_names(model.pretrained_cfg["dataset"])
    checkpoint = {
        "version": CHECKPOINT_VERSION,
        "arch": model_name,
        "model_kwargs": model_kwargs,
        "state_dict": model.state_dict(),
        "pretrained_cfg": model.pretrained_cfg,
        "class_names": list(names) if names and len(names) == model.num_classes else None,
        "converted_from": {"family": family, "file": src.name},
    }
    save_atomic(checkpoint, dst)
    return {"model": model_name, "tensors": len(state_dict), "num_classes": model.num_classes, "output": str(dst)}
