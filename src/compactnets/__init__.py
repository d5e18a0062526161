"""compactnets: efficient ConvNets (WeightNet/ShuffleNetV2, MicroNet, shared filter bases, XNOR-Net) in PyTorch.

The package imports torch only when first used (``compactnets.create_model``, a submodule), so that
``compactnets --help`` and ``--version`` start at once.
"""

import importlib.util

from . import timm_bridge

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "get_model_cfg", "list_families", "list_models"]
_MODELS_API = {"create_model", "get_model_cfg", "list_families", "list_models"}


def __getattr__(name: str):
    if name in _MODELS_API:
        from . import models

        return getattr(models, name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # `compactnets.data` without importing it
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


timm_bridge.install()
