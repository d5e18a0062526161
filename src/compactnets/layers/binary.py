"""XNOR-Net binarization (Rastegari et al., arXiv 1603.05279) in the autograd form of onion-rain/MCTS @497eebd.

Activations: ``sign(x)`` forward (sign(0) = 0), gradient passed where ``|x| < 1`` (straight-through estimator).
Weights: ``Wc = clamp(W - mean_over_input_channels(W), -1, 1)``, ``alpha_o = mean|Wc[o]|``,
``W_hat = sign(Wc) * alpha`` with an identity straight-through gradient for the sign; centring, clamp and
alpha stay differentiable. The latent fp32 weight is never modified in place.
"""

import torch
import torch.nn.functional as F
from torch import nn


class _SignStraightThrough(torch.autograd.Function):
    """``sign(x)`` forward; backward ``hardtanh``'s gradient (passed where ``|x| < 1``) with ``clip``, else the
    identity. One elementwise pass each way: training a binary net on a CPU is memory-bound, and the detach
    formulation below costs three more passes over every activation (a nin_xnornet step: 662 -> 490 ms)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, clip: bool) -> torch.Tensor:
        ctx.clip = clip
        if clip:
            ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.clip:
            return grad, None
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, -1.0, 1.0), None


def _sign_straight_through(x: torch.Tensor, clip: bool) -> torch.Tensor:
    """The same gradients written with ``detach``, for TorchScript (which cannot call an autograd Function):
    ``s + (p - p.detach())`` adds an exact zero to ``s = sign(x)``."""
    passed = F.hardtanh(x) if clip else x
    return torch.sign(x).detach() + (passed - passed.detach())


@torch.fx.wrap  # a leaf for fx: the branch on requires_grad cannot be traced symbolically
def binary_sign(x: torch.Tensor, clip: bool) -> torch.Tensor:
    """``sign(x)`` (sign(0) = 0) with a straight-through gradient (see :class:`_SignStraightThrough`); plain
    ``torch.sign`` when no gradient is wanted, which keeps inference and export graphs minimal."""
    if torch.is_grad_enabled() and x.requires_grad:
        if torch.jit.is_scripting():
            return _sign_straight_through(x, clip)
        return _SignStraightThrough.apply(x, clip)
    return torch.sign(x)


def binarize_activation(x: torch.Tensor) -> torch.Tensor:
    """sign(x); the gradient flows only where |x| < 1 (the gradient of hardtanh)."""
    return binary_sign(x, True)


def xnor_weight(weight: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Scaled binary weight ``sign(Wc) * alpha`` with one alpha per output channel; the sign's gradient is the
    identity (the clamp before it already masks ``|Wc| > 1``)."""
    if center:
        weight = (weight - weight.mean(dim=1, keepdim=True)).clamp(-1.0, 1.0)
    alpha = weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    return binary_sign(weight, False) * alpha


class BinaryActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return binarize_activation(x)


class BinaryConv2d(nn.Conv2d):
    """Convolution with XNOR-binarized weights (fp32 latent weights, fp32 bias).

    Its inputs are expected to be binary already (see :class:`BinaryActivation`); profilers count its
    multiply-accumulates as binary operations. ``center=False`` gives the later MCTS variant
    (``sign(W) * mean|W|``, commit e78b144).
    """

    def __init__(self, *args, center: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.center = center

    def binary_weight(self) -> torch.Tensor:
        return xnor_weight(self.weight, self.center)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.binary_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
