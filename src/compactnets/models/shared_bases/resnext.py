"""ResNeXt-50 32x4d with deeply shared filter bases (CIFAR-100).

Paper: Woochul Kang, Daeyeon Kim, "Learning Deeply Shared Filter Bases for Efficient ConvNets"
(arXiv 2006.05066). Source: ssregibility/Net_RL2 at f98cd9d, ``models/cifar100/resnext.py``
(``ResNext50_32x4d_SingleShared``).

The grouped 3x3 conv of every later bottleneck of a residual group is ``cat(unique basis, shared basis)``, both
grouped in fours; the bottleneck's last 1x1 conv acts as the coefficients. The first block of each group is plain.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import SharedBasisConv2d
from .._registry import register_model
from ._common import FAMILY as FAMILY  # register_model reads the module's FAMILY and default_cfgs
from ._common import GlobalAvgPool, ResidualGroupNet, check_ranks, family_cfg, readme_ref

# ResNeXt-50 32x4d (CIFAR): bottleneck planes per group (output 4x planes, grouped 3x3 over planes/64*4*32).
RESNEXT50_BLOCKS = (3, 4, 6, 3)
RESNEXT_PLANES = (64, 128, 256, 512)
RESNEXT_CARDINALITY = 32
RESNEXT_BASE_WIDTH = 4
RESNEXT_FILTERS_PER_GROUP = 4  # the shared basis has shared_rank / 4 groups in every residual group


# --- blocks -----------------------------------------------------------------------------------------------


def _resnext_width(planes: int) -> int:
    return int(planes * RESNEXT_BASE_WIDTH / 64) * RESNEXT_CARDINALITY


class ResNeXtBottleneck(nn.Module):
    """Plain ResNeXt bottleneck (first block of each group): 1x1 -> grouped 3x3 (stride) -> 1x1 (4 x planes)."""

    def __init__(self, in_chs: int, planes: int, stride: int = 1):
        super().__init__()
        width, out_chs = _resnext_width(planes), 4 * planes
        self.residual_function = nn.Sequential(
            nn.Conv2d(in_chs, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, groups=RESNEXT_CARDINALITY, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )
        if stride == 1 and in_chs == out_chs:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual_function(x) + self.shortcut(x), inplace=True)


class SharedBasisResNeXtBottleneck(nn.Module):
    """ResNeXt bottleneck whose grouped 3x3 is a basis: 1x1 -> cat(unique (rank/4 groups), shared) -> BN -> ReLU
    -> 1x1 (the coefficients, 4 x planes) -> BN, plus the identity."""

    def __init__(self, planes: int, unique_rank: int, shared: nn.Conv2d):
        super().__init__()
        width, out_chs = _resnext_width(planes), 4 * planes
        self.conv1 = nn.Conv2d(out_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.basis_conv2 = SharedBasisConv2d(
            width, unique_rank, shared, unique_groups=unique_rank // RESNEXT_BASE_WIDTH
        )
        self.bn2 = nn.BatchNorm2d(self.basis_conv2.out_channels)
        self.conv3 = nn.Conv2d(self.basis_conv2.out_channels, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)

    def official_shared_bases(self) -> dict[str, nn.Conv2d]:
        return {"shared_basis": self.basis_conv2.shared}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.basis_conv2(out)), inplace=True)
        return F.relu(self.bn3(self.conv3(out)) + x, inplace=True)


# --- model ------------------------------------------------------------------------------------------------


class SharedBasisResNeXt(ResidualGroupNet):
    """ResNeXt-50 32x4d whose residual groups share a grouped 3x3 basis (``ResNext_SingleShared``, CIFAR-100).

    Group g: shared basis ``width_g -> shared_rank * 2^(g-1)`` with ``shared_rank / 4`` groups, unique basis of
    ``unique_rank * 2^(g-1)`` filters in groups of 4; both ranks must be multiples of 4. Only the shared bases
    are initialised (orthogonal); the rest keeps PyTorch's defaults, as in the official code.
    """

    classifier_name = "linear"

    def __init__(
        self,
        blocks: Sequence[int] = RESNEXT50_BLOCKS,
        shared_rank: int = 64,
        unique_rank: int = 4,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
    ):
        super().__init__()
        check_ranks(shared_rank, unique_rank)
        if shared_rank % RESNEXT_FILTERS_PER_GROUP or unique_rank % RESNEXT_BASE_WIDTH:
            raise ValueError(
                f"ResNeXt bases are grouped in fours: shared_rank and unique_rank must be multiples of 4, got "
                f"{shared_rank} and {unique_rank} (the README's 'ResNeXt50-S16U1' label belongs to DenseNet)"
            )
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.basis_groups, self.feature_info = [], []
        in_chs = 64
        for g, (n, planes) in enumerate(zip(blocks, RESNEXT_PLANES, strict=True), start=1):
            basis = nn.Conv2d(
                _resnext_width(planes),
                shared_rank * 2 ** (g - 1),
                3,
                padding=1,
                groups=shared_rank // RESNEXT_FILTERS_PER_GROUP,
                bias=False,
            )
            self.add_module(f"shared_basis_{g}", basis)
            stride = 1 if g == 1 else 2
            layer = [ResNeXtBottleneck(in_chs, planes, stride)]
            layer += [SharedBasisResNeXtBottleneck(planes, unique_rank * 2 ** (g - 1), basis) for _ in range(n - 1)]
            self.add_module(f"layer{g}", nn.Sequential(*layer))
            self.basis_groups.append((basis,))
            in_chs = 4 * planes
            self.feature_info.append(dict(num_chs=in_chs, reduction=2 ** (g - 1), module=f"layer{g}"))
        self._pad_groups(len(blocks))
        self.num_features = self.head_hidden_size = in_chs
        self.reset_classifier(num_classes, global_pool)
        for bases in self.basis_groups:
            nn.init.orthogonal_(bases[0].weight)

    def _global_pool(self) -> nn.Module:
        return GlobalAvgPool()

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)), inplace=True)


# --- configs and registered models ------------------------------------------------------------------------

_ARCHS = {"resnext50_32x4d_s64u4_cifar100": dict(shared_rank=64, unique_rank=4)}


def _create(variant: str, **kwargs) -> SharedBasisResNeXt:
    return SharedBasisResNeXt(**{**_ARCHS[variant], **kwargs})


default_cfgs = {
    "resnext50_32x4d_s64u4_cifar100": family_cfg(
        "cifar100",
        classifier="linear",
        reference=readme_ref(
            "19.3M",
            "2.38G",
            20.09,
            notes="README row labelled 'ResNeXt50-S16U1': the labels of the DenseNet and ResNeXt rows are swapped "
            "(its checkpoint and these figures are S64U4; u=1 cannot be built)",
        ),
    ),
}


@register_model
def resnext50_32x4d_s64u4_cifar100(**kwargs) -> SharedBasisResNeXt:
    """CIFAR-100 ResNeXt50 32x4d sharing one grouped basis per group, s=64, u=4 (19,333,380 params)."""
    return _create("resnext50_32x4d_s64u4_cifar100", **kwargs)
