"""Model registry and default configs, following timm's contract.

A family module (``compactnets/models/<family>.py``) defines ``FAMILY``, a ``default_cfgs`` dict built with
:func:`model_cfg`, and one thin constructor per variant decorated with :func:`register_model`; the constructor's
name is the model name. Official-checkpoint converters register per family with :func:`register_converter`.
"""

from __future__ import annotations

import ast
import copy
import difflib
import fnmatch
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from torch import nn

from .errors import ModelArgumentError, UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CFG_DEFAULTS = dict(
    dataset="imagenet",  # the data the published figures come from; names the class labels
    num_classes=1000,
    input_size=(3, 224, 224),
    # Eval preprocessing: resize the shorter side to int(crop / crop_pct), then center-crop (timm semantics).
    crop_pct=0.875,
    interpolation="bilinear",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    channel_order="RGB",  # or "BGR" (OpenCV/MegEngine-trained weights)
    pixel_range=1.0,  # 1.0: pixels scaled to 0-1 before mean/std; 255.0: raw 0-255 values
    first_conv="",
    classifier="",
    file=None,  # bundled weights, relative to the package (none are bundled yet)
    # Published figures, shown beside measured ones by `compactnets profile`. params/macs are the strings as
    # printed by the paper or README; macs_convention names the counting rule that reproduces them.
    reference={},
    paper="",
    source="",
    notes="",
)
_REFERENCE_KEYS = {"params", "macs", "macs_convention", "top1", "top5", "source", "notes"}


def model_cfg(**kwargs) -> dict:
    """A default config: the defaults above updated with ``kwargs`` (unknown keys are an error)."""
    unknown = set(kwargs) - set(_CFG_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown model config keys: {sorted(unknown)}")
    bad_ref = set(kwargs.get("reference", {})) - _REFERENCE_KEYS
    if bad_ref:
        raise TypeError(f"unknown reference keys: {sorted(bad_ref)}")
    cfg = copy.deepcopy(_CFG_DEFAULTS)
    cfg.update(copy.deepcopy(kwargs))
    return cfg


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    family: str
    cfg: dict


@dataclass(frozen=True)
class Converter:
    """How to turn a family's official checkpoint into a compactnets state dict."""

    family: str
    filter_fn: Callable[[dict, nn.Module], dict]  # (cleaned official state dict, model) -> model state dict
    reader: Callable[[Path], dict] | None = None  # file -> official state dict; default: torch.load


_models: dict[str, _Entry] = {}
_converters: dict[str, Converter] = {}


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
        cls = get_type_hints(_entry(name).fn).get("return")
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


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a constructor under its function name with its module's ``default_cfgs[name]``."""
    module = sys.modules[fn.__module__]
    name = fn.__name__
    cfgs = getattr(module, "default_cfgs", {})
    if name not in cfgs:
        raise RuntimeError(f"{fn.__module__} has no default_cfgs[{name!r}]")
    if name in _models:
        raise RuntimeError(f"model {name!r} is registered twice ({_models[name].fn.__module__}, {fn.__module__})")
    _models[name] = _Entry(fn, module.FAMILY, cfgs[name])
    return fn


def register_converter(family: str, filter_fn, reader=None) -> None:
    """The preprocessing official weights expect belongs in the models' default configs, which ``convert``
    saves with the weights."""
    _converters[family] = Converter(family, filter_fn, reader)


def get_converter(family: str) -> Converter:
    _families_loaded()
    if family not in _converters:
        raise ValueError(f"no converter for family {family!r}; known: {', '.join(sorted(_converters))}")
    return _converters[family]


def _families_loaded() -> dict[str, _Entry]:
    """The registry, once every family module has registered its models (imported on first use)."""
    from . import models  # noqa: F401

    return _models


def _entry(name: str) -> _Entry:
    _families_loaded()
    if name not in _models:
        close = difflib.get_close_matches(name, list(_models), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (`compactnets list` shows all models)")
    return _models[name]


def is_model(name: str) -> bool:
    return name in _families_loaded()


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names matching a shell-style pattern, optionally of one family, sorted."""
    models = _families_loaded()
    return sorted(
        n for n, e in models.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )


def list_families() -> list[str]:
    return sorted({e.family for e in _families_loaded().values()})


def model_family(name: str) -> str:
    return _entry(name).family


def get_model_cfg(name: str) -> dict:
    return copy.deepcopy(_entry(name).cfg)


def create_model(
    name: str,
    pretrained: bool | str | Path = False,
    num_classes: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        pretrained: ``False``; a path to a checkpoint (compactnets, or any file holding a state dict in this
            model's layout); or ``True`` for the weights bundled with the package.
        num_classes: classifier width; defaults to the model's config. A pretrained classifier of another
            width is dropped and the new one left at its initialisation.
        **kwargs: passed to the model constructor.
    """
    entry = _entry(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = entry.fn(**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ModelArgumentError(f"{name}: {e}") from e
    model.pretrained_cfg = copy.deepcopy(entry.cfg)
    model.pretrained_cfg["architecture"] = name
    if num_classes is not None:
        model.pretrained_cfg["num_classes"] = num_classes
    if pretrained:
        from .checkpoint import load_pretrained

        if pretrained is True:
            if not entry.cfg["file"]:
                notes = f". Model notes: {entry.cfg['notes']}" if entry.cfg["notes"] else ""
                raise ValueError(
                    f"compactnets bundles no weights for {name!r}: convert an official checkpoint with `compactnets "
                    f"convert --family {entry.family} --model {name} <official file> {name}.pth` (or train one) and "
                    f"pass pretrained='{name}.pth'{notes}"
                )
            pretrained = Path(__file__).parent / entry.cfg["file"]
        load_pretrained(model, pretrained)
    return model
