"""Network-in-Network on CIFAR-10 and its XNOR-Net binarization.

Papers: Lin, Chen, Yan, "Network In Network" (arXiv 1312.4400); Rastegari, Ordonez, Redmon, Farhadi,
"XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks" (ECCV 2016, arXiv 1603.05279).

Source: onion-rain/MCTS ("pytorch-xnornet") at 497eebd: ``models/cifar/{nin,nin_xnornet}.py`` and
``quantification/xnornet.py``; the conv4-3x3 baselines follow the repository HEAD (2d34ec7) used by its
quantize_README. Layer order, channel shuffle, binarization and state-dict names match that code, so its
checkpoints load directly (``compactnets convert --family xnor-net``).

Every conv block is ``[channel shuffle] -> conv -> BN(out) -> ReLU``; binary blocks are
``[channel shuffle] -> BN(in) -> sign (straight-through) -> XNOR conv with fp32 bias -> ReLU``. The first and
last conv stay full precision and, as in the original NIN, the logits pass through the last block's ReLU.
"""

from collections.abc import Sequence

import torch
from torch import nn

from ..layers import BinaryActivation, BinaryConv2d, ChannelShuffle, create_global_pool
from ._features import FeatureStages, identity_after
from ._registry import TableRow, model_cfg, register_converter, register_model, register_table

FAMILY = "xnor-net"

# Output channels of the nine conv blocks (the last one is the classifier, width num_classes).
NIN_CHANNELS = (192, 160, 96, 192, 192, 192, 192, 192)
NIN_GC_CHANNELS = (256, 256, 256, 512, 512, 512, 1024, 1024)
NIN_GC_GROUPS = (1, 2, 2, 16, 4, 4, 32, 8, 1)
# Kernel of each conv block; conv4 (index 3) is 5x5 in the table's baselines and 3x3 in the XNOR models.
KERNELS = (5, 1, 1, None, 1, 1, 3, 1, 1)
# XNOR models binarize every block but the first and the last.
BINARY_BLOCKS = (False, True, True, True, True, True, True, True, False)
# Sequential index of each conv block; pools sit at 3 (MaxPool 3/2/1) and 7 (AvgPool 3/2/1).
BLOCK_SLOTS = (0, 1, 2, 4, 5, 6, 8, 9, 10)
CLASSIFIER_SLOT = BLOCK_SLOTS[-1]


class ConvBnReLU(nn.Module):
    """[shuffle] -> conv -> BN(out) -> ReLU, the full-precision NIN block."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, groups: int = 1, shuffle_groups: int = 1):
        super().__init__()
        self.shuffle = ChannelShuffle(shuffle_groups)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, groups=groups)
        self.norm = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(self.conv(self.shuffle(x))))


class BinaryConvBlock(nn.Module):
    """[shuffle] -> BN(in) -> sign -> XNOR conv -> ReLU; no BN after the conv (the next block's BN follows)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        groups: int = 1,
        shuffle_groups: int = 1,
        center_weights: bool = True,
    ):
        super().__init__()
        self.shuffle = ChannelShuffle(shuffle_groups)
        self.norm = nn.BatchNorm2d(in_chs)  # registered before conv, as in the official state dict
        self.binarize = BinaryActivation()
        self.conv = BinaryConv2d(
            in_chs, out_chs, kernel_size, padding=kernel_size // 2, groups=groups, center=center_weights
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(self.binarize(self.norm(self.shuffle(x)))))


