"""The global pooling in front of a classifier, for the models' ``reset_classifier`` (as timm's ``ClassifierHead``
builds it; timm is optional here, so its layer cannot be used).

timm's head contract names the pooling: ``'avg'`` pools to 1x1 and flattens, ``''`` keeps the unpooled map (with
``num_classes=0``, ``forward`` then returns ``forward_features``). Both halves hold no parameters or buffers, so
the models' state dicts, and the official checkpoint layouts they load, do not depend on the choice.
"""

from collections.abc import Callable

from torch import nn

GLOBAL_POOL_TYPES = ("avg", "")


def create_global_pool(
    pool_type: str, model_name: str, pool_layer: Callable[[], nn.Module] | None = None
) -> tuple[nn.Module, nn.Module]:
    """The ``(global_pool, flatten)`` pair of a head: ``pool_layer()`` (default ``nn.AdaptiveAvgPool2d(1)``) and
    ``nn.Flatten(1)`` for ``'avg'``, two ``nn.Identity`` for ``''``.

    Args:
        pool_type: ``'avg'`` or ``''``; anything else is a ``ValueError`` naming ``model_name``.
        model_name: the model family, for the error message.
        pool_layer: builds the pooling module when a model must pool another way (e.g. functionally, for a
            module-hook FLOP counter that should not see it).
    """
    if pool_type not in GLOBAL_POOL_TYPES:
        raise ValueError(f"{model_name} supports global_pool 'avg' or '', not {pool_type!r}")
    if not pool_type:
        return nn.Identity(), nn.Identity()
    return (pool_layer() if pool_layer is not None else nn.AdaptiveAvgPool2d(1)), nn.Flatten(1)
