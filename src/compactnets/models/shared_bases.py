"""ConvNets with deeply shared filter bases: ResNet, DenseNet, ResNeXt and MobileNetV2 variants.

Paper: Woochul Kang, Daeyeon Kim, "Learning Deeply Shared Filter Bases for Efficient ConvNets"
(arXiv 2006.05066). Source: ssregibility/Net_RL2 at f98cd9d (README of September 2020):
``models/{cifar10,cifar100,ilsvrc}/*.py`` and the regularisers of ``train_{cifar10,cifar100,ilsvrc}.py``.

Every residual group registers a shared filter basis (DoubleShared, the README's "*": one for the first and one
for the second conv of each block). Its first block is a plain block that does all striding and widening; in
every later block each 3x3 conv becomes ``cat(unique basis, shared basis) -> BN -> 1x1 coefficients -> BN``
with ranks ``s * 2^(g-1)`` and ``u * 2^(g-1)`` in group g. The model's ``auxiliary_loss()`` is the paper's
orthogonality regulariser; ``compactnets train --aux-loss-weight`` is the official ``--lambdaR`` (10).

Faithful to the official code: architectures, initialisation, state-dict names and order, and the module
structure that ptflops (the README's FLOPs) sees. Deliberate differences, none of which changes outputs or counts:

* a shared basis is registered once, by the model; the official blocks also register it as their child, so
  its state dict repeats the tensor under every block (the converter checks and drops those copies);
* unique and shared filters run as one convolution (:class:`~compactnets.layers.SharedBasisConv2d`);
* DenseNet: the official constructor builds four shared bases but, through a stale loop index, its last dense
  block runs ``shared_basis_3``, so ``shared_basis_4`` is never used (yet counted and regularised). Here dense
  block k runs basis k by default, so trained from scratch block 4 has a basis of its own;
  ``official_basis_reuse=True`` reproduces the official model exactly (forward and regulariser, with the
  official ``shared_basis_4`` kept), and ``compactnets convert`` builds converted checkpoints that way.
"""

import warnings
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError
from ..layers import SharedBasisConv2d, basis_similarity, refer_to
from ._registry import IMAGENET_MEAN, IMAGENET_STD, model_cfg, register_converter, register_model, shipped_cfg
from ._features import FeatureStages, identity_after

FAMILY = "shared-bases"

# ResNets: blocks per residual group, and the groups' widths.
RESNET_BLOCKS = {32: (5, 5, 5), 56: (9, 9, 9), 34: (3, 4, 6, 3)}
CIFAR10_RESNET_WIDTHS = (16, 32, 64)
RESNET34_WIDTHS = (64, 128, 256, 512)

# DenseNet-BC 121 (CIFAR): every bottleneck's 3x3 conv takes 4 * growth channels and shares its dense block's basis.
DENSENET121_BLOCKS = (6, 12, 24, 16)
DENSENET_GROWTH = 32
DENSENET_REDUCTION = 0.5

# ResNeXt-50 32x4d (CIFAR): bottleneck planes per group (output 4x planes, grouped 3x3 over planes/64*4*32).
RESNEXT50_BLOCKS = (3, 4, 6, 3)
RESNEXT_PLANES = (64, 128, 256, 512)
RESNEXT_CARDINALITY = 32
RESNEXT_BASE_WIDTH = 4
RESNEXT_FILTERS_PER_GROUP = 4  # the shared basis has shared_rank / 4 groups in every residual group

# MobileNetV2: (expansion, output channels, blocks, stride on CIFAR, stride on ImageNet) of stages 1-7.
MOBILENETV2_STAGES = (
    (1, 16, 1, 1, 1),
    (6, 24, 2, 2, 2),
    (6, 32, 3, 2, 2),
    (6, 64, 4, 2, 2),
    (6, 96, 3, 1, 1),
    (6, 160, 3, 1, 2),
    (6, 320, 1, 1, 1),
)
MOBILENETV2_SHARED_STAGES = (3, 4, 5, 6)  # their later blocks share one expansion conv (C -> 6C)
MOBILENETV2_STEM, MOBILENETV2_HEAD = 32, 1280


