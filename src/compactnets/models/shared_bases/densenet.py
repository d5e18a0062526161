"""DenseNet-BC 121 with deeply shared filter bases (CIFAR-100).

Paper: Woochul Kang, Daeyeon Kim, "Learning Deeply Shared Filter Bases for Efficient ConvNets"
(arXiv 2006.05066). Source: ssregibility/Net_RL2 at f98cd9d, ``models/cifar100/densenet.py``
(``DenseNet121_SingleShared``).

Every bottleneck's 3x3 conv is ``cat(unique basis, shared basis) -> BN -> 1x1``, and all bottlenecks of a dense
block, its first included, share one basis; ranks are the same in every dense block.

Deliberate difference: the official constructor builds four shared bases but, through a stale loop index, its
last dense block runs ``shared_basis_3``, so ``shared_basis_4`` is never used (yet counted and regularised).
Here dense block k runs basis k by default, so trained from scratch block 4 has a basis of its own;
``official_basis_reuse=True`` reproduces the official model exactly (forward and regulariser, with the official
``shared_basis_4`` kept), and ``compactnets convert`` builds converted checkpoints that way.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import SharedBasisConv2d
from .._features import identity_after
from .._registry import register_model
from ._common import FAMILY as FAMILY  # register_model reads the module's FAMILY and default_cfgs
from ._common import SharedBasisNet, check_ranks, family_cfg, readme_ref

# DenseNet-BC 121 (CIFAR): every bottleneck's 3x3 conv takes 4 * growth channels and shares its dense block's basis.
DENSENET121_BLOCKS = (6, 12, 24, 16)
DENSENET_GROWTH = 32
DENSENET_REDUCTION = 0.5

# `compactnets convert` builds converted official DenseNets with the official basis reuse.
CONVERT_MODEL_KWARGS = {"densenet121_s16u1_cifar100": {"official_basis_reuse": True}}


# --- blocks -----------------------------------------------------------------------------------------------


class DenseBottleneck(nn.Module):
    """DenseNet-BC layer: BN -> ReLU -> 1x1 (4k) -> BN -> ReLU -> basis 3x3 (unique + shared) -> BN -> 1x1 (k),
    appended to its input."""

    def __init__(self, in_chs: int, growth: int, unique_rank: int, shared: nn.Conv2d):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, 4 * growth, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4 * growth)
        self.basis_conv2 = SharedBasisConv2d(4 * growth, unique_rank, shared)
        self.basis_bn2 = nn.BatchNorm2d(self.basis_conv2.out_channels)
        self.coeff_conv2 = nn.Conv2d(self.basis_conv2.out_channels, growth, 1, bias=False)

    def official_shared_bases(self) -> dict[str, nn.Conv2d]:
        return {"shared_basis": self.basis_conv2.shared}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn0(x), inplace=True)
        out = F.relu(self.bn1(self.conv1(out)), inplace=True)
        out = self.coeff_conv2(self.basis_bn2(self.basis_conv2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """DenseNet transition: BN -> 1x1 conv -> 2x2 average pool (no ReLU, as in the official code)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.down_sample = nn.Sequential(
            nn.BatchNorm2d(in_chs), nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.AvgPool2d(2, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_sample(x)


# --- model ------------------------------------------------------------------------------------------------


class SharedBasisDenseNet(SharedBasisNet):
    """DenseNet-BC whose dense blocks each share one 3x3 basis (``DenseNet_SingleShared``, CIFAR-100).

    Ranks are the same in every dense block. Stem: one 3x3 conv (2 x growth channels), no BN. PyTorch's
    default initialisation, as in the official code.

    ``official_basis_reuse=True`` reproduces the official model exactly: the last dense block runs the previous
    block's basis, and the last basis is kept (and regularised, as the official script does) but never used in
    the forward pass, so it only receives the regulariser's gradient. ``compactnets convert`` builds converted
    official checkpoints this way, so fine-tuning them follows the official training.
    """

    classifier_name = "linear"

    def __init__(
        self,
        blocks: Sequence[int] = DENSENET121_BLOCKS,
        growth: int = DENSENET_GROWTH,
        reduction: float = DENSENET_REDUCTION,
        shared_rank: int = 16,
        unique_rank: int = 1,
        official_basis_reuse: bool = False,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
    ):
        super().__init__()
        check_ranks(shared_rank, unique_rank)
        if official_basis_reuse and len(blocks) < 2:
            raise ValueError("official_basis_reuse needs at least two dense blocks")
        self.official_basis_reuse = official_basis_reuse
        chs = 2 * growth
        self.conv1 = nn.Conv2d(in_chans, chs, 3, padding=1, bias=False)
        self.features = nn.Sequential()  # registered before the bases, as in the official state dict
        bases = [nn.Conv2d(4 * growth, shared_rank, 3, padding=1, bias=False) for _ in blocks]
        self.feature_info = []
        for i, (n, basis) in enumerate(zip(blocks, bases, strict=True)):
            self.add_module(f"shared_basis_{i + 1}", basis)
            used = bases[i - 1] if official_basis_reuse and i == len(blocks) - 1 else basis
            layers = OrderedDict(
                (f"bottle_neck_layer_{j}", DenseBottleneck(chs + j * growth, growth, unique_rank, used))
                for j in range(n)
            )
            self.features.add_module(f"dense_block_layer_{i}", nn.Sequential(layers))
            chs += n * growth
            if i < len(blocks) - 1:
                self.feature_info.append(dict(num_chs=chs, reduction=2**i, module=f"features.dense_block_layer_{i}"))
                self.features.add_module(f"transition_layer_{i}", Transition(chs, int(reduction * chs)))
                chs = int(reduction * chs)
        self.features.add_module("bn", nn.BatchNorm2d(chs))
        self.features.add_module("relu", nn.ReLU(inplace=True))
        self.feature_info.append(dict(num_chs=chs, reduction=2 ** (len(blocks) - 1), module="features.relu"))
        self.basis_groups = [(b,) for b in bases]
        self.num_features = self.head_hidden_size = chs
        self.reset_classifier(num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.conv1(x))

    def _feature_steps(self):
        names = [name for name, _ in self.features.named_children()]
        ends = [1 + names.index(info["module"].split(".")[1]) for info in self.feature_info]
        return [self.conv1, *self.features], ends

    def _prune_after(self, level: int) -> None:
        names = [name for name, _ in self.features.named_children()]
        identity_after(self.features, names.index(self.feature_info[level]["module"].split(".")[1]))


# --- configs and registered models ------------------------------------------------------------------------

_ARCHS = {"densenet121_s16u1_cifar100": dict(shared_rank=16, unique_rank=1)}


def _create(variant: str, **kwargs) -> SharedBasisDenseNet:
    return SharedBasisDenseNet(**{**_ARCHS[variant], **kwargs})


default_cfgs = {
    "densenet121_s16u1_cifar100": family_cfg(
        "cifar100",
        classifier="linear",
        reference=readme_ref(
            "5.08M",
            "1.43G",
            22.15,
            notes="README row labelled 'DenseNet121-S64U4': the labels of the DenseNet and ResNeXt rows are swapped "
            "(its checkpoint and these figures are S16U1)",
        ),
    ),
}


@register_model
def densenet121_s16u1_cifar100(**kwargs) -> SharedBasisDenseNet:
    """CIFAR-100 DenseNet121 sharing one basis per dense block, s=16, u=1 (5,084,504 params)."""
    return _create("densenet121_s16u1_cifar100", **kwargs)
