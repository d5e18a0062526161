"""Building models from configs and checkpoints, as timm's ``_builder``.

:func:`build_model_with_cfg` is the one place a registered constructor runs: every model, named
(:func:`~compactnets.models.create_model`) or read from a file (:meth:`Checkpoint.build_model`), gets its config, its
weights and its feature wrapper here. :class:`Checkpoint` is the one checkpoint type: what a compactnets
checkpoint holds, read and validated from a file, written from a model, and turned into a model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import (
    CHECKPOINT_VERSION,
    PREPROCESSING_KEYS,
    SAFETENSORS_JSON_KEYS,
    STATE_DICT_KEYS,
    CheckpointError,
    check_class_names,
    check_preprocessing,
    extract_state_dict,
    load_state_dict_checked,
    plain,
    read_weights,
    save_atomic,
    save_safetensors,
)
from ..errors import ModelArgumentError
from ._registry import ModelEntry, resolve_tag, split_model_name_tag

_OWN_KEYS = ("version", "arch", "model_kwargs", "pretrained_cfg", "class_names", "state_dict_ema", *STATE_DICT_KEYS)


@dataclass
class Checkpoint:
    """A compactnets checkpoint: weights, the model they belong to, its preprocessing and class names.

    ``training`` holds everything else a file carries (a run's optimizer, epoch and RNG state, or where a converted
    checkpoint came from), unread here. A file from elsewhere is untrusted: :meth:`read` checks every field's type
    and value before anything is built from it.
    """

    state_dict: dict[str, torch.Tensor]
    arch: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    pretrained_cfg: dict = field(default_factory=dict)
    class_names: list[str] | None = None
    state_dict_ema: dict[str, torch.Tensor] | None = None
    training: dict = field(default_factory=dict)
    source: str = "checkpoint"  # names the file in every error

    @classmethod
    def read(cls, path: str | Path) -> Checkpoint:
        """A ``.pth`` (``weights_only=True``) or ``.safetensors`` file; a bare state dict is a checkpoint too."""
        return cls.from_dict(read_weights(path), source=f"checkpoint {path}")

    @classmethod
    def from_dict(cls, obj: Mapping, source: str = "checkpoint") -> Checkpoint:
        arch = obj.get("arch")
        if arch is not None and not isinstance(arch, str):
            raise CheckpointError(f"{source}: arch should be a model name")
        fields = {}
        for key in ("model_kwargs", "pretrained_cfg"):
            value = obj.get(key) or {}
            if not isinstance(value, Mapping):
                raise CheckpointError(f"{source}: {key} should be a dict")
            fields[key] = dict(value)
        check_preprocessing(fields["pretrained_cfg"], source)
        ema = obj.get("state_dict_ema")
        return cls(
            state_dict=extract_state_dict(obj),
            arch=arch,
            class_names=obj.get("class_names"),
            state_dict_ema=extract_state_dict(ema) if isinstance(ema, Mapping) else None,
            # a bare state dict's tensors are its weights, not training state
            training={k: v for k, v in obj.items() if k not in _OWN_KEYS and not isinstance(v, torch.Tensor)},
            source=source,
            **fields,
        )

    @classmethod
    def of_model(cls, model: nn.Module, ema: nn.Module | None = None, **kwargs) -> Checkpoint:
        """The checkpoint of ``model`` (and of its EMA), as built by :func:`build_model_with_cfg`; ``kwargs`` set
        the other fields (``model_kwargs``, ``training``, or ``class_names`` other than the model's)."""
        fields = dict(
            state_dict=model.state_dict(),
            arch=model.pretrained_cfg["architecture"],
            pretrained_cfg=model.pretrained_cfg,
            class_names=getattr(model, "class_names", None),
            state_dict_ema=ema.state_dict() if ema is not None else None,
        )
        return cls(**(fields | kwargs))

    def to_dict(self) -> dict:
        """The dict a checkpoint file holds: tensors and plain values only (``weights_only=True`` reads it)."""
        return {
            "version": CHECKPOINT_VERSION,
            "arch": self.arch,
            "model_kwargs": plain(self.model_kwargs),
            "state_dict": self.state_dict,
            **({"state_dict_ema": self.state_dict_ema} if self.state_dict_ema is not None else {}),
            "pretrained_cfg": plain(self.pretrained_cfg),
            "class_names": list(self.class_names) if self.class_names else None,
            **self.training,
        }

    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
        """Atomically. A ``.safetensors`` path gets what shipped weights hold: the weights, ``arch``, and
        ``model_kwargs`` and ``class_names`` as JSON, with ``metadata`` (provenance text) beside them; any other
        path the whole checkpoint."""
        if Path(path).suffix != ".safetensors":
            save_atomic(self.to_dict(), path)
            return
        own = {"arch": self.arch or ""} | {k: json.dumps(plain(getattr(self, k))) for k in SAFETENSORS_JSON_KEYS}
        save_safetensors(self.state_dict, {**(metadata or {}), **own}, path)

    def ema(self) -> Checkpoint:
        """The same checkpoint with the run's exponential moving average as its weights."""
        if self.state_dict_ema is None:
            raise CheckpointError(f"{self.source} holds no EMA weights (the run was trained without --model-ema)")
        return dataclasses.replace(self, state_dict=self.state_dict_ema)

    def classifier_width(self, classifier: str) -> int | None:
        """The number of classes the saved classifier ``classifier`` (a module path) outputs: read from its
        weights, so that a crafted ``num_classes`` cannot allocate a huge head."""
        weight = self.state_dict.get(f"{classifier}.weight") if classifier else None
        return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None

    def build_model(self, name: str | None = None) -> nn.Module:
        """The model this checkpoint was saved from (or ``name``), with exactly its weights, preprocessing and class
        names, in eval mode: what ``eval``, ``predict`` and a distillation teacher run."""
        name = name or self.arch
        if not name:
            raise CheckpointError(f"{self.source} does not name its model; pass --model")
        entry, cfg = resolve_tag(name)
        num_classes = self.classifier_width(cfg["classifier"]) or self.pretrained_cfg.get("num_classes")
        kwargs = {**self.model_kwargs, **({"num_classes": num_classes} if num_classes is not None else {})}
        model = build_model_with_cfg(entry, cfg, split_model_name_tag(name)[0], kwargs)
        self.load_exact(model)
        check_class_names(self.class_names, model.num_classes, self.source)
        model.class_names = list(self.class_names) if self.class_names else dataset_class_names(model)
        return model.eval()

    def load_exact(self, model: nn.Module) -> None:
        """Every tensor must fit (training's resume, ``eval``); the saved preprocessing replaces the model's."""
        load_state_dict_checked(model, self.state_dict, what=self.source)
        self._apply_preprocessing(model)

    def load_adapted(self, model: nn.Module) -> None:
        """Load as timm's ``load_pretrained`` adapts weights: the first conv to the model's input channels
        (``cfg['first_conv']``), and a classifier of another width, or none (``num_classes=0``), keeps the model's
        own. Everything else must fit exactly."""
        state_dict = _keep_own_classifier_if_resized(model, _adapt_input_conv(model, self.state_dict))
        load_state_dict_checked(model, state_dict, what=self.source)
        self._apply_preprocessing(model)

    def _apply_preprocessing(self, model: nn.Module) -> None:
        saved = {k: self.pretrained_cfg[k] for k in PREPROCESSING_KEYS if k in self.pretrained_cfg}
        model.pretrained_cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def build_model_with_cfg(
    entry: ModelEntry,
    cfg: dict,
    arch: str,
    kwargs: dict,
    pretrained: Checkpoint | None = None,
    features_only: bool = False,
    out_indices: int | tuple[int, ...] | None = None,
) -> nn.Module:
    """Run the registered constructor with ``kwargs``, attach the config (``pretrained_cfg``, timm's), load
    ``pretrained`` as timm adapts weights, and wrap in timm's feature extractor when ``features_only``."""
    try:
        model = entry.fn(**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ModelArgumentError(f"{arch}: {e}") from e
    model.pretrained_cfg = cfg_for_num_classes(copy.deepcopy(cfg), model.num_classes)
    model.pretrained_cfg["architecture"] = arch
    model.default_cfg = model.pretrained_cfg  # timm's alias
    if pretrained is not None:
        pretrained.load_adapted(model)
    if features_only:
        model = feature_extractor(model, out_indices)
    return model


def dataset_class_names(model: nn.Module) -> list[str] | None:
    """The class names of the dataset the model's config names, when they fit its classifier."""
    from ..data.classes import class_names  # not at import: the data package imports torchvision

    names = class_names(model.pretrained_cfg.get("dataset", ""))
    return list(names) if names and len(names) == model.num_classes else None


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """First-conv weights for ``in_chans`` input channels (timm's rule): summed over the channels for one,
    tiled and scaled by ``C / in_chans`` for more, so a constant image gives the same response."""
    channels = weight.shape[1]
    if in_chans == channels:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    repeats = -(-in_chans // channels)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (channels / in_chans)


def _adapt_input_conv(model: nn.Module, state_dict: dict) -> dict:
    first_conv = model.pretrained_cfg.get("first_conv")
    key = f"{first_conv}.weight" if first_conv else None
    own = model.state_dict().get(key) if key else None
    if own is None or key not in state_dict or state_dict[key].ndim != 4 or state_dict[key].shape[1] == own.shape[1]:
        return state_dict
    return {**state_dict, key: adapt_input_conv(state_dict[key], own.shape[1])}


def _keep_own_classifier_if_resized(model: nn.Module, state_dict: dict) -> dict:
    """Swap in the model's own classifier tensors when the checkpoint's classifier has another shape or the
    model has none (``num_classes=0``)."""
    head = model.get_classifier()
    prefix = next((name + "." for name, m in model.named_modules() if m is head and name), None)
    if prefix is None:
        return state_dict
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    theirs = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    if any(k not in own or own[k].shape != v.shape for k, v in theirs.items()):
        state_dict = {k: v for k, v in state_dict.items() if k not in theirs} | own
    return state_dict


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
