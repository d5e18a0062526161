"""What the shared-bases architectures share: the family name, the base model (timm's head contract and the
paper's orthogonality regulariser), the base of the ResNet-like models, the official-checkpoint filter, and the
helpers of the default configs (the README rows and the datasets' preprocessing)."""

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoint import CheckpointError
from ...layers import SharedBasisConv2d, basis_similarity, create_global_pool, refer_to
from .._features import FeatureStages
from .._registry import IMAGENET_MEAN, IMAGENET_STD, model_cfg

FAMILY = "shared-bases"


def check_ranks(shared_rank: int, unique_rank: int) -> None:
    if shared_rank < 1 or unique_rank < 1:
        raise ValueError(f"shared_rank and unique_rank must be >= 1, got {shared_rank} and {unique_rank}")


# --- blocks -----------------------------------------------------------------------------------------------


class GlobalAvgPool(nn.Module):
    """Global average pooling as a function call, as the official ResNeXt and MobileNetV2 pool (ptflops, the
    README's counter, counts pooling modules only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1)


# --- models -----------------------------------------------------------------------------------------------


class SharedBasisNet(FeatureStages, nn.Module):
    """What the family's models share: the orthogonality regulariser and the timm head contract.

    Subclasses set ``basis_groups`` (a list of the shared bases regularised together, one tuple per residual
    group, dense block or stage), ``regularize_unique``, ``classifier_name`` and ``num_features``, then call
    :meth:`reset_classifier`.
    """

    classifier_name = "fc"
    regularize_unique = False

    def _global_pool(self) -> nn.Module:
        return nn.AdaptiveAvgPool2d(1)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier; ``num_classes=0`` gives pooled features, with ``global_pool=''`` the unpooled map."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool, self.flatten = create_global_pool(global_pool, type(self).__name__, self._global_pool)
        setattr(self, self.classifier_name, self._classifier(num_classes) if num_classes > 0 else nn.Identity())
        # forward_head calls it as `head` (TorchScript needs a fixed name); saved once, under its official name
        refer_to(self, "head", self.get_classifier())

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.global_pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def unique_bases(self) -> list[list[torch.Tensor]]:
        """Per group of :attr:`basis_groups`, the unique filters of the layers that use its shared bases, in
        block order."""
        group_of = {id(basis): i for i, group in enumerate(self.basis_groups) for basis in group}
        unique = [[] for _ in self.basis_groups]
        for m in self.modules():
            if isinstance(m, SharedBasisConv2d):
                unique[group_of[id(m.shared)]].append(m.weight)
        return unique

    def orthogonality_terms(self) -> tuple[torch.Tensor, int]:
        """Sum and count of the selected ``(B B^T - I)^2`` entries over all groups of bases.

        Per group, the shared bases are stacked jointly (DoubleShared's two bases must also be orthogonal to
        each other); with ``regularize_unique`` (the CIFAR-10 script) every later block's unique filters join
        them. See :func:`~compactnets.layers.basis_similarity` for the entries selected.
        """
        total, count = 0.0, 0
        unique = self.unique_bases() if self.regularize_unique else [[] for _ in self.basis_groups]
        for group, group_unique in zip(self.basis_groups, unique, strict=True):
            similarity, n = basis_similarity([b.weight for b in group], group_unique)
            total, count = total + similarity, count + n
        return total, count

    def auxiliary_loss(self) -> torch.Tensor:
        """The orthogonality regulariser: the mean of all selected entries (times ``--aux-loss-weight``, the
        official ``--lambdaR`` = 10, it joins the training loss)."""
        total, count = self.orthogonality_terms()
        return total / count

    def official_aliases(self) -> dict[str, str]:
        """Official state-dict keys of the per-block copies of each shared basis -> this model's key."""
        root = {id(module): name for name, module in self.named_children()}
        aliases = {}
        for path, module in self.named_modules():
            if hasattr(module, "official_shared_bases"):
                for attr, basis in module.official_shared_bases().items():
                    aliases[f"{path}.{attr}.weight"] = f"{root[id(basis)]}.weight"
        return aliases


