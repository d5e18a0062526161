"""compactnets: efficient ConvNets (WeightNet/ShuffleNetV2, MicroNet, shared filter bases, XNOR-Net) in PyTorch."""

from . import (
    models,  # noqa: F401  (registers the model families)
    timm_bridge,
)
from .registry import create_model, get_model_cfg, list_families, list_models

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "get_model_cfg", "list_families", "list_models"]

timm_bridge.install()