class NIN(FeatureStages, nn.Module):
    """Network-in-Network for 32x32 inputs, full precision or XNOR-binarized.

    Args:
        channels: output channels of the first eight conv blocks.
        groups: groups of the nine convs; with ``shuffle``, each block first shuffles its input with the
            previous conv's group count (ShuffleNet style).
        conv4_kernel: kernel of the fourth conv (5 in the table's baselines, 3 in the XNOR models).
        binary: binarize blocks 1-7 (XNOR-Net); blocks 0 and 8 stay full precision.
        center_weights: XNOR weight centring and clamping (497eebd); False gives ``sign(W)*mean|W|``.
    """

    def __init__(
        self,
        channels: Sequence[int] = NIN_CHANNELS,
        groups: Sequence[int] = (1,) * 9,
        conv4_kernel: int = 5,
        binary: bool = False,
        shuffle: bool = True,
        center_weights: bool = True,
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = "avg",
    ):
        super().__init__()
        if len(channels) != 8 or len(groups) != 9:
            raise ValueError("NIN needs 8 channel widths and 9 group counts")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = channels[-1]
        self._groups = tuple(groups)
        self._shuffle_groups = (1, *groups[:8]) if shuffle else (1,) * 9
        self._center_weights = center_weights
        kernels = [conv4_kernel if k is None else k for k in KERNELS]
        in_chs = [in_chans, *channels]

        layers: list[nn.Module] = []
        for i in range(8):  # the ninth block (the classifier) is built by reset_classifier
            if i == 3:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            elif i == 6:
                layers.append(nn.AvgPool2d(3, stride=2, padding=1))
            block = BinaryConvBlock if binary and BINARY_BLOCKS[i] else ConvBnReLU
            extra = {"center_weights": center_weights} if block is BinaryConvBlock else {}
            layers.append(block(in_chs[i], channels[i], kernels[i], groups[i], self._shuffle_groups[i], **extra))
        self.sequential = nn.Sequential(*layers)
        self.feature_info = [
            dict(num_chs=channels[2], reduction=1, module="sequential.2"),
            dict(num_chs=channels[5], reduction=2, module="sequential.6"),
            dict(num_chs=channels[7], reduction=4, module="sequential.9"),
        ]
        self.reset_classifier(num_classes, global_pool)

    def get_classifier(self) -> nn.Module:
        return self.sequential[CLASSIFIER_SLOT]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier block (full-precision 1x1 conv -> BN -> ReLU); ``num_classes=0`` removes it."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool, self.flatten = create_global_pool(global_pool, "NIN")
        classifier = (
            ConvBnReLU(self.num_features, num_classes, 1, self._groups[8], self._shuffle_groups[8])
            if num_classes > 0
            else nn.Identity()
        )
        if len(self.sequential) > CLASSIFIER_SLOT:
            self.sequential[CLASSIFIER_SLOT] = classifier
        else:
            self.sequential.append(classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.sequential):
            if i < 10:  # CLASSIFIER_SLOT (TorchScript takes literals); a loop, as a slice builds a module per call
                x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not pre_logits:
            x = self.sequential[10](x)  # CLASSIFIER_SLOT; NIN classifies every position, then averages
        return self.flatten(self.global_pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _feature_steps(self):
        return list(self.sequential)[:CLASSIFIER_SLOT], [int(i["module"].split(".")[1]) for i in self.feature_info]

    def _prune_after(self, level: int) -> None:
        classifier = self.sequential[CLASSIFIER_SLOT]
        identity_after(self.sequential, int(self.feature_info[level]["module"].split(".")[1]))
        self.sequential[CLASSIFIER_SLOT] = classifier


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: NIN) -> dict[str, torch.Tensor]:
    """MCTS checkpoints (``{'model_state_dict': ...}``, unwrapped by the loader) already use our key names."""
    return state_dict


register_converter(FAMILY, checkpoint_filter_fn)


def _create(variant: str, **kwargs) -> NIN:
    return NIN(**{**_ARCHS[variant], **kwargs})


_ARCHS = {
    "nin": dict(conv4_kernel=5),
    "nin_gc": dict(channels=NIN_GC_CHANNELS, groups=NIN_GC_GROUPS, conv4_kernel=5),
    "nin_k3": dict(conv4_kernel=3),
    "nin_gc_k3": dict(channels=NIN_GC_CHANNELS, groups=NIN_GC_GROUPS, conv4_kernel=3),
    "nin_xnornet": dict(conv4_kernel=3, binary=True),
    "nin_gc_xnornet": dict(channels=NIN_GC_CHANNELS, groups=NIN_GC_GROUPS, conv4_kernel=3, binary=True),
}

_README = "onion-rain/MCTS READMEs/xnornet_README.md @497eebd"


def _cfg(**kwargs) -> dict:
    return model_cfg(
        dataset="cifar10",
        num_classes=10,
        input_size=(3, 32, 32),
        crop_pct=1.0,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        first_conv="sequential.0.conv",
        classifier="sequential.10.conv",
        pool_size=(8, 8),
        paper="XNOR-Net (arXiv 1603.05279); Network In Network (arXiv 1312.4400)",
        **kwargs,
    )


def _ref(params, macs, top1, source=_README, notes=""):
    # The README's figures come from ptflops, which skips nn.Conv2d subclasses: binary convs count 0 MACs.
    return dict(params=params, macs=macs, macs_convention="ptflops", top1=top1, source=source, notes=notes)