class ResidualGroupNet(SharedBasisNet):
    """A ResNet-like model: a stem (:meth:`_stem`), then residual groups ``layer1`` .. ``layer{num_groups}``,
    one per feature level; subclasses build the groups, then call :meth:`_pad_groups`."""

    MAX_GROUPS = 4  # forward_features calls layer1..layer4 (TorchScript needs the names); unused ones are nn.Identity

    def _pad_groups(self, num_groups: int) -> None:
        for g in range(num_groups + 1, self.MAX_GROUPS + 1):
            self.add_module(f"layer{g}", nn.Identity())
        self.num_groups = num_groups

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self._stem(x)))))

    def _feature_steps(self) -> tuple[list[Callable[[torch.Tensor], torch.Tensor]], list[int]]:
        """The stem, then one residual group per feature level."""
        groups = range(1, self.num_groups + 1)
        return [self._stem, *(getattr(self, f"layer{g}") for g in groups)], list(groups)

    def _prune_after(self, level: int) -> None:
        for g in range(level + 2, self.num_groups + 1):
            setattr(self, f"layer{g}", nn.Identity())


# --- official checkpoints ---------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SharedBasisNet) -> dict[str, torch.Tensor]:
    """An official Net_RL2 state dict (``net_state_dict``, ``module.`` already stripped) -> this model's.

    The official blocks register the shared bases they use as their own children too, so the state dict repeats
    each basis under every block (``layer2.3.shared_basis.weight``, ``layer2.3.shared_basis_1.weight``,
    ``stage4.1.shared_basis1.weight``, ...). Those copies are what the blocks run: all copies of one basis must
    be equal, and they become the model's single tensor. A top-level basis that differs from its blocks' copies
    is not used by the official forward (DenseNet's ``shared_basis_4``): it is replaced, with a warning.
    """
    out = dict(state_dict)
    copies: dict[str, tuple[str, torch.Tensor]] = {}
    for alias, key in model.official_aliases().items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if key not in copies:
            copies[key] = (alias, value)
        elif not (value.shape == copies[key][1].shape and torch.equal(value, copies[key][1])):
            raise CheckpointError(
                f"{alias!r} and {copies[key][0]!r} are copies of one shared basis ({key!r}) but differ: "
                "the checkpoint does not come from this architecture"
            )
    for key, (alias, value) in copies.items():
        if key in out and not (out[key].shape == value.shape and torch.equal(out[key], value)):
            warnings.warn(f"official {key!r} is not the basis its blocks run; using their copy {alias!r}", stacklevel=2)
        out[key] = value
    return out


# --- default configs --------------------------------------------------------------------------------------

README = "ssregibility/Net_RL2 README.md @f98cd9d"
README_JUN = "ssregibility/Net_RL2 README.md @740baba (June 2020)"
CIFAR100_MEAN, CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)

DATASETS = {
    # The official CIFAR-10 pipeline normalises with ImageNet statistics.
    "cifar10": dict(
        num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD
    ),
    "cifar100": dict(
        num_classes=100, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0, mean=CIFAR100_MEAN, std=CIFAR100_STD
    ),
    "imagenet": dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation="bilinear"
    ),
}
_TRAINING = {
    "cifar10": "train_cifar10.py: 300 epochs, lr 0.1 x0.1 after 150 and 225, best test epoch "
    "(recipe shared_bases_cifar10)",
    "cifar100": "train_cifar100.py: 150 + 75 + 75 epochs restarting from the best checkpoint, best test epoch "
    "(recipe shared_bases_cifar100)",
    "imagenet": "train_ilsvrc.py, best validation epoch (recipes shared_bases_resnet34_imagenet, "
    "shared_bases_mobilenetv2_imagenet)",
}


def family_cfg(dataset: str, first_conv: str = "conv1", classifier: str = "fc", **kwargs) -> dict:
    """A default config of the family: the paper, the source, the dataset's preprocessing and the official
    training (as notes), updated with ``kwargs``."""
    return model_cfg(
        dataset=dataset,
        first_conv=first_conv,
        classifier=classifier,
        paper="Learning Deeply Shared Filter Bases for Efficient ConvNets (arXiv 2006.05066)",
        source="https://github.com/ssregibility/Net_RL2 @f98cd9d",
        notes=_TRAINING[dataset],
        **{**DATASETS[dataset], **kwargs},
    )


def readme_ref(
    params: str, flops: str, top1_err: float, top5_err: float | None = None, source=README, notes=""
) -> dict:
    """A README row: 'FLOPs' are 2 x ptflops GMac; errors become accuracies."""
    ref = dict(params=params, macs=flops, macs_convention="ptflops_x2", top1=round(100 - top1_err, 2), source=source)
    if top5_err is not None:
        ref["top5"] = round(100 - top5_err, 2)
    return ref | ({"notes": notes} if notes else {})
