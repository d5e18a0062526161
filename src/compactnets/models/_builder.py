"""Building a model from its config and weights, as timm's ``_builder``: the config of a resized classifier, the
feature extractor."""

from __future__ import annotations

import copy

from torch import nn

from ..errors import ModelArgumentError

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
