"""Micro-Factorized convolutions (MicroNet, Li et al., ICCV 2021, arXiv 2108.05894) as liyunsheng13/micronet
``backbone/micronet.py`` @ed89b26 codes them, with their inference forms.

* :class:`SpatialSeparableConv`: ``k x 1`` conv -> BN -> ``1 x k`` depthwise conv -> BN [-> channel shuffle].
  With ``groups = in_chs`` it is the Micro-Factorized depthwise conv (official ``DepthSpatialSepConv``); with
  ``groups = 1`` and a shuffle, the stem (``SpatialSepConvSF``). No activation in between.
* :class:`GroupConvBN`: grouped 1x1 conv -> BN (``GroupConv``). The paper's Micro-Factorized pointwise conv
  (grouped 1x1 -> shuffle -> grouped 1x1) spans two blocks in the code: a block's closing GroupConv and shuffle,
  then the next block's opening GroupConv.
* :class:`MaxGroupPooling`: max over groups of consecutive channels (the stem's alternative to ReLU6).

Inference forms (``fuse()``): BN folded into the convs; the two 1-D convs of a spatially separable pair merged
into one ``k x k`` conv (exact: the first BN's bias, which the second conv zero-pads at the left/right borders,
is corrected per border column); grouped 1x1 convs as one batched matmul instead of one GEMM per group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fold import compose, fold_bn, shuffle_perm
from .shuffle import ChannelShuffle


class MaxGroupPooling(nn.Module):
    def __init__(self, channels_per_group: int = 2):
        super().__init__()
        self.channels_per_group = channels_per_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_per_group == 1:
            return x
        b, c, h, w = x.shape
        return x.view(b, c // self.channels_per_group, self.channels_per_group, h, w).amax(2)


class SpatialSeparableConv(nn.Module):
    """``conv`` = [Conv (k,1) stride (s,1), BN, Conv (1,k) stride (1,s) groups=mid_chs, BN(, ChannelShuffle)].

    Args:
        in_chs, mid_chs, out_chs: channels of the input, after the first conv and after the second.
        groups: groups of the first conv (1 for the stem, ``in_chs`` for the depthwise conv).
        shuffle_groups: channel shuffle at the end (the stem shuffles with ``mid_chs``); 1 = none.
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        groups: int,
        shuffle_groups: int = 1,
    ):
        super().__init__()
        k, pad = kernel_size, kernel_size // 2
        layers = [
            nn.Conv2d(in_chs, mid_chs, (k, 1), (stride, 1), (pad, 0), bias=False, groups=groups),
            nn.BatchNorm2d(mid_chs),
            nn.Conv2d(mid_chs, out_chs, (1, k), (1, stride), (0, pad), bias=False, groups=mid_chs),
            nn.BatchNorm2d(out_chs),
        ]
        if shuffle_groups > 1:
            layers.append(ChannelShuffle(shuffle_groups))
        self.conv = nn.Sequential(*layers)
        self.in_chs, self.out_chs, self.groups = in_chs, out_chs, groups
        self.shuffle_groups = shuffle_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    @torch.no_grad()
    def fuse(self, in_perm: torch.Tensor | None = None) -> tuple[MergedSeparableConv, torch.Tensor | None]:
        """The merged ``k x k`` conv and the channel order of its output (None: in order).

        ``in_perm``: the true input is ``x[:, in_perm]``. A dense first conv (``groups = 1``) takes any input
        order and returns its output in order (the shuffle folded into its filters); a depthwise one
        (``groups = in_chs``) computes each input channel's outputs where that channel lies."""
        conv1, bn1, conv2, bn2 = self.conv[:4]
        w1, b1 = fold_bn(conv1.weight, None, bn1)  # (mid, in/groups, k, 1)
        w2, b2 = fold_bn(conv2.weight, None, bn2)  # (out, 1, 1, k)
        per_mid = conv2.out_channels // conv2.in_channels
        w1 = w1.repeat_interleave(per_mid, 0)  # the first-conv filter each output builds on
        b1 = b1.repeat_interleave(per_mid, 0)
        weight = w1 * w2  # (out, in/groups, k, 1) * (out, 1, 1, k) -> (out, in/groups, k, k)
        taps = w2.flatten(1)  # (out, k)
        bias = b2 + b1 * taps.sum(1)
        edge_taps = b1[:, None] * taps  # the first BN's bias through each tap: missing at the borders
        order = shuffle_perm(self.out_chs, self.shuffle_groups) if self.shuffle_groups > 1 else None
        if self.groups == 1:
            if in_perm is not None:
                weight = weight[:, torch.argsort(in_perm)]
            rows, out_perm = (slice(None) if order is None else order), None
        elif self.groups == self.in_chs:
            per_in = self.out_chs // self.in_chs
            index = torch.arange(self.out_chs)
            place = index if in_perm is None else in_perm[index // per_in] * per_in + index % per_in
            rows, out_perm = torch.argsort(place), compose(None if in_perm is None else place, order)
        else:
            raise ValueError("only dense or depthwise spatially separable convs take a channel order")
        merged = MergedSeparableConv(
            weight[rows], bias[rows], edge_taps[rows], conv1.stride[0], conv1.padding[0], self.groups
        )
        return merged, out_perm


class MergedSeparableConv(nn.Module):
    """``k x k`` conv = (k x 1 conv, BN, 1 x k conv, BN) folded, plus the per-column bias correction.

    The first BN's bias reaches the output through the second conv's taps; at the left and right borders some
    taps read the second conv's zero padding instead, so those columns lose ``bias1 * tap``. The correction
    row depends only on the input width and is cached per width.
    """

    def __init__(self, weight, bias, edge_taps, stride: int, padding: int, groups: int):
        super().__init__()
        self.register_buffer("weight", weight.contiguous(), persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("edge_taps", edge_taps, persistent=False)
        self.stride, self.padding, self.groups = stride, padding, groups
        self.has_edges = bool(edge_taps.abs().amax() > 0) and padding > 0
        self._edges: dict = {}

    def _edge_correction(self, width: int, ref: torch.Tensor) -> torch.Tensor:
        key = (width, ref.device, ref.dtype)
        if key not in self._edges:
            k = self.weight.shape[-1]
            out_width = (width + 2 * self.padding - k) // self.stride + 1
            columns = torch.arange(out_width)[:, None] * self.stride + torch.arange(k)[None, :] - self.padding
            missing = ((columns < 0) | (columns >= width)).to(self.edge_taps)
            self._edges[key] = -(self.edge_taps @ missing.t()).view(1, -1, 1, out_width).to(ref)
        return self._edges[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        # int(): an ONNX trace then takes the cached row as a constant instead of tracing its computation
        return out.add_(self._edge_correction(int(x.shape[-1]), out)) if self.has_edges else out


class GroupConvBN(nn.Module):
    """``conv`` = [grouped 1x1 Conv (no bias), BN]."""

    def __init__(self, in_chs: int, out_chs: int, groups: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, bias=False, groups=groups), nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def fuse(self) -> GroupedPointwise:
        weight, bias = fold_bn(self.conv[0].weight, None, self.conv[1])
        return GroupedPointwise(weight, bias, self.conv[0].groups)


class GroupedPointwise(nn.Module):
    """A grouped 1x1 conv with bias as one batched matmul over the groups.

    At batch 1 and one thread PyTorch runs a grouped 1x1 conv as one GEMM call per group; ``baddbmm`` does all
    groups (and the bias) in one call. Larger batches go to ``conv2d``, which is then efficient.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, groups: int):
        super().__init__()
        out_chs, in_per_group = weight.shape[:2]
        self.groups, self.out_chs = groups, out_chs
        self.register_buffer("weight", weight.contiguous(), persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("weight_3d", weight.reshape(groups, out_chs // groups, in_per_group), persistent=False)
        self.register_buffer("bias_3d", bias.reshape(groups, out_chs // groups, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if b > 1:
            return F.conv2d(x, self.weight, self.bias, groups=self.groups)
        out = torch.baddbmm(self.bias_3d, self.weight_3d, x.reshape(self.groups, c // self.groups, h * w))
        return out.view(1, self.out_chs, h, w)


class ChannelGather(nn.Module):
    """``x[:, index]``: a channel order made real where the next layer cannot take it as it is."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)
