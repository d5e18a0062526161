"""Creating models by name, as timm's ``_factory``: :func:`create_model`, and ``--model-kwargs`` parsed against the
constructor's signature."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from torch import nn

from ..errors import ModelArgumentError
from ._builder import Checkpoint, build_model_with_cfg
from ._registry import bundled_weights_file, model_entry, resolve_tag, split_model_name_tag

_WORDS = {"true": True, "false": False, "none": None, "null": None}  # as YAML/JSON users write them


def _literal(text: str):
    if text.strip().lower() in _WORDS:
        return _WORDS[text.strip().lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text  # a bare word: a string


def _type_name(annotation) -> str:
    if isinstance(annotation, type) and get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def _matches(value, annotation) -> bool:
    """Whether ``value`` (a Python literal) is of the annotated type; unknown annotations accept anything."""
    if annotation in (inspect.Parameter.empty, Any):
        return True
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation in (int, float, bool, str):
        if isinstance(value, bool):  # bool is an int subclass: True is not a width
            return annotation is bool
        return isinstance(value, (int, float) if annotation is float else annotation)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_matches(v, args[0]) for v in value)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _constructor_signature(name: str) -> tuple[dict[str, inspect.Parameter], dict] | None:
    """The keyword arguments of the class a registered constructor returns, with their type hints;
    None when they cannot be known (no return annotation, or the class takes ``**kwargs``)."""
    try:
        cls = get_type_hints(model_entry(name).fn).get("return")
        if not isinstance(cls, type):
            return None
        params = inspect.signature(cls.__init__).parameters
        hints = get_type_hints(cls.__init__)
    except (NameError, TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: p for k, p in params.items() if k != "self" and p.kind in keywords}, hints


def parse_model_kwargs(items: list[str], model: str | None = None) -> dict:
    """``["channels=[48, 40]", "binary=false"]`` -> ``{"channels": [48, 40], "binary": False}``.

    Values are Python literals (``true``/``false``/``none`` in any case too; anything else is a string). With
    ``model``, each key must be an argument of its constructor and each value of that argument's type.
    """
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ModelArgumentError(f"--model-kwargs takes KEY=VALUE items, got {item!r}")
        kwargs[key] = _literal(value)
    signature = _constructor_signature(model) if model and kwargs else None
    if signature:
        params, hints = signature
        for key, value in kwargs.items():
            if key not in params:
                raise ModelArgumentError(f"{model} takes no argument {key!r}; it takes {', '.join(params)}")
            annotation = hints.get(key, inspect.Parameter.empty)
            if not _matches(value, annotation):
                raise ModelArgumentError(
                    f"--model-kwargs {key}={value!r}: {model} expects {_type_name(annotation)} for {key}"
                )
    return kwargs


def create_model(
    name: str,
    pretrained: bool | str | Path = False,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: int | tuple[int, ...] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model, as ``timm.create_model`` does.

    Args:
        name: a name from :func:`list_models`, optionally with a pretrained tag (``'nin_xnornet.cifar10'``).
        pretrained: ``False``; ``True`` for the weights bundled with the package for the (default) tag; or a
            path: a compactnets checkpoint (its ``model_kwargs``, from ``compactnets convert --model-kwargs``,
            are applied), or any ``.pth`` / ``.safetensors`` file holding a state dict in this model's layout.
        num_classes: classifier width; defaults to the config's. With pretrained weights, another width (0: no
            classifier) drops the pretrained classifier, the new one keeps its initialisation.
        features_only: return timm's feature extractor (a list of the ``feature_info`` maps; needs timm).
        out_indices: the ``feature_info`` levels it returns (default: all).
        **kwargs: passed to the model constructor (``in_chans``: pretrained first-conv weights are adapted as
            timm's ``adapt_input_conv`` does; ``global_pool``; family options).
    """
    entry, cfg = resolve_tag(name)
    checkpoint = None
    if pretrained:
        checkpoint = Checkpoint.read(bundled_weights_file(name) if pretrained is True else pretrained)
        kwargs = {**checkpoint.model_kwargs, **kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    arch = split_model_name_tag(name)[0]
    return build_model_with_cfg(entry, cfg, arch, kwargs, checkpoint, features_only, out_indices)
