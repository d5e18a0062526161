"""Training engine: optimisation, schedules, recipes, the training loop, evaluation and prediction.

Names are imported on first use: ``compactnets list`` reads recipes without importing torchvision.
"""

import importlib

_EXPORTS = {
    "RecipeError": "recipes",
    "add_train_args": "train",
    "evaluate": "evaluate",
    "list_recipes": "recipes",
    "load_model": "evaluate",
    "predict_images": "evaluate",
    "read_recipe": "recipes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
