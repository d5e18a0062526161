"""Model families and the API over them; importing this package registers every model.

``_registry`` stores constructors and configs, ``_factory`` creates models by name, ``_builder`` builds them from
configs and checkpoints. Family modules import ``_registry`` only, so the store never imports a family.
"""

from . import micronet, nin, shared_bases, shufflenetv2
from ._builder import Checkpoint, dataset_class_names
from ._factory import create_model, parse_model_kwargs
from ._registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TableRow,
    bundled_weights_file,
    get_converter,
    get_model_cfg,
    is_model,
    list_families,
    list_models,
    model_family,
    pretrained_tags,
    published_tables,
    split_model_name_tag,
)

__all__ = [
    "Checkpoint",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TableRow",
    "bundled_weights_file",
    "create_model",
    "dataset_class_names",
    "get_converter",
    "get_model_cfg",
    "is_model",
    "list_families",
    "list_models",
    "micronet",
    "model_family",
    "nin",
    "parse_model_kwargs",
    "pretrained_tags",
    "published_tables",
    "shared_bases",
    "shufflenetv2",
    "split_model_name_tag",
]