def _check_ranks(shared_rank: int, unique_rank: int) -> None:
    if shared_rank < 1 or unique_rank < 1:
        raise ValueError(f"shared_rank and unique_rank must be >= 1, got {shared_rank} and {unique_rank}")


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


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> ReLU -> project 1x1 -> BN.

    With ``shared`` the expansion conv is the stage's shared basis. The official code uses ReLU, not ReLU6.
    Residual when the stride is 1 and the width is kept, or, with ``projection_shortcut`` (CIFAR), through a
    1x1 conv + BN whenever the stride is 1.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        expansion: int,
        stride: int,
        shared: nn.Conv2d | None = None,
        projection_shortcut: bool = False,
    ):
        super().__init__()
        hidden = in_chs * expansion
        self.shares_expansion = shared is not None
        if shared is None:
            self.conv1 = nn.Conv2d(in_chs, hidden, 1, bias=False)
        else:
            refer_to(self, "conv1", shared)  # the official block calls it shared_basis1
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.residual = stride == 1 and (in_chs == out_chs or projection_shortcut)
        if self.residual and in_chs != out_chs:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))
        else:
            self.shortcut = nn.Identity()

    def official_shared_bases(self) -> dict[str, nn.Conv2d]:
        return {"shared_basis1": self.conv1} if self.shares_expansion else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.residual else out


