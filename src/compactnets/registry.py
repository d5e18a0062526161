"""Model registry and default configs, following timm's contract.

A family module (``compactnets/models/<family>.py``) defines ``FAMILY``, a ``default_cfgs`` dict built with
:func:`model_cfg`, and one thin constructor per variant decorated with :func:`register_model`; the constructor's
name is the model name. Official-checkpoint converters register per family with :func:`register_converter`.

Pretrained tags work as timm's: ``default_cfgs`` keys are ``arch`` or ``arch.tag``; ``arch`` alone means its
default tag (one ending in ``*``, else the first with weights, else the first). A cfg has weights when its
``file`` (relative to the package) is set; ``create_model('arch.tag', pretrained=True)`` loads it.
"""

from __future__ import annotations

import ast
import copy
import difflib
import fnmatch
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
    pool_size=None,  # (H, W) of forward_features at input_size
    file=None,  # bundled weights of this tag, relative to the package (.safetensors or .pth)
    # How the bundled weights were made and what they measure: recipe, epochs, data, top1, top5, eval, notes.
    training={},
    # Published figures, shown beside measured ones by `compactnets profile`. params/macs are the strings as
    # printed by the paper or README; macs_convention names the counting rule that reproduces them.
    reference={},
    paper="",
    source="",
    notes="",
)
_REFERENCE_KEYS = {"params", "macs", "macs_convention", "top1", "top5", "source", "notes"}
_TRAINING_KEYS = {"recipe", "epochs", "data", "top1", "top5", "eval", "command", "notes"}


