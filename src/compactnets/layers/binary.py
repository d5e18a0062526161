"""XNOR-Net binarization (Rastegari et al., arXiv 1603.05279) in the autograd form of onion-rain/MCTS @497eebd.

Activations: ``sign(x)`` forward (sign(0) = 0), gradient passed where ``|x| < 1`` (straight-through estimator).
Weights: ``Wc = clamp(W - mean_over_input_channels(W), -1, 1)``, ``alpha_o = mean|Wc[o]|``,
``W_hat = sign(Wc) * alpha`` with an identity straight-through gradient for the sign; centring, clamp and
alpha stay differentiable. The latent fp32 weight is never modified in place.
"""

import torch
import torch.nn.functional as F
from torch import nn


class _SignSTE(torch.autograd.Function):
    """sign(x); the gradient flows only where |x| < 1 (the gradient of hardtanh)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() < 1).to(grad_output.dtype)


class _SignIdentity(torch.autograd.Function):
    """sign(x) with an identity gradient (the clamp before it already masks |x| > 1)."""

    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


def _needs_grad(x: torch.Tensor) -> bool:
    # Plain torch.sign when no gradient is wanted keeps inference graphs free of custom autograd nodes (export).
    return torch.is_grad_enabled() and x.requires_grad


def binarize_activation(x: torch.Tensor) -> torch.Tensor:
    return _SignSTE.apply(x) if _needs_grad(x) else torch.sign(x)


def xnor_weight(weight: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Scaled binary weight ``sign(Wc) * alpha`` with one alpha per output channel."""
    if center:
        weight = (weight - weight.mean(dim=1, keepdim=True)).clamp(-1.0, 1.0)
    alpha = weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    sign = _SignIdentity.apply(weight) if _needs_grad(weight) else torch.sign(weight)
    return sign * alpha


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
