"""The model store: registered constructors, their default configs and pretrained tags, and converters, as timm's
``_registry``.

A family module (``compactnets/models/<family>.py``) defines ``FAMILY``, a ``default_cfgs`` dict built with
:func:`model_cfg`, and one thin constructor per variant decorated with :func:`register_model`; the constructor's
name is the model name. Official-checkpoint converters register per family with :func:`register_converter`.

Pretrained tags work as timm's: ``default_cfgs`` keys are ``arch`` or ``arch.tag``; ``arch`` alone means its
default tag (one ending in ``*``, else the first with weights, else the first). A cfg has weights when its
``file`` (relative to the package) is set; ``create_model('arch.tag', pretrained=True)`` loads it. The weights
compactnets trained itself are data, not code: each entry of ``weights/manifest.json`` adds its ``arch.tag``.
A family also registers the published tables it reproduces (:func:`register_table`).
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import functools
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..errors import UnknownModelError

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


PACKAGE = Path(__file__).resolve().parents[1]
# The weights compactnets trained and ships: ``arch.tag`` -> recipe, epochs, top1, top5 (tools/ship_weights.py).
SHIPPED_MANIFEST = PACKAGE / "weights" / "manifest.json"


@functools.cache
def shipped_weights() -> dict[str, dict]:
    return json.loads(SHIPPED_MANIFEST.read_text())


def _shipped_cfg(base: dict, name: str, recipe: str, epochs: int, top1: float, top5: float) -> dict:
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
class ModelEntry:
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


@dataclass(frozen=True)
class TableRow:
    """A row of a published table, as ``compactnets reproduce`` trains it."""

    name: str  # the run folder's name, unless the row measures another row's run
    recipe: str
    model: str | None = None  # overrides the recipe's model
    options: tuple[str, ...] = ()  # train options after the recipe's (an ablation's row turns a lever off)
    run: str | None = None  # an earlier row of the table, trained alike, whose run this row measures
    view: tuple[str, str] | None = None  # (weights, bn) of the run's final views: ("raw", "running"), ...


_models: dict[str, ModelEntry] = {}
_converters: dict[str, Converter] = {}
_tables: dict[str, tuple[TableRow, ...]] = {}


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
    base = cfgs.get("", next(iter(cfgs.values())))
    # the best-measured shipped weights first: with no tag marked, they are the default (``create_model(name,
    # pretrained=True)``, torch.hub, timm)
    for key, shipped in sorted(shipped_weights().items(), key=lambda item: -item[1]["top1"]):
        arch, tag = split_model_name_tag(key)
        if arch == name:
            cfgs[tag] = _shipped_cfg(base, key, **shipped)
    if name in _models:
        raise RuntimeError(f"model {name!r} is registered twice ({_models[name].fn.__module__}, {fn.__module__})")
    for tag, cfg in cfgs.items():
        cfg["tag"] = tag.rstrip("*")
    _models[name] = ModelEntry(fn, module.FAMILY, _order_tags(cfgs))
    return fn


def register_converter(family: str, filter_fn, reader=None, model_kwargs: Mapping[str, dict] | None = None) -> None:
    """The preprocessing official weights expect belongs in the models' default configs, which ``convert``
    saves with the weights; ``model_kwargs`` gives, per model, the options that reproduce the official model."""
    _converters[family] = Converter(family, filter_fn, reader, dict(model_kwargs or {}))


def register_table(name: str, rows: list[TableRow]) -> None:
    """A published table the family reproduces (``compactnets reproduce NAME``): a row per recipe it trains."""
    if name in _tables:
        raise RuntimeError(f"table {name!r} is registered twice")
    trained = {}
    for row in rows:
        if (row.run is None) != (row.view is None):
            raise RuntimeError(f"row {row.name!r} of {name!r}: a view of another row's run names both, run and view")
        if row.run is None:
            trained[row.name] = row
            continue
        source = trained.get(row.run)
        if source is None or (source.recipe, source.model, source.options) != (row.recipe, row.model, row.options):
            raise RuntimeError(f"row {row.name!r} of {name!r} measures {row.run!r}: an earlier row trained alike")
    _tables[name] = tuple(rows)


def published_tables() -> dict[str, tuple[TableRow, ...]]:
    return dict(_tables)


def get_converter(family: str) -> Converter:
    if family not in _converters:
        raise ValueError(f"no converter for family {family!r}; known: {', '.join(sorted(_converters))}")
    return _converters[family]


def model_entry(name: str) -> ModelEntry:
    """The registered constructor, family and configs of ``name`` (``arch`` or ``arch.tag``)."""
    arch, _ = split_model_name_tag(name)
    if arch not in _models:
        close = difflib.get_close_matches(arch, list(_models), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (`compactnets list` shows all models)")
    return _models[arch]


def resolve_tag(name: str) -> tuple[ModelEntry, dict]:
    """The entry of ``name`` and the config of its tag (the default tag when none is given)."""
    entry = model_entry(name)
    _, tag = split_model_name_tag(name)
    tag = tag or entry.default_tag
    if tag not in entry.cfgs:
        known = ", ".join(f"{name.partition('.')[0]}.{t}" for t in entry.cfgs if t) or "none"
        raise UnknownModelError(f"unknown pretrained tag {name!r} (tags: {known})")
    return entry, entry.cfgs[tag]


def is_model(name: str) -> bool:
    return split_model_name_tag(name)[0] in _models


def list_models(pattern: str = "*", family: str | None = None, pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style pattern, optionally of one family, sorted. With
    ``pretrained``, the ``arch.tag`` names that have bundled weights (as timm's ``list_models(pretrained=True)``)."""
    names = []
    for arch, entry in _models.items():
        if family is not None and entry.family != family:
            continue
        if pretrained:
            names += [f"{arch}.{tag}" if tag else arch for tag, cfg in entry.cfgs.items() if cfg["file"]]
        else:
            names.append(arch)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_families() -> list[str]:
    return sorted({e.family for e in _models.values()})


def model_family(name: str) -> str:
    return model_entry(name).family


def get_model_cfg(name: str) -> dict:
    """The default config of ``name`` (``arch`` or ``arch.tag``)."""
    return copy.deepcopy(resolve_tag(name)[1])


def pretrained_tags(name: str) -> dict[str, dict]:
    """Every tag of the architecture ``name`` and its config, the default first."""
    return copy.deepcopy(model_entry(name).cfgs)


def bundled_weights_file(name: str) -> Path:
    """The weights file of ``name``'s (default) tag; a clear error when it has none."""
    entry, cfg = resolve_tag(name)
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
    return PACKAGE / cfg["file"]
