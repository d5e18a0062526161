"""ResNets with deeply shared filter bases: CIFAR-10 ResNet32/56, CIFAR-100 and ImageNet ResNet34.

Paper: Woochul Kang, Daeyeon Kim, "Learning Deeply Shared Filter Bases for Efficient ConvNets"
(arXiv 2006.05066). Source: ssregibility/Net_RL2 at f98cd9d, ``models/{cifar10,cifar100,ilsvrc}/resnet.py``
(``ResNet_SingleShared``, ``ResNet_DoubleShared``).

Every residual group registers a shared filter basis (DoubleShared, the README's "*": one for the first and one
for the second conv of each block). Its first block is a plain block that does all striding and widening; in
every later block each 3x3 conv becomes ``cat(unique basis, shared basis) -> BN -> 1x1 coefficients -> BN``
with ranks ``s * 2^(g-1)`` and ``u * 2^(g-1)`` in group g.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import SharedBasisConv2d
from .._registry import register_model
from ._common import DATASETS, README_JUN, ResidualGroupNet, check_ranks, family_cfg, readme_ref
from ._common import FAMILY as FAMILY  # register_model reads the module's FAMILY and default_cfgs

# The rows of shared-bases.md's CIFAR-10 table, in its order.
CIFAR10_TABLE = (
    "resnet32_s8u1_cifar10", "resnet32_s16u1_cifar10", "resnet32_s16u1_double_cifar10",
    "resnet56_s8u1_cifar10", "resnet56_s16u1_cifar10", "resnet56_s16u1_double_cifar10",
)  # fmt: skip
# Blocks per residual group, and the groups' widths.
RESNET_BLOCKS = {32: (5, 5, 5), 56: (9, 9, 9), 34: (3, 4, 6, 3)}
CIFAR10_RESNET_WIDTHS = (16, 32, 64)
RESNET34_WIDTHS = (64, 128, 256, 512)


# --- blocks -----------------------------------------------------------------------------------------------


class PadShortcut(nn.Module):
    """Option-A shortcut of the CIFAR ResNets: subsample by 2 and zero-pad ``planes // 4`` channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Plain residual block, the first of each group: it alone changes stride and width.

    ``shortcut`` "A" (CIFAR-10) pads with zeros, "B" (CIFAR-100, ImageNet) projects with a 1x1 conv + BN.
    """

    def __init__(self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_chs == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(planes)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class BasisBlock(nn.Module):
    """Residual block of two shared-basis convs: basis (unique + shared) -> BN -> 1x1 coefficients -> BN.

    SingleShared passes the group's one basis as both ``shared1`` and ``shared2``; DoubleShared one per conv.
    No ReLU between the basis and its coefficients.
    """

    def __init__(self, planes: int, unique_rank: int, shared1: nn.Conv2d, shared2: nn.Conv2d):
        super().__init__()
        self.basis_conv1 = SharedBasisConv2d(planes, unique_rank, shared1)
        self.basis_bn1 = nn.BatchNorm2d(self.basis_conv1.out_channels)
        self.coeff_conv1 = nn.Conv2d(self.basis_conv1.out_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.basis_conv2 = SharedBasisConv2d(planes, unique_rank, shared2)
        self.basis_bn2 = nn.BatchNorm2d(self.basis_conv2.out_channels)
        self.coeff_conv2 = nn.Conv2d(self.basis_conv2.out_channels, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def official_shared_bases(self) -> dict[str, nn.Conv2d]:
        """The attribute names under which the official block registers its shared bases."""
        shared1, shared2 = self.basis_conv1.shared, self.basis_conv2.shared
        return (
            {"shared_basis": shared1} if shared1 is shared2 else {"shared_basis_1": shared1, "shared_basis_2": shared2}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.coeff_conv1(self.basis_bn1(self.basis_conv1(x)))), inplace=True)
        out = self.bn2(self.coeff_conv2(self.basis_bn2(self.basis_conv2(out))))
        return F.relu(out + x, inplace=True)


# --- model ------------------------------------------------------------------------------------------------


class SharedBasisResNet(ResidualGroupNet):
    """ResNet whose residual groups share filter bases (``ResNet_SingleShared`` / ``ResNet_DoubleShared``).

    Args:
        blocks: blocks per residual group.
        widths: channels of each group (the stem outputs ``widths[0]``).
        shared_rank, unique_rank: ranks of group 1; group g uses ``rank * 2^(g-1)``.
        double_shared: two shared bases per group (conv1s, conv2s), jointly orthogonal-initialised.
        stem: "cifar" (3x3 conv) or "imagenet" (7x7/2 conv and 3x3/2 max pool).
        shortcut: "A" (zero padding, CIFAR-10) or "B" (1x1 conv + BN) for the groups' first blocks.
        regularize_unique: include the unique filters in the regulariser (the CIFAR-10 script does).
    """

    def __init__(
        self,
        blocks: Sequence[int] = RESNET_BLOCKS[56],
        widths: Sequence[int] = CIFAR10_RESNET_WIDTHS,
        shared_rank: int = 16,
        unique_rank: int = 1,
        double_shared: bool = False,
        stem: str = "cifar",
        shortcut: str = "A",
        regularize_unique: bool = False,
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = "avg",
    ):
        super().__init__()
        check_ranks(shared_rank, unique_rank)
        if len(blocks) != len(widths) or not 1 <= len(blocks) <= self.MAX_GROUPS or min(blocks) < 1:
            raise ValueError(
                f"blocks and widths need one entry per residual group (1 to {self.MAX_GROUPS}), each at least one block"
            )
        if stem not in ("cifar", "imagenet") or shortcut not in ("A", "B"):
            raise ValueError(f"stem is 'cifar' or 'imagenet' and shortcut 'A' or 'B', got {stem!r} and {shortcut!r}")
        self.regularize_unique = regularize_unique
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()

        self.basis_groups, self.feature_info = [], []
        reduction = 4 if stem == "imagenet" else 1
        in_chs = widths[0]
        for g, (n, planes) in enumerate(zip(blocks, widths, strict=True), start=1):
            names = [f"shared_basis_{g}_1", f"shared_basis_{g}_2"] if double_shared else [f"shared_basis_{g}"]
            bases = tuple(nn.Conv2d(planes, shared_rank * 2 ** (g - 1), 3, 1, 1, bias=False) for _ in names)
            for name, basis in zip(names, bases, strict=True):
                self.add_module(name, basis)  # registered before the group, as in the official state dict
            stride = 1 if g == 1 else 2
            layer = [BasicBlock(in_chs, planes, stride, shortcut)]
            layer += [BasisBlock(planes, unique_rank * 2 ** (g - 1), bases[0], bases[-1]) for _ in range(n - 1)]
            self.add_module(f"layer{g}", nn.Sequential(*layer))
            self.basis_groups.append(bases)
            reduction *= stride
            self.feature_info.append(dict(num_chs=planes, reduction=reduction, module=f"layer{g}"))
            in_chs = planes
        self._pad_groups(len(blocks))
        self.num_features = self.head_hidden_size = widths[-1]
        self.reset_classifier(num_classes, global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, SharedBasisConv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for bases in self.basis_groups:  # DoubleShared: one orthogonal matrix split in two
            joint = torch.empty(sum(b.out_channels for b in bases), *bases[0].weight.shape[1:])
            nn.init.orthogonal_(joint)
            for basis, part in zip(bases, joint.split([b.out_channels for b in bases]), strict=True):
                with torch.no_grad():
                    basis.weight.copy_(part)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))


# --- configs and registered models ------------------------------------------------------------------------


def _arch(depth: int, dataset: str, shared_rank: int, unique_rank: int, double_shared: bool = False) -> dict:
    widths = CIFAR10_RESNET_WIDTHS if dataset == "cifar10" else RESNET34_WIDTHS
    return dict(
        blocks=RESNET_BLOCKS[depth],
        widths=widths,
        shared_rank=shared_rank,
        unique_rank=unique_rank,
        double_shared=double_shared,
        stem="imagenet" if dataset == "imagenet" else "cifar",
        shortcut="A" if dataset == "cifar10" else "B",
        regularize_unique=dataset == "cifar10",  # only train_cifar10.py regularises the unique bases
        num_classes=DATASETS[dataset]["num_classes"],
    )


_ARCHS = {
    "resnet32_s8u1_cifar10": _arch(32, "cifar10", 8, 1),
    "resnet32_s16u1_cifar10": _arch(32, "cifar10", 16, 1),
    "resnet32_s16u1_double_cifar10": _arch(32, "cifar10", 16, 1, double_shared=True),
    "resnet56_s8u1_cifar10": _arch(56, "cifar10", 8, 1),
    "resnet56_s16u1_cifar10": _arch(56, "cifar10", 16, 1),
    "resnet56_s16u1_double_cifar10": _arch(56, "cifar10", 16, 1, double_shared=True),
    "resnet34_s8u1_cifar100": _arch(34, "cifar100", 8, 1),
    "resnet34_s16u1_cifar100": _arch(34, "cifar100", 16, 1),
    "resnet34_s32u1_cifar100": _arch(34, "cifar100", 32, 1),
    "resnet34_s32u1": _arch(34, "imagenet", 32, 1),
    "resnet34_s48u1": _arch(34, "imagenet", 48, 1),
    "resnet34_s32u1_double": _arch(34, "imagenet", 32, 1, double_shared=True),
    "resnet34_s48u1_double": _arch(34, "imagenet", 48, 1, double_shared=True),
}


def _create(variant: str, **kwargs) -> SharedBasisResNet:
    return SharedBasisResNet(**{**_ARCHS[variant], **kwargs})


def _truncated(count: str) -> str:
    return f"the README truncates {count} parameters to two decimals here (other rows are rounded)"


default_cfgs = {
    "resnet32_s8u1_cifar10": family_cfg("cifar10", reference=readme_ref("0.15M", "0.10G", 8.08)),
    "resnet32_s16u1_cifar10": family_cfg("cifar10", reference=readme_ref("0.20M", "0.16G", 7.43)),
    "resnet32_s16u1_double_cifar10": family_cfg(
        "cifar10", reference=readme_ref("0.24M", "0.16G", 6.93, notes=_truncated("245,642"))
    ),
    "resnet56_s8u1_cifar10": family_cfg("cifar10", reference=readme_ref("0.20M", "0.17G", 7.52)),
    "resnet56_s16u1_cifar10": family_cfg(
        "cifar10",
        reference=readme_ref(
            "0.22M",
            "0.30G",
            7.46,
            notes="README typo: ResNet56_SingleShared(16, 1) has 270,842 parameters (0.27M); 0.22M would be S10U1",
        ),
    ),
    "resnet56_s16u1_double_cifar10": family_cfg(
        "cifar10", reference=readme_ref("0.31M", "0.30G", 6.30, notes=_truncated("319,226"))
    ),
    "resnet34_s8u1_cifar100": family_cfg("cifar100", reference=readme_ref("5.87M", "0.79G", 23.11)),
    "resnet34_s16u1_cifar100": family_cfg("cifar100", reference=readme_ref("6.49M", "1.05G", 22.64)),
    "resnet34_s32u1_cifar100": family_cfg("cifar100", reference=readme_ref("7.73M", "1.55G", 21.79)),
    "resnet34_s32u1": family_cfg("imagenet", reference=readme_ref("8.20M", "4.98G", 27.83, 9.42)),
    "resnet34_s48u1": family_cfg("imagenet", reference=readme_ref("9.44M", "6.52G", 27.88, 9.29, source=README_JUN)),
    "resnet34_s32u1_double": family_cfg("imagenet", reference=readme_ref("9.76M", "4.98G", 27.20, 8.93)),
    "resnet34_s48u1_double": family_cfg("imagenet", reference=readme_ref("11.79M", "6.52G", 26.67, 8.54)),
}


@register_model
def resnet32_s8u1_cifar10(**kwargs) -> SharedBasisResNet:
    """CIFAR-10 ResNet32, one shared basis per group, s=8, u=1 (150,666 params)."""
    return _create("resnet32_s8u1_cifar10", **kwargs)


@register_model
def resnet32_s16u1_cifar10(**kwargs) -> SharedBasisResNet:
    """CIFAR-10 ResNet32, one shared basis per group, s=16, u=1 (197,258 params)."""
    return _create("resnet32_s16u1_cifar10", **kwargs)


@register_model
def resnet32_s16u1_double_cifar10(**kwargs) -> SharedBasisResNet:
    """CIFAR-10 ResNet32-S16U1*: two shared bases per group (245,642 params)."""
    return _create("resnet32_s16u1_double_cifar10", **kwargs)


@register_model
def resnet56_s8u1_cifar10(**kwargs) -> SharedBasisResNet:
    """CIFAR-10 ResNet56, one shared basis per group, s=8, u=1 (201,850 params)."""
    return _create("resnet56_s8u1_cifar10", **kwargs)


@register_model
def resnet56_s16u1_cifar10(**kwargs) -> SharedBasisResNet:
    """CIFAR-10 ResNet56, one shared basis per group, s=16, u=1 (270,842 params)."""
    return _create("resnet56_s16u1_cifar10", **kwargs)


@register_model
def resnet56_s16u1_double_cifar10(**kwargs) -> SharedBasisResNet:
    """CIFAR-10 ResNet56-S16U1*: two shared bases per group (319,226 params), the README's seed command."""
    return _create("resnet56_s16u1_double_cifar10", **kwargs)


