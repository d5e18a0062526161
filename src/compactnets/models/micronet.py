"""MicroNet M0-M3.

Paper: Li, Chen, Dai, Chen, Liu, Yuan, Liu, Zhang, Vasconcelos, "MicroNet: Improving Image Recognition with
Extremely Low FLOPs" (ICCV 2021, arXiv 2108.05894).

Source: liyunsheng13/micronet at ed89b26 (MIT): ``backbone/{micronet,activation,microconfig}.py`` and the
``scripts/*_micronet_m*.sh`` options. The row tables below are ``microconfig.py``'s, the block rules
``DYMicroBlock``'s, and every module keeps its official slot, so official state dicts load key for key
(``compactnets convert --family micronet``). Faithful in eval mode to 1e-5 on the logits for the same weights.

Deliberate differences, all without effect on the function: the shift-max pairs channels with one
``index_select`` instead of advanced indexing; hard sigmoid/swish are PyTorch's ``Hardsigmoid``/``Hardswish``
(``min(max(x + 3, 0), 6) / 6`` vs the official ``relu6(x + 3) / 6``: ulp-level); ``forward_features`` ends with
the ReLU6 the official code applies at the start of its pooling.

``MicroNet.fuse()`` returns :class:`FusedMicroNet`, an inference-only copy with the same outputs in far fewer,
cheaper ops (BN folded, separable conv pairs merged, every channel shuffle folded into a gather it shares with
a shift-max, grouped 1x1 convs as one batched matmul).
"""

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..counting import flop_counter_macs, forward_hooks, register_convention
from ..layers import (
    ChannelGather,
    ChannelShuffle,
    DynamicShiftMax,
    GroupConvBN,
    MaxGroupPooling,
    SpatialSeparableConv,
    compose,
    create_global_pool,
    fold_bn,
    shuffle_perm,
)
from ._features import FeatureStages, identity_after
from ._registry import model_cfg, register_converter, register_model

FAMILY = "micronet"