class GlobalAvgPool(nn.Module):
    """Global average pooling as a function call, as the official ResNeXt and MobileNetV2 pool (ptflops, the
    README's counter, counts pooling modules only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1)


# --- models -----------------------------------------------------------------------------------------------

MAX_GROUPS = 4  # forward_features calls layer1..layer4 (TorchScript needs the names); unused ones are nn.Identity


def _pad_groups(model: nn.Module, num_groups: int) -> None:
    for g in range(num_groups + 1, MAX_GROUPS + 1):
        model.add_module(f"layer{g}", nn.Identity())
    model.num_groups = num_groups


def _residual_group_steps(self):
    """Steps of a ResNet-like model: the stem, then one residual group per feature level."""
    return [self._stem, *(getattr(self, f"layer{g}") for g in range(1, self.num_groups + 1))], list(
        range(1, self.num_groups + 1)
    )


def _prune_residual_groups(self, level: int) -> None:
    for g in range(level + 2, self.num_groups + 1):
        setattr(self, f"layer{g}", nn.Identity())


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
            if global_pool not in ("avg", ""):
                raise ValueError(f"{type(self).__name__} supports global_pool 'avg' or '', not {global_pool!r}")
            self.global_pool = self._global_pool() if global_pool else nn.Identity()
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
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


class SharedBasisResNet(SharedBasisNet):
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
        _check_ranks(shared_rank, unique_rank)
        if len(blocks) != len(widths) or not 1 <= len(blocks) <= MAX_GROUPS or min(blocks) < 1:
            raise ValueError(
                f"blocks and widths need one entry per residual group (1 to {MAX_GROUPS}), each at least one block"
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
        _pad_groups(self, len(blocks))
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self._stem(x)))))

    _feature_steps = _residual_group_steps
    _prune_after = _prune_residual_groups


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
        _check_ranks(shared_rank, unique_rank)
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


class SharedBasisResNeXt(SharedBasisNet):
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
        _check_ranks(shared_rank, unique_rank)
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
        _pad_groups(self, len(blocks))
        self.num_features = self.head_hidden_size = in_chs
        self.reset_classifier(num_classes, global_pool)
        for bases in self.basis_groups:
            nn.init.orthogonal_(bases[0].weight)

    def _global_pool(self) -> nn.Module:
        return GlobalAvgPool()

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)), inplace=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self._stem(x)))))

    _feature_steps = _residual_group_steps
    _prune_after = _prune_residual_groups


class SharedMobileNetV2(SharedBasisNet):
    """MobileNetV2 whose stages 3-6 share their expansion conv across their later blocks (``MobileNetV2_Shared``).

    ``variant`` "cifar": 1x1 stem with padding 1 (32 -> 34 pixels), stage 6 at stride 1, projection shortcuts,
    a 1x1-conv classifier (``conv2``). "imagenet": 3x3/2 stem, stage 6 at stride 2, identity residuals only,
    Dropout(0.2) + Linear (``classifier``). Stem and head use ReLU6 (modules), the blocks ReLU. No shared
    filters are unique to a layer, so the regulariser covers the shared expansions only (B is 6C x C and can at
    best reach rank C).
    """

    def __init__(self, variant: str = "cifar", num_classes: int = 100, in_chans: int = 3, global_pool: str = "avg"):
        super().__init__()
        if variant not in ("cifar", "imagenet"):
            raise ValueError(f"variant is 'cifar' or 'imagenet', not {variant!r}")
        cifar = variant == "cifar"
        self.classifier_name = "conv2" if cifar else "classifier"
        self.conv_classifier = cifar
        stem = (
            nn.Conv2d(in_chans, MOBILENETV2_STEM, 1, padding=1)
            if cifar
            else nn.Conv2d(in_chans, MOBILENETV2_STEM, 3, 2, 1)
        )
        self.pre = nn.Sequential(stem, nn.BatchNorm2d(MOBILENETV2_STEM), nn.ReLU6(inplace=True))
        self.basis_groups, self.feature_info = [], []
        reduction, in_chs = (1, MOBILENETV2_STEM) if cifar else (2, MOBILENETV2_STEM)
        for k, (expansion, out_chs, n, cifar_stride, imagenet_stride) in enumerate(MOBILENETV2_STAGES, start=1):
            stride = cifar_stride if cifar else imagenet_stride
            shared = None
            if k in MOBILENETV2_SHARED_STAGES:
                shared = nn.Conv2d(out_chs, out_chs * expansion, 1, bias=False)
                self.add_module(f"shared_basis_{len(self.basis_groups) + 1}", shared)
                self.basis_groups.append((shared,))
            blocks = [InvertedResidual(in_chs, out_chs, expansion, stride, projection_shortcut=cifar)]
            blocks += [InvertedResidual(out_chs, out_chs, expansion, 1, shared, cifar) for _ in range(n - 1)]
            self.add_module(f"stage{k}", blocks[0] if n == 1 else nn.Sequential(*blocks))
            reduction, in_chs = reduction * stride, out_chs
            if k in (2, 3, 5) or (k == 1 and not cifar):
                # The CIFAR stem pads 32 to 34 pixels: its maps (17, 9, 5) are one pixel wider than 32 / reduction.
                self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stage{k}"))
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chs, MOBILENETV2_HEAD, 1), nn.BatchNorm2d(MOBILENETV2_HEAD), nn.ReLU6(inplace=True)
        )
        self.feature_info.append(dict(num_chs=MOBILENETV2_HEAD, reduction=reduction, module="conv1"))
        self.num_features = self.head_hidden_size = MOBILENETV2_HEAD
        self.reset_classifier(num_classes, global_pool)

    def _global_pool(self) -> nn.Module:
        return GlobalAvgPool()

    def _classifier(self, num_classes: int) -> nn.Module:
        if self.classifier_name == "conv2":
            return nn.Conv2d(self.num_features, num_classes, 1)
        return nn.Sequential(nn.Dropout(0.2), nn.Linear(self.num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.pre(x)))))
        return self.conv1(self.stage7(self.stage6(self.stage5(x))))

    def _steps(self) -> list[str]:
        return ["pre", *(f"stage{k}" for k in range(1, len(MOBILENETV2_STAGES) + 1)), "conv1"]

    def _feature_steps(self):
        names = self._steps()
        return [getattr(self, n) for n in names], [names.index(info["module"]) for info in self.feature_info]

    def _prune_after(self, level: int) -> None:
        names = self._steps()
        for name in names[names.index(self.feature_info[level]["module"]) + 1 :]:
            setattr(self, name, nn.Identity())

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if pre_logits:
            return self.flatten(x)
        if self.conv_classifier:  # CIFAR: a 1x1 conv on the pooled map
            return self.flatten(self.head(x))
        return self.head(self.flatten(x))


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


# Converted official DenseNets keep the official basis reuse (see SharedBasisDenseNet).
register_converter(
    FAMILY, checkpoint_filter_fn, model_kwargs={"densenet121_s16u1_cifar100": {"official_basis_reuse": True}}
)


# --- configs and registered models ------------------------------------------------------------------------

_README = "ssregibility/Net_RL2 README.md @f98cd9d"
_README_JUN = "ssregibility/Net_RL2 README.md @740baba (June 2020)"
CIFAR100_MEAN, CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)

_DATASETS = {
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


def _cfg(dataset: str, first_conv: str = "conv1", classifier: str = "fc", **kwargs) -> dict:
    return model_cfg(
        dataset=dataset,
        first_conv=first_conv,
        classifier=classifier,
        paper="Learning Deeply Shared Filter Bases for Efficient ConvNets (arXiv 2006.05066)",
        source="https://github.com/ssregibility/Net_RL2 @f98cd9d",
        notes=_TRAINING[dataset],
        **{**_DATASETS[dataset], **kwargs},
    )


def _ref(params: str, flops: str, top1_err: float, top5_err: float | None = None, source=_README, notes="") -> dict:
    """A README row: 'FLOPs' are 2 x ptflops GMac; errors become accuracies."""
    ref = dict(params=params, macs=flops, macs_convention="ptflops_x2", top1=round(100 - top1_err, 2), source=source)
    if top5_err is not None:
        ref["top5"] = round(100 - top5_err, 2)
    return ref | ({"notes": notes} if notes else {})


def _resnet(depth: int, dataset: str, shared_rank: int, unique_rank: int, double_shared: bool = False) -> dict:
    widths = CIFAR10_RESNET_WIDTHS if dataset == "cifar10" else RESNET34_WIDTHS
    return dict(
        cls=SharedBasisResNet,
        blocks=RESNET_BLOCKS[depth],
        widths=widths,
        shared_rank=shared_rank,
        unique_rank=unique_rank,
        double_shared=double_shared,
        stem="imagenet" if dataset == "imagenet" else "cifar",
        shortcut="A" if dataset == "cifar10" else "B",
        regularize_unique=dataset == "cifar10",  # only train_cifar10.py regularises the unique bases
        num_classes=_DATASETS[dataset]["num_classes"],
    )


_ARCHS = {
    "resnet32_s8u1_cifar10": _resnet(32, "cifar10", 8, 1),
    "resnet32_s16u1_cifar10": _resnet(32, "cifar10", 16, 1),
    "resnet32_s16u1_double_cifar10": _resnet(32, "cifar10", 16, 1, double_shared=True),
    "resnet56_s8u1_cifar10": _resnet(56, "cifar10", 8, 1),
    "resnet56_s16u1_cifar10": _resnet(56, "cifar10", 16, 1),
    "resnet56_s16u1_double_cifar10": _resnet(56, "cifar10", 16, 1, double_shared=True),
    "resnet34_s8u1_cifar100": _resnet(34, "cifar100", 8, 1),
    "resnet34_s16u1_cifar100": _resnet(34, "cifar100", 16, 1),
    "resnet34_s32u1_cifar100": _resnet(34, "cifar100", 32, 1),
    "densenet121_s16u1_cifar100": dict(cls=SharedBasisDenseNet, shared_rank=16, unique_rank=1),
    "resnext50_32x4d_s64u4_cifar100": dict(cls=SharedBasisResNeXt, shared_rank=64, unique_rank=4),
    "mobilenetv2_shared_cifar100": dict(cls=SharedMobileNetV2, variant="cifar", num_classes=100),
    "resnet34_s32u1": _resnet(34, "imagenet", 32, 1),
    "resnet34_s48u1": _resnet(34, "imagenet", 48, 1),
    "resnet34_s32u1_double": _resnet(34, "imagenet", 32, 1, double_shared=True),
    "resnet34_s48u1_double": _resnet(34, "imagenet", 48, 1, double_shared=True),
    "mobilenetv2_shared": dict(cls=SharedMobileNetV2, variant="imagenet", num_classes=1000),
}


def _create(name: str, **kwargs) -> SharedBasisNet:
    arch = dict(_ARCHS[name])
    cls = arch.pop("cls")
    return cls(**{**arch, **kwargs})


def _truncated(count: str) -> str:
    return f"the README truncates {count} parameters to two decimals here (other rows are rounded)"


default_cfgs = {
    "resnet32_s8u1_cifar10": _cfg("cifar10", reference=_ref("0.15M", "0.10G", 8.08)),
    "resnet32_s16u1_cifar10": _cfg("cifar10", reference=_ref("0.20M", "0.16G", 7.43)),
    "resnet32_s16u1_double_cifar10": _cfg(
        "cifar10", reference=_ref("0.24M", "0.16G", 6.93, notes=_truncated("245,642"))
    ),
    "resnet56_s8u1_cifar10": _cfg("cifar10", reference=_ref("0.20M", "0.17G", 7.52)),
    "resnet56_s16u1_cifar10": _cfg(
        "cifar10",
        reference=_ref(
            "0.22M",
            "0.30G",
            7.46,
            notes="README typo: ResNet56_SingleShared(16, 1) has 270,842 parameters (0.27M); 0.22M would be S10U1",
        ),
    ),
    "resnet56_s16u1_double_cifar10": _cfg(
        "cifar10", reference=_ref("0.31M", "0.30G", 6.30, notes=_truncated("319,226"))
    ),
    "resnet34_s8u1_cifar100": _cfg("cifar100", reference=_ref("5.87M", "0.79G", 23.11)),
    "resnet34_s16u1_cifar100": _cfg("cifar100", reference=_ref("6.49M", "1.05G", 22.64)),
    "resnet34_s32u1_cifar100": _cfg("cifar100", reference=_ref("7.73M", "1.55G", 21.79)),
    "densenet121_s16u1_cifar100": _cfg(
        "cifar100",
        classifier="linear",
        reference=_ref(
            "5.08M",
            "1.43G",
            22.15,
            notes="README row labelled 'DenseNet121-S64U4': the labels of the DenseNet and ResNeXt rows are swapped "
            "(its checkpoint and these figures are S16U1)",
        ),
    ),
    "resnext50_32x4d_s64u4_cifar100": _cfg(
        "cifar100",
        classifier="linear",
        reference=_ref(
            "19.3M",
            "2.38G",
            20.09,
            notes="README row labelled 'ResNeXt50-S16U1': the labels of the DenseNet and ResNeXt rows are swapped "
            "(its checkpoint and these figures are S64U4; u=1 cannot be built)",
        ),
    ),
    "mobilenetv2_shared_cifar100": _cfg(
        "cifar100",
        first_conv="pre.0",
        classifier="conv2",
        pool_size=(5, 5),  # the stem pads 32 to 34 pixels: 34 -> 17 -> 9 -> 5
        reference=_ref("2.16M", "0.14G", 27.70),
    ),
    "resnet34_s32u1": _cfg("imagenet", reference=_ref("8.20M", "4.98G", 27.83, 9.42)),
    "resnet34_s48u1": _cfg("imagenet", reference=_ref("9.44M", "6.52G", 27.88, 9.29, source=_README_JUN)),
    "resnet34_s32u1_double": _cfg("imagenet", reference=_ref("9.76M", "4.98G", 27.20, 8.93)),
    "resnet34_s48u1_double": _cfg("imagenet", reference=_ref("11.79M", "6.52G", 26.67, 8.54)),
    "mobilenetv2_shared": _cfg(
        "imagenet", first_conv="pre.0", classifier="classifier.1", reference=_ref("3.24M", "0.66G", 27.61, 9.34)
    ),
}
# Weights trained by compactnets on a CPU (tools/ship_weights.py), with the figures `compactnets eval` measures.
default_cfgs["resnet32_s8u1_cifar10.cifar10jpeg_5ep"] = shipped_cfg(
    default_cfgs["resnet32_s8u1_cifar10"],
    "resnet32_s8u1_cifar10.cifar10jpeg_5ep",
    "shared_bases_resnet32_cifar10_short",
    5,
    top1=73.18,
    top5=98.17,
)


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
def densenet121_s16u1_cifar100(**kwargs) -> SharedBasisDenseNet:
    """CIFAR-100 DenseNet121 sharing one basis per dense block, s=16, u=1 (5,084,504 params)."""
    return _create("densenet121_s16u1_cifar100", **kwargs)


@register_model
def resnext50_32x4d_s64u4_cifar100(**kwargs) -> SharedBasisResNeXt:
    """CIFAR-100 ResNeXt50 32x4d sharing one grouped basis per group, s=64, u=4 (19,333,380 params)."""
    return _create("resnext50_32x4d_s64u4_cifar100", **kwargs)


@register_model
def mobilenetv2_shared_cifar100(**kwargs) -> SharedMobileNetV2:
    """CIFAR-100 MobileNetV2 sharing the expansion conv within stages 3-6 (2,163,812 params)."""
    return _create("mobilenetv2_shared_cifar100", **kwargs)


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


@register_model
def mobilenetv2_shared(**kwargs) -> SharedMobileNetV2:
    """ImageNet MobileNetV2 sharing the expansion conv within stages 3-6 (3,243,080 params)."""
    return _create("mobilenetv2_shared", **kwargs)