@register_model
def resnet34_s8u1_cifar100(**kwargs) -> SharedBasisResNet:
    """CIFAR-100 ResNet34, one shared basis per group, s=8, u=1 (5,865,428 params)."""
    return _create("resnet34_s8u1_cifar100", **kwargs)


@register_model
def resnet34_s16u1_cifar100(**kwargs) -> SharedBasisResNet:
    """CIFAR-100 ResNet34, one shared basis per group, s=16, u=1 (6,485,844 params)."""
    return _create("resnet34_s16u1_cifar100", **kwargs)


@register_model
def resnet34_s32u1_cifar100(**kwargs) -> SharedBasisResNet:
    """CIFAR-100 ResNet34, one shared basis per group, s=32, u=1 (7,726,676 params)."""
    return _create("resnet34_s32u1_cifar100", **kwargs)


@register_model
def resnet34_s32u1(**kwargs) -> SharedBasisResNet:
    """ImageNet ResNet34, one shared basis per group, s=32, u=1 (8,196,056 params)."""
    return _create("resnet34_s32u1", **kwargs)


@register_model
def resnet34_s48u1(**kwargs) -> SharedBasisResNet:
    """ImageNet ResNet34, one shared basis per group, s=48, u=1 (9,436,888 params; June 2020 README)."""
    return _create("resnet34_s48u1", **kwargs)


@register_model
def resnet34_s32u1_double(**kwargs) -> SharedBasisResNet:
    """ImageNet ResNet34-S32U1*: two shared bases per group (9,762,776 params)."""
    return _create("resnet34_s32u1_double", **kwargs)


@register_model
def resnet34_s48u1_double(**kwargs) -> SharedBasisResNet:
    """ImageNet ResNet34-S48U1*: two shared bases per group (11,786,968 params)."""
    return _create("resnet34_s48u1_double", **kwargs)