# Columns of microconfig.py: stride, repeats, out channels, kernel, (c1, c2) depthwise expansions,
# (g1, g2) groups of the first pointwise conv / shift-max groups, c3 (unused by the code), (g3, g4) groups of
# the second pointwise conv / its shift-max, (y1, y2, y3) activations after the first pointwise, the depthwise
# and the second pointwise conv (0: ReLU6, or none for y3; 1: shift-max K=1; 2: shift-max K=2), r (the
# shift-max reduction is 8 * r). g1 == 0: no first pointwise conv (block A); g4 == 0: pointwise conv only (B).
# fmt: off
MICRONET_ROWS = {
    "m0": (  # msnx_dy6_exp4_4M_221
        # s, n,   c, ks, c1, c2, g1, g2,  c3, g3, g4, y1, y2, y3, r
        (2, 1,   8, 3, 2, 2,  0,  4,   8,  2,  2, 2, 0, 1, 1),
        (2, 1,  12, 3, 2, 2,  0,  8,  12,  4,  4, 2, 2, 1, 1),
        (2, 1,  16, 5, 2, 2,  0, 12,  16,  4,  4, 2, 2, 1, 1),
        (1, 1,  32, 5, 1, 4,  4,  4,  32,  4,  4, 2, 2, 1, 1),
        (2, 1,  64, 5, 1, 4,  8,  8,  64,  8,  8, 2, 2, 1, 1),
        (1, 1,  96, 3, 1, 4,  8,  8,  96,  8,  8, 2, 2, 1, 2),
        (1, 1, 384, 3, 1, 4, 12, 12,   0,  0,  0, 2, 2, 1, 2),
    ),
    "m1": (  # msnx_dy6_exp6_6M_221
        (2, 1,   8, 3, 2, 2,  0,  6,   8,  2,  2, 2, 0, 1, 1),
        (2, 1,  16, 3, 2, 2,  0,  8,  16,  4,  4, 2, 2, 1, 1),
        (2, 1,  16, 5, 2, 2,  0, 16,  16,  4,  4, 2, 2, 1, 1),
        (1, 1,  32, 5, 1, 6,  4,  4,  32,  4,  4, 2, 2, 1, 1),
        (2, 1,  64, 5, 1, 6,  8,  8,  64,  8,  8, 2, 2, 1, 1),
        (1, 1,  96, 3, 1, 6,  8,  8,  96,  8,  8, 2, 2, 1, 2),
        (1, 1, 576, 3, 1, 6, 12, 12,   0,  0,  0, 2, 2, 1, 2),
    ),
    "m2": (  # msnx_dy9_exp6_12M_221
        (2, 1,  12, 3, 2, 2,  0,  8,  12,  4,  4, 2, 0, 1, 1),
        (2, 1,  16, 3, 2, 2,  0, 12,  16,  4,  4, 2, 2, 1, 1),
        (1, 1,  24, 3, 2, 2,  0, 16,  24,  4,  4, 2, 2, 1, 1),
        (2, 1,  32, 5, 1, 6,  6,  6,  32,  4,  4, 2, 2, 1, 1),
        (1, 1,  32, 5, 1, 6,  8,  8,  32,  4,  4, 2, 2, 1, 2),
        (1, 1,  64, 5, 1, 6,  8,  8,  64,  8,  8, 2, 2, 1, 2),
        (2, 1,  96, 5, 1, 6,  8,  8,  96,  8,  8, 2, 2, 1, 2),
        (1, 1, 128, 3, 1, 6, 12, 12, 128,  8,  8, 2, 2, 1, 2),
        (1, 1, 768, 3, 1, 6, 16, 16,   0,  0,  0, 2, 2, 1, 2),
    ),
    "m3": (  # msnx_dy12_exp6_20M_020
        (2, 1,  16, 3, 2, 2,  0, 12,  16,  4,  4, 0, 2, 0, 1),
        (2, 1,  24, 3, 2, 2,  0, 16,  24,  4,  4, 0, 2, 0, 1),
        (1, 1,  24, 3, 2, 2,  0, 24,  24,  4,  4, 0, 2, 0, 1),
        (2, 1,  32, 5, 1, 6,  6,  6,  32,  4,  4, 0, 2, 0, 1),
        (1, 1,  32, 5, 1, 6,  8,  8,  32,  4,  4, 0, 2, 0, 2),
        (1, 1,  64, 5, 1, 6,  8,  8,  48,  8,  8, 0, 2, 0, 2),
        (1, 1,  80, 5, 1, 6,  8,  8,  80,  8,  8, 0, 2, 0, 2),
        (1, 1,  80, 5, 1, 6, 10, 10,  80,  8,  8, 0, 2, 0, 2),
        (2, 1, 120, 5, 1, 6, 10, 10, 120, 10, 10, 0, 2, 0, 2),
        (1, 1, 120, 5, 1, 6, 12, 12, 120, 10, 10, 0, 2, 0, 2),
        (1, 1, 144, 3, 1, 6, 12, 12, 144, 12, 12, 0, 2, 0, 2),
        (1, 1, 864, 3, 1, 6, 12, 12,   0,  0,  0, 0, 2, 0, 2),
    ),
}
# The scripts' model options: stem channels and its (a, b) groups, head width, dropout, shift-max starting
# values (a1, a2) and (b1, b2) of the shift-maxes after the first pointwise and the depthwise conv.
MICRONET_ARCHS = {
    "m0": dict(stem_chs=4, stem_groups=(2, 2), head_chs=640, drop_rate=0.05, init_a=(1.0, 1.0), init_b=(0.0, 0.0)),
    "m1": dict(stem_chs=6, stem_groups=(3, 2), head_chs=960, drop_rate=0.05, init_a=(1.0, 1.0), init_b=(0.0, 0.0)),
    "m2": dict(stem_chs=8, stem_groups=(4, 2), head_chs=1024, drop_rate=0.1, init_a=(1.0, 1.0), init_b=(0.0, 0.0)),
    "m3": dict(stem_chs=12, stem_groups=(4, 3), head_chs=1024, drop_rate=0.1, init_a=(1.0, 0.5), init_b=(0.0, 0.5)),
}
# fmt: on
# Not from the paper: M0 for 32x32 inputs (CIFAR), the stem and the first block at stride 1 (output stride 8,
# 4x4 final maps instead of 1x1); everything else as M0.
MICRONET_ROWS["m0_cifar"] = ((1, *MICRONET_ROWS["m0"][0][1:]), *MICRONET_ROWS["m0"][1:])
MICRONET_ARCHS["m0_cifar"] = dict(MICRONET_ARCHS["m0"], stem_stride=1)
# Common options of every script: REDUCTION 8, ACT_MAX 2.0, INIT_A_BLOCK3 1.0,0.0 (the shift-max after the
# second pointwise conv starts as the identity, a = (1, 0), b = (0, 0)).
REDUCTION = 8
ACT_MAX = 2.0
INIT_LAST = ((1.0, 0.0), (0.0, 0.0))


