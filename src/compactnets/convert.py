"""Official checkpoints -> compactnets checkpoints, through each family's registered converter."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError, extract_state_dict, load_file, load_state_dict_checked
from .models import Checkpoint, create_model, dataset_class_names, get_converter, get_model_cfg, model_family


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
    official = Checkpoint(state_dict=extract_state_dict(raw), source=f"official checkpoint {src}")
    num_classes = official.classifier_width(get_model_cfg(model_name)["classifier"])
    model_kwargs = {**converter.model_kwargs.get(model_name, {}), **(model_kwargs or {})}
    model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    state_dict = converter.filter_fn(official.state_dict, model)
    load_state_dict_checked(model, state_dict, what=official.source)
    model.class_names = dataset_class_names(model)
    converted_from = {"family": family, "file": src.name}
    Checkpoint.of_model(model, model_kwargs=model_kwargs, training={"converted_from": converted_from}).save(dst)
    return {"model": model_name, "tensors": len(state_dict), "num_classes": model.num_classes, "output": str(dst)}
