"""Inference-time folding of batch norm into the linear layer before it, plain convs for layers that are convs in
disguise, and channel-permutation helpers."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm):
    """Weight and bias of ``bn(layer(x))`` as one layer, with the BN's running statistics (eval-mode BN).

    ``weight`` has the output channels first (conv or linear); ``bias`` may be None."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    folded_bias = shift if bias is None else bias * scale + shift
    return weight * scale.view(-1, *([1] * (weight.ndim - 1))), folded_bias


class ConcatConv2d(nn.Module):
    """Convs of one input whose outputs are concatenated (a BN after it folds into each, slice by slice)."""

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


def plain_conv(weight: torch.Tensor, like: nn.Module, groups: int) -> nn.Conv2d:
    """An ``nn.Conv2d`` holding a copy of ``weight``, with the geometry (kernel, padding, dilation) of ``like``."""
    out_chs, in_per_group = weight.shape[:2]
    conv = nn.Conv2d(in_per_group * groups, out_chs, like.kernel_size, padding=like.padding, dilation=like.dilation,
                     groups=groups, bias=False)  # fmt: skip
    conv.weight = nn.Parameter(weight.detach().clone())
    return conv


def shuffle_perm(channels: int, groups: int) -> torch.Tensor:
    """``channel_shuffle(x, groups) == x[:, shuffle_perm(C, groups)]``."""
    return torch.arange(channels).view(groups, channels // groups).t().reshape(-1)


def compose(perm: torch.Tensor | None, then: torch.Tensor | None) -> torch.Tensor | None:
    """Channel orders as gather indices (``true = computed[:, perm]``; None = identity): the order after
    gathering with ``perm`` and then with ``then``."""
    if perm is None:
        return then
    return perm if then is None else perm[then]