class Stem(nn.Module):
    """``stem`` = [spatially separable conv (3 -> a -> a*b, stride 2) + shuffle(a), ReLU6 or MaxGroupPooling(2)]."""

    def __init__(self, in_chans: int, out_chs: int, groups: tuple[int, int], stride: int = 2):
        super().__init__()
        a, b = groups
        pool = a * b == 2 * out_chs  # the official rule; every released model has a * b == out_chs: ReLU6
        self.stem = nn.Sequential(
            SpatialSeparableConv(in_chans, a, a * b, 3, stride, groups=1, shuffle_groups=a),
            MaxGroupPooling(2) if pool else nn.ReLU6(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def fuse(self) -> "FusedMicroBlock":
        conv, _ = self.stem[0].fuse()
        pool = MaxGroupPooling(2) if isinstance(self.stem[1], MaxGroupPooling) else nn.ReLU6(inplace=True)
        return FusedMicroBlock([conv, pool], residual=False, order=None)


def _shift_max(channels, branches, init, reduction, groups):
    return DynamicShiftMax(channels, reduction, branches, init[0], init[1], groups, ACT_MAX)


def _shuffle(groups: int, enabled: bool = True) -> nn.Module:
    return ChannelShuffle(groups) if enabled else nn.Identity()


class MicroBlock(nn.Module):
    """One row of the table (official ``DYMicroBlock``); ``layers`` keeps the official slots, with
    ``nn.Identity`` where the official code has an empty ``nn.Sequential()``.

    Args:
        expand: (c1, c2) channel expansions of the depthwise conv's two halves (block A).
        groups_in: (g1, g2) groups of the first pointwise conv (0: block A, no such conv) and of the shift-maxes
            that follow it and the depthwise conv.
        groups_out: (g3, g4) groups of the second pointwise conv and of the shift-max after it (0: block B).
        acts: (y1, y2, y3) as in :data:`MICRONET_ROWS`.
        init: ((a1, a2), (b1, b2)) starting values of the first two shift-maxes.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        expand: tuple[int, int],
        groups_in: tuple[int, int],
        groups_out: tuple[int, int],
        acts: tuple[int, int, int],
        reduction: int,
        init: tuple[Sequence[float], Sequence[float]],
    ):
        super().__init__()
        (c1, c2), (g1, g2), (g3, g4), (y1, y2, y3) = expand, groups_in, groups_out, acts
        hidden = in_chs * c1 * c2
        self.residual = stride == 1 and in_chs == out_chs
        self.in_chs, self.out_chs = in_chs, out_chs

        def act(channels, y, groups):  # ReLU6, or shift-max with K = 2 for y == 2, K = 1 for y == 1
            return _shift_max(channels, y, init, reduction, groups) if y > 0 else nn.ReLU6(inplace=True)

        if g1 == 0:  # A: depthwise conv first
            layers = [
                SpatialSeparableConv(in_chs, in_chs * c1, hidden, kernel_size, stride, groups=in_chs),
                act(hidden, y2, g2),
                ChannelShuffle(g2),
                _shuffle(hidden // 2, y2 != 0),
                GroupConvBN(hidden, out_chs, g3),
                _shift_max(out_chs, 1, INIT_LAST, reduction // 2, g4) if y3 > 0 else nn.Identity(),
                ChannelShuffle(g4),
                _shuffle(out_chs // 2, out_chs % 2 == 0 and y3 != 0),
            ]
        elif g4 == 0:  # B: the last block, a pointwise conv to the head's width
            if out_chs != hidden:
                raise ValueError(f"a pointwise-only block outputs in_chs * c1 * c2 = {hidden} channels, not {out_chs}")
            layers = [
                GroupConvBN(in_chs, hidden, g1),
                _shift_max(hidden, 1, INIT_LAST, reduction, g2) if y3 > 0 else nn.Identity(),
            ]
        else:  # C: pointwise, depthwise, pointwise
            depthwise_groups = hidden // g2 if g2 != 1 else 1  # the official "expansion" rule
            if y1 and y2:
                mix = ChannelShuffle(hidden // 4)
            else:
                mix = _shuffle(hidden // 2, bool(y1 or y2))
            layers = [
                GroupConvBN(in_chs, hidden, g1),
                act(hidden, y1, g2),
                ChannelShuffle(g2),
                SpatialSeparableConv(hidden, hidden, hidden, kernel_size, stride, groups=hidden),
                nn.Identity(),
                act(hidden, y2, depthwise_groups),
                mix,
                GroupConvBN(hidden, out_chs, g3),
                _shift_max(out_chs, 1, INIT_LAST, reduction // 2 if out_chs < hidden else reduction, g4)
                if y3 > 0
                else nn.Identity(),
                ChannelShuffle(g4),
                _shuffle(out_chs // 2, y3 != 0),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out + x if self.residual else out

    @torch.no_grad()
    def fuse(self) -> "FusedMicroBlock":
        """The block for inference. Channel shuffles become gather indices: a shift-max takes the shuffles that
        follow it into its own gather; after a conv, the order is carried through per-channel layers (ReLU6,
        depthwise conv) into the next shift-max, and made real only before a grouped pointwise conv or at
        the block's end."""
        ops: list[nn.Module] = []
        order = None  # true tensor = computed[:, order]
        channels = self.in_chs
        layers = list(self.layers)
        i = 0
        while i < len(layers):
            layer = layers[i]
            i += 1
            if isinstance(layer, ChannelShuffle):
                order = compose(order, shuffle_perm(channels, layer.groups) if layer.groups > 1 else None)
            elif isinstance(layer, nn.ReLU6):
                ops.append(nn.ReLU6(inplace=True))
            elif isinstance(layer, SpatialSeparableConv):
                conv, order = layer.fuse(order)
                ops.append(conv)
                channels = layer.out_chs
            elif isinstance(layer, DynamicShiftMax):
                following = None
                while i < len(layers) and isinstance(layers[i], (ChannelShuffle, nn.Identity)):
                    if isinstance(layers[i], ChannelShuffle) and layers[i].groups > 1:
                        following = compose(following, shuffle_perm(channels, layers[i].groups))
                    i += 1
                ops.append(layer.fuse(order, following))
                order = None
            elif isinstance(layer, GroupConvBN):
                if order is not None:
                    ops.append(ChannelGather(order))
                    order = None
                ops.append(layer.fuse())
                channels = layer.conv[0].out_channels
            elif not isinstance(layer, nn.Identity):
                raise TypeError(f"cannot fuse {type(layer).__name__}")
        return FusedMicroBlock(ops, self.residual, order)


class SwishLinear(nn.Module):
    """``linear`` = [Linear, BatchNorm1d, h_swish] (official names)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Sequential(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.Hardswish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _init_linear(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, 0, 0.01)
    nn.init.zeros_(linear.bias)


def _global_pool(kind: str) -> nn.Module:
    """The official head pools, then applies h_swish; '' keeps the unpooled map."""
    pool, flatten = create_global_pool(kind, "MicroNet")
    return nn.Sequential(pool, nn.Hardswish(), flatten) if kind else nn.Identity()


class MicroNet(FeatureStages, nn.Module):
    """MicroNet: stem, one :class:`MicroBlock` per table row, ReLU6, average pool, h_swish, and the two-layer
    classifier ``[Linear -> BN1d -> h_swish] -> Dropout -> [Linear -> BN1d -> h_swish]`` (the logits really pass
    through BN1d and h_swish, as in the official code).

    Head semantics as timm's MobileNetV3 (whose hidden layer also follows the pooling): ``num_classes=0`` drops
    the last layer only, so the model returns the hidden layer (``head_hidden_size`` wide), which is also what
    ``forward_head(pre_logits=True)`` returns; ``global_pool=''`` drops the whole head (the hidden layer needs
    pooled features) and returns the unpooled map, ``num_features`` wide.
    """

    def __init__(
        self,
        rows: Sequence[Sequence[int]],
        stem_chs: int,
        stem_groups: tuple[int, int],
        head_chs: int,
        init_a: Sequence[float],
        init_b: Sequence[float],
        drop_rate: float,
        stem_stride: int = 2,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
    ):
        super().__init__()
        layers: list[nn.Module] = [Stem(in_chans, stem_chs, stem_groups, stem_stride)]
        self.feature_info = []
        channels, reduction = stem_chs, stem_stride
        for s, n, c, ks, c1, c2, g1, g2, _, g3, g4, y1, y2, y3, r in rows:
            for repeat in range(n):
                stride = s if repeat == 0 else 1
                if stride > 1:
                    self.feature_info.append(
                        dict(num_chs=channels, reduction=reduction, module=f"features.{len(layers) - 1}")
                    )
                    reduction *= stride
                block = MicroBlock(
                    channels, c, ks, stride, (c1, c2), (g1, g2), (g3, g4), (y1, y2, y3), REDUCTION * r, (init_a, init_b)
                )
                layers.append(block)
                channels = c
        self.feature_info.append(dict(num_chs=channels, reduction=reduction, module=f"features.{len(layers) - 1}"))
        self.features = nn.Sequential(*layers)
        self.act = nn.ReLU6()
        self.num_features = channels
        self.drop_rate = drop_rate
        self._head_chs = head_chs
        self.global_pool = _global_pool(global_pool)
        # Always three slots (hidden layer, dropout, last layer; nn.Identity where absent): the official key
        # names, and a forward without type tests on submodules (they do not survive TorchScript).
        self.classifier = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity())
        self.reset_classifier(num_classes)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """As the official code: conv N(0, sqrt(2 / (k_h k_w out_channels))), BN2d 1/0, Linear N(0, 0.01)/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                _init_linear(m)

    def get_classifier(self) -> nn.Module:
        return self.classifier[2]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new last layer (``num_classes`` wide; 0: none), keeping a trained hidden layer."""
        if global_pool is not None:
            self.global_pool = _global_pool(global_pool)
        pooled = not isinstance(self.global_pool, nn.Identity)
        if num_classes and not pooled:
            raise ValueError("a classifier needs global_pool='avg'")
        self.num_classes = num_classes
        if not pooled:
            self.classifier = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity())
            self.head_hidden_size = self.num_features
            return
        if not isinstance(self.classifier[0], SwishLinear):
            self.classifier[0] = SwishLinear(self.num_features, self._head_chs)
            _init_linear(self.classifier[0].linear[0])
            self.classifier[1] = nn.Dropout(self.drop_rate)
        self.classifier[2] = SwishLinear(self._head_chs, num_classes) if num_classes else nn.Identity()
        if num_classes:
            _init_linear(self.classifier[2].linear[0])
        self.head_hidden_size = self._head_chs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[0](self.global_pool(x))
        return x if pre_logits else self.classifier[2](self.classifier[1](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _feature_steps(self):
        ends = [int(info["module"].rsplit(".", 1)[1]) for info in self.feature_info]
        return [*self.features, self.act], ends

    def _prune_after(self, level: int) -> None:
        identity_after(self.features, int(self.feature_info[level]["module"].rsplit(".", 1)[1]))
        self.act = nn.Identity()

    @torch.no_grad()
    def fuse(self) -> "FusedMicroNet":
        """An inference-only copy with the same outputs as this model in eval mode (BN running statistics,
        no dropout), in far fewer ops; this model is left unchanged and can keep training."""
        return FusedMicroNet(self)

    def inference_form(self) -> "FusedMicroNet":
        """For :func:`compactnets.deploy.inference_form`: the fused model."""
        return self.fuse()


class FusedMicroBlock(nn.Module):
    """The ops of a fused :class:`MicroBlock`; ``order`` is the channel order its last op leaves (None: in
    order), made real here, in the residual sum where there is one.

    The ops' ``forward`` methods are called directly: at batch 1 the module-call machinery (hooks) of some
    70 small ops costs about 5 % of the latency. Hooks on the ops of a fused model therefore do not fire."""

    def __init__(self, ops: list[nn.Module], residual: bool, order: torch.Tensor | None):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.residual = residual
        self.register_buffer("order", order, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for op in self.ops:
            out = op.forward(out)
        if self.order is not None:
            out = out.index_select(1, self.order)
        return out.add_(x) if self.residual else out


class FusedHead(nn.Module):
    """ReLU6, then (with 'avg' pooling) mean, h_swish and the classifier layers with their BN1d folded in."""

    def __init__(self, model: MicroNet):
        super().__init__()
        self.pool = not isinstance(model.global_pool, nn.Identity)
        self.layers = 0
        for layer in (model.classifier[0], model.classifier[2]):
            if isinstance(layer, SwishLinear):
                weight, bias = fold_bn(layer.linear[0].weight, layer.linear[0].bias, layer.linear[1])
                self.register_buffer(f"weight{self.layers}", weight.t().contiguous(), persistent=False)
                self.register_buffer(f"bias{self.layers}", bias, persistent=False)
                self.layers += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(x)
        if not self.pool:
            return x
        x = F.hardswish(x.mean((2, 3)), inplace=True)
        for i in range(self.layers):
            x = F.hardswish(torch.addmm(getattr(self, f"bias{i}"), x, getattr(self, f"weight{i}")), inplace=True)
        return x


class FusedMicroNet(nn.Module):
    """Inference form of a :class:`MicroNet` (see :meth:`MicroNet.fuse`): ``forward``, ``forward_features``
    and ``forward_head`` give the eval-mode outputs of the model it was built from."""

    def __init__(self, model: MicroNet):
        super().__init__()
        device = next(model.parameters()).device
        if device.type != "cpu":  # channel orders are built on the CPU: fold a CPU copy, then move the result
            model = copy.deepcopy(model).cpu()
        stem, *blocks = model.features
        self.features = nn.ModuleList([stem.fuse(), *(block.fuse() for block in blocks)])
        self.head = FusedHead(model)
        self.num_classes, self.num_features = model.num_classes, model.num_features
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}))
        self.to(device).eval()

    def train(self, mode: bool = True) -> "FusedMicroNet":
        if mode:
            raise RuntimeError("a fused MicroNet is for inference only: train the model it was fused from")
        return super().train(False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.features:
            x = block.forward(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.forward(self._features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MicroNet) -> dict[str, torch.Tensor]:
    """Official weights (``module.`` and the ``state_dict`` wrapper already removed by the loader) use this
    model's key names as they are; the shift-max indices are rebuilt from the configuration, never read."""
    return state_dict


register_converter(FAMILY, checkpoint_filter_fn)


def micronet_madds(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode MACs (convs, classifier and shift-max FCs) plus the Dynamic Shift-Max fusion
    ``max_k(a_k x + b_k x2)``: J * K = 2K multiply-adds per output element (micronet.md section 4)."""
    fusion = 0

    def hook(module, inp, out):
        nonlocal fusion
        fusion += module.fusion_madds(out)

    with forward_hooks(model, lambda m: isinstance(m, DynamicShiftMax), hook):
        macs = flop_counter_macs(model, x)[0]
    return macs + fusion


# How the paper's MAdds were counted.
register_convention(
    "micronet",
    "MicroNet MAdds: convs + classifier FCs + shift-max FCs (FlopCounterMode) + shift-max fusion "
    "(2K multiply-adds per output element for K branches)",
    micronet_madds,
)


def _create(variant: str, **kwargs) -> MicroNet:
    return MicroNet(MICRONET_ROWS[variant], **{**MICRONET_ARCHS[variant], **kwargs})


_README = "liyunsheng13/micronet README.md @ed89b26"


def _cfg(**kwargs) -> dict:
    # The official eval (utils/dataloaders.py): Resize(int(224 / 0.875) = 256), CenterCrop(224), bilinear (PIL),
    # ImageNet mean/std on 0-1 RGB pixels.
    return model_cfg(
        first_conv="features.0.stem.0.conv.0",
        classifier="classifier.2.linear.0",
        **{"pool_size": (7, 7), **kwargs},
        paper="MicroNet: Improving Image Recognition with Extremely Low FLOPs (ICCV 2021, arXiv 2108.05894)",
    )


def _ref(params, macs, top1, notes=""):
    return dict(params=params, macs=macs, macs_convention="micronet", top1=top1, source=_README, notes=notes)


default_cfgs = {
    "micronet_m0": _cfg(reference=_ref("1.0M", "4M", 46.6, "released checkpoint evaluates to 46.69 (issue #28)")),
    "micronet_m1": _cfg(reference=_ref("1.8M", "6M", 51.4)),
    "micronet_m2": _cfg(
        reference=_ref("2.4M", "12M", 59.4, "12.74M MAdds by the convention (13M): the README's 12M is the label")
    ),
    "micronet_m3": _cfg(reference=_ref("2.6M", "21M", 62.5)),
    "micronet_m0_cifar": _cfg(
        dataset="cifar10",
        num_classes=10,
        input_size=(3, 32, 32),
        pool_size=(4, 4),
        crop_pct=1.0,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        reference=dict(macs_convention="micronet"),
        notes="not from the paper: M0 with the stem and first block at stride 1 for 32x32 inputs",
    ),
}


@register_model
def micronet_m0_cifar(**kwargs) -> MicroNet:
    """MicroNet-M0 adapted to 32x32 inputs (stem and first block at stride 1; not from the paper)."""
    return _create("m0_cifar", **{"num_classes": 10, **kwargs})


@register_model
def micronet_m0(**kwargs) -> MicroNet:
    """MicroNet-M0 (1,019,590 params)."""
    return _create("m0", **kwargs)


@register_model
def micronet_m1(**kwargs) -> MicroNet:
    """MicroNet-M1 (1,777,587 params)."""
    return _create("m1", **kwargs)


@register_model
def micronet_m2(**kwargs) -> MicroNet:
    """MicroNet-M2 (2,393,876 params)."""
    return _create("m2", **kwargs)


@register_model
def micronet_m3(**kwargs) -> MicroNet:
    """MicroNet-M3 (2,622,960 params)."""
    return _create("m3", **kwargs)