default_cfgs = {
    "nin": _cfg(reference=_ref("969.82 k", "0.23 GMac", 92.37, notes="lr 0.1, 200 epochs, best test epoch")),
    "nin_gc": _cfg(
        reference=_ref("722.46 k", "0.2 GMac", 92.72, notes="grouped + shuffle, lr 0.1, 200 epochs, best test epoch")
    ),
    "nin_k3": _cfg(
        reference=_ref(
            "674.91 k",
            "149.66 MMac",
            92.48,
            source="onion-rain/MCTS READMEs/quantize_README.md @2d34ec7",
            notes="conv4 3x3, lr 0.1, 100 epochs, best test epoch",
        )
    ),
    "nin_gc_k3": _cfg(
        reference=dict(macs_convention="ptflops"),
        notes="conv4 3x3 grouped baseline of MCTS HEAD; no published figures",
    ),
    "nin_xnornet": _cfg(
        reference=_ref("674.91 k", "17.26 MMac", 82.75, notes="lr 0.1 (as logged), 200 epochs, best test epoch")
    ),
    "nin_gc_xnornet": _cfg(
        reference=_ref("589.85 k", "24.71 MMac", 75.76, notes="lr 0.1, 150 epochs, best test epoch")
    ),
}


@register_model
def nin(**kwargs) -> NIN:
    """NIN, conv4 5x5 (969,822 params)."""
    return _create("nin", **kwargs)


@register_model
def nin_gc(**kwargs) -> NIN:
    """NIN with grouped convs and channel shuffle, conv4 5x5."""
    return _create("nin_gc", **kwargs)


@register_model
def nin_k3(**kwargs) -> NIN:
    """NIN with a 3x3 conv4: the full-precision twin of nin_xnornet (quantize_README baseline)."""
    return _create("nin_k3", **kwargs)


@register_model
def nin_gc_k3(**kwargs) -> NIN:
    """Grouped NIN with a 3x3 conv4: the full-precision twin of nin_gc_xnornet."""
    return _create("nin_gc_k3", **kwargs)


@register_model
def nin_xnornet(**kwargs) -> NIN:
    """XNOR-Net NIN: blocks 1-7 binary, conv4 3x3."""
    return _create("nin_xnornet", **kwargs)


@register_model
def nin_gc_xnornet(**kwargs) -> NIN:
    """XNOR-Net grouped NIN with channel shuffle: blocks 1-7 binary, conv4 3x3."""
    return _create("nin_gc_xnornet", **kwargs)


# xnor-net.md's CIFAR-10 table: a recipe per row.
_TABLE_RECIPES = ("nin_cifar10", "nin_gc_cifar10", "nin_xnornet_cifar10", "nin_gc_xnornet_cifar10")
register_table("xnor-net-cifar10", [TableRow(r, r) for r in _TABLE_RECIPES])
# The same rows in the schedules of a 2-core CPU (issue 16): full-precision teachers first, then their students.
register_table("xnor-net-cifar10-cpu", [TableRow(f"{r}_cpu", f"{r}_cpu") for r in _TABLE_RECIPES])
# The binary CPU recipe with its levers off, one at a time and all together: the ablation of issue 16, run at a
# shorter length (`compactnets reproduce nin-xnornet-levers --epochs 10`). The EMA and BN re-estimation leave the
# trained weights as they are, so their rows are views of the final weights of the runs with them on (exactly
# what runs without them would give); distillation changes the training, so it needs a run of its own.
_WITH = ("--views-every-eval",)  # each lever's effect along the run too
_WITHOUT_TEACHER = ("--teacher", "none", *_WITH)
_LEVERS = (  # row, its options, and the row whose run it measures as (weights, BN statistics)
    ("all_levers", _WITH, None, None),
    ("no_ema", _WITH, "all_levers", ("raw", "re-estimated")),
    ("no_bn_reestimation", _WITH, "all_levers", ("ema", "running")),
    ("no_distillation", _WITHOUT_TEACHER, None, None),
    ("no_levers", _WITHOUT_TEACHER, "no_distillation", ("raw", "running")),
)
register_table(
    "nin-xnornet-levers",
    [
        TableRow(
            f"nin_xnornet_{name}",
            "nin_xnornet_cifar10_cpu",
            options=options,
            run=run and f"nin_xnornet_{run}",
            view=view,
        )
        for name, options, run, view in _LEVERS
    ],
)