def model_cfg(**kwargs) -> dict:
    """A default config: the defaults above updated with ``kwargs`` (unknown keys are an error)."""
    unknown = set(kwargs) - set(_CFG_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown model config keys: {sorted(unknown)}")
    bad_ref = set(kwargs.get("reference", {})) - _REFERENCE_KEYS
    if bad_ref:
        raise TypeError(f"unknown reference keys: {sorted(bad_ref)}")
    bad_training = set(kwargs.get("training", {})) - _TRAINING_KEYS
    if bad_training:
        raise TypeError(f"unknown training keys: {sorted(bad_training)}")
    cfg = copy.deepcopy(_CFG_DEFAULTS)
    cfg.update(copy.deepcopy(kwargs))
    return cfg


CIFAR10_JPEG = "../shared/data/cifar10: the CIFAR-10 test set re-encoded as JPEG quality 75 (10,000 images)"


def shipped_cfg(base: dict, name: str, recipe: str, epochs: int, top1: float, top5: float) -> dict:
    """The config of weights trained by compactnets and shipped as ``weights/<name>.safetensors`` (``name`` is
    ``arch.tag``): ``base`` with the file and how it was trained; ``top1``/``top5`` as ``compactnets eval`` measures
    them on the CIFAR-10 test set of ../shared/data (fp32, channels-last)."""
    arch = name.partition(".")[0]
    return {
        **copy.deepcopy(base),
        "file": f"weights/{name}.safetensors",
        "training": dict(
            recipe=recipe,
            epochs=epochs,
            data=CIFAR10_JPEG,
            top1=top1,
            top5=top5,
            eval=f"compactnets eval --model {name} --pretrained --data ../shared/data/cifar10",
            command=f"compactnets train --recipe {recipe} --data ../shared/data/cifar10",
            notes=f"a shortened schedule: {epochs} epochs on a 2-core CPU; not the paper's run ({arch}'s reference)",
        ),
    }


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    family: str
    cfgs: dict[str, dict]  # by tag ('' for an untagged key), the default tag first

    @property
    def cfg(self) -> dict:
        return next(iter(self.cfgs.values()))

    @property
    def default_tag(self) -> str:
        return next(iter(self.cfgs))


@dataclass(frozen=True)
class Converter:
    """How to turn a family's official checkpoint into a compactnets state dict."""

    family: str
    filter_fn: Callable[[dict, nn.Module], dict]  # (cleaned official state dict, model) -> model state dict
    reader: Callable[[Path], dict] | None = None  # file -> official state dict; default: torch.load
    model_kwargs: Mapping[str, dict] = field(default_factory=dict)  # per model: constructor options to convert with


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


def split_model_name_tag(name: str) -> tuple[str, str]:
    """``'arch.tag'`` -> ``('arch', 'tag')``; ``'arch'`` -> ``('arch', '')``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def _order_tags(cfgs: dict[str, dict]) -> dict[str, dict]:
    """The default tag first: one marked ``*``, else the first with weights, else the first."""
    tags = list(cfgs)
    marked = [t for t in tags if t.endswith("*")]
    with_weights = [t for t in tags if cfgs[t]["file"]]
    default = (marked or with_weights or tags)[0]
    return {t.rstrip("*"): cfgs[t] for t in [default, *(t for t in tags if t != default)]}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a constructor under its function name with its module's ``default_cfgs[name]`` and
    ``default_cfgs['name.tag']`` entries."""
    module = sys.modules[fn.__module__]
    name = fn.__name__
    cfgs = {
        tag: cfg
        for key, cfg in getattr(module, "default_cfgs", {}).items()
        for arch, tag in [split_model_name_tag(key)]
        if arch == name
    }
    if not cfgs:
        raise RuntimeError(f"{fn.__module__} has no default_cfgs[{name!r}] (or {name!r}.<tag>)")
    if name in _models:
        raise RuntimeError(f"model {name!r} is registered twice ({_models[name].fn.__module__}, {fn.__module__})")
    for tag, cfg in cfgs.items():
        cfg["tag"] = tag.rstrip("*")
    _models[name] = _Entry(fn, module.FAMILY, _order_tags(cfgs))
    return fn


def register_converter(family: str, filter_fn, reader=None, model_kwargs: Mapping[str, dict] | None = None) -> None:
    """The preprocessing official weights expect belongs in the models' default configs, which ``convert``
    saves with the weights; ``model_kwargs`` gives, per model, the options that reproduce the official model."""
    _converters[family] = Converter(family, filter_fn, reader, dict(model_kwargs or {}))


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
    arch, _ = split_model_name_tag(name)
    if arch not in _models:
        close = difflib.get_close_matches(arch, list(_models), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (`compactnets list` shows all models)")
    return _models[arch]


def _tag_cfg(name: str) -> tuple[_Entry, dict]:
    entry = _entry(name)
    _, tag = split_model_name_tag(name)
    tag = tag or entry.default_tag
    if tag not in entry.cfgs:
        known = ", ".join(f"{name.partition('.')[0]}.{t}" for t in entry.cfgs if t) or "none"
        raise UnknownModelError(f"unknown pretrained tag {name!r} (tags: {known})")
    return entry, entry.cfgs[tag]


def is_model(name: str) -> bool:
    return split_model_name_tag(name)[0] in _families_loaded()


def list_models(pattern: str = "*", family: str | None = None, pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style pattern, optionally of one family, sorted. With
    ``pretrained``, the ``arch.tag`` names that have bundled weights (as timm's ``list_models(pretrained=True)``)."""
    names = []
    for arch, entry in _families_loaded().items():
        if family is not None and entry.family != family:
            continue
        if pretrained:
            names += [f"{arch}.{tag}" if tag else arch for tag, cfg in entry.cfgs.items() if cfg["file"]]
        else:
            names.append(arch)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_families() -> list[str]:
    return sorted({e.family for e in _families_loaded().values()})


def model_family(name: str) -> str:
    return _entry(name).family


def get_model_cfg(name: str) -> dict:
    """The default config of ``name`` (``arch`` or ``arch.tag``)."""
    return copy.deepcopy(_tag_cfg(name)[1])


def pretrained_tags(name: str) -> dict[str, dict]:
    """Every tag of the architecture ``name`` and its config, the default first."""
    return copy.deepcopy(_entry(name).cfgs)


def bundled_weights_file(name: str) -> Path:
    """The weights file of ``name``'s (default) tag; a clear error when it has none."""
    entry, cfg = _tag_cfg(name)
    if not cfg["file"]:
        arch = split_model_name_tag(name)[0]
        tagged = [f"{arch}.{t}" for t, c in entry.cfgs.items() if c["file"]]
        others = f" (tags with weights: {', '.join(tagged)})" if tagged else ""
        notes = f". Model notes: {cfg['notes']}" if cfg["notes"] else ""
        raise ValueError(
            f"compactnets bundles no weights for {name!r}{others}: convert an official checkpoint with `compactnets "
            f"convert --family {entry.family} --model {arch} <official file> {arch}.pth` (or train one) and "
            f"pass pretrained='{arch}.pth'{notes}"
        )
    return Path(__file__).parent / cfg["file"]


def cfg_for_num_classes(cfg: dict, num_classes: int) -> dict:
    """The config of a model whose classifier was replaced by one of ``num_classes`` (0: removed): the
    published and measured accuracies belong to the original classifier and are dropped."""
    if num_classes == cfg["num_classes"]:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg["num_classes"] = num_classes
    cfg["reference"] = {k: v for k, v in cfg["reference"].items() if k not in ("top1", "top5")}
    cfg["training"] = {k: v for k, v in cfg["training"].items() if k not in ("top1", "top5")}
    head = f"a new {num_classes}-class classifier" if num_classes else "no classifier"
    cfg["notes"] = f"{head} (accuracies of the {cfg['dataset']} model do not apply)" + (
        f"; {cfg['notes']}" if cfg["notes"] else ""
    )
    return cfg


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
    entry, cfg = _tag_cfg(name)
    arch, _ = split_model_name_tag(name)
    checkpoint = None
    if pretrained:
        from .checkpoint import read_weights

        source = bundled_weights_file(name) if pretrained is True else Path(pretrained)
        checkpoint = read_weights(source)
        kwargs = {**checkpoint.get("model_kwargs", {}), **kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = entry.fn(**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ModelArgumentError(f"{arch}: {e}") from e
    model.pretrained_cfg = cfg_for_num_classes(copy.deepcopy(cfg), model.num_classes)
    model.pretrained_cfg["architecture"] = arch
    model.default_cfg = model.pretrained_cfg  # timm's alias
    if checkpoint is not None:
        from .checkpoint import load_pretrained

        load_pretrained(model, checkpoint, what=f"checkpoint {source}")
    if features_only:
        model = feature_extractor(model, out_indices)
    return model


def feature_extractor(model: nn.Module, out_indices: int | tuple[int, ...] | None = None) -> nn.Module:
    """timm's ``FeatureGetterNet`` over ``model.forward_intermediates``: a list of the feature maps of the
    ``feature_info`` levels in ``out_indices`` (default: all), the unused layers pruned."""
    try:
        from timm.models._features import FeatureGetterNet
    except ImportError as e:
        raise ModelArgumentError("features_only=True uses timm's feature wrappers: pip install timm") from e
    if out_indices is None:
        out_indices = tuple(range(len(model.feature_info)))
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("num_classes", "classifier")}
    features = FeatureGetterNet(model, out_indices=out_indices)
    features.pretrained_cfg = features.default_cfg = cfg
    return features
