"""MobileNetV2 with shared expansion convs (MobileNetV2-Shared, CIFAR-100 and ImageNet).

Paper: Woochul Kang, Daeyeon Kim, "Learning Deeply Shared Filter Bases for Efficient ConvNets"
(arXiv 2006.05066). Source: ssregibility/Net_RL2 at f98cd9d, ``models/cifar100/mobilenetv2.py`` and
``models/ilsvrc/mobilenetv2.py`` (``MobileNetV2_Shared``).

The shared "basis" of a stage is its whole 1x1 expansion conv (C -> 6C), run by the stage's later blocks; there
are no unique filters and no coefficient convs.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import refer_to
from .._registry import register_model
from ._common import FAMILY as FAMILY  # register_model reads the module's FAMILY and default_cfgs
from ._common import GlobalAvgPool, SharedBasisNet, family_cfg, readme_ref

# (expansion, output channels, blocks, stride on CIFAR, stride on ImageNet) of stages 1-7.
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


# --- blocks -----------------------------------------------------------------------------------------------


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


# --- model ------------------------------------------------------------------------------------------------


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


# --- configs and registered models ------------------------------------------------------------------------

_ARCHS = {
    "mobilenetv2_shared_cifar100": dict(variant="cifar", num_classes=100),
    "mobilenetv2_shared": dict(variant="imagenet", num_classes=1000),
}


def _create(variant: str, **kwargs) -> SharedMobileNetV2:
    return SharedMobileNetV2(**{**_ARCHS[variant], **kwargs})


default_cfgs = {
    "mobilenetv2_shared_cifar100": family_cfg(
        "cifar100",
        first_conv="pre.0",
        classifier="conv2",
        pool_size=(5, 5),  # the stem pads 32 to 34 pixels: 34 -> 17 -> 9 -> 5
        reference=readme_ref("2.16M", "0.14G", 27.70),
    ),
    "mobilenetv2_shared": family_cfg(
        "imagenet", first_conv="pre.0", classifier="classifier.1", reference=readme_ref("3.24M", "0.66G", 27.61, 9.34)
    ),
}


@register_model
def mobilenetv2_shared_cifar100(**kwargs) -> SharedMobileNetV2:
    """CIFAR-100 MobileNetV2 sharing the expansion conv within stages 3-6 (2,163,812 params)."""
    return _create("mobilenetv2_shared_cifar100", **kwargs)


@register_model
def mobilenetv2_shared(**kwargs) -> SharedMobileNetV2:
    """ImageNet MobileNetV2 sharing the expansion conv within stages 3-6 (3,243,080 params)."""
    return _create("mobilenetv2_shared", **kwargs)
