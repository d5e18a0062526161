"""Dynamic Shift-Max (MicroNet, Li et al., ICCV 2021, arXiv 2108.05894), as ``DYShiftMax`` in
liyunsheng13/micronet ``backbone/activation.py`` @ed89b26 codes it.

For an input ``x`` of C channels split into G groups of ``gc = C / G`` channels, each channel is paired with one
channel of the next group, one position further within the group (both circularly)::

    index[i*gc + k] = ((i + 1) mod G) * gc + (k + 1) mod gc          x2 = x[:, index]
    out = max_k (a_k * x + b_k * x2)                                 k = 1..K (K = 1: no max)

The 2K coefficients per sample and channel come from a hyper-function of the input's global average:
``h = hsigmoid(FC2(ReLU(FC1(GAP(x)))))``, ``(h - 0.5) * 2 * act_max``, split along channels in the order
``[a1 | b1 | a2 | b2]``, plus the starting values ``init_a``/``init_b``. FC1 squeezes to
``max(4, make_divisible(C // reduction, 4))`` channels. With ``act_max = 2`` the coefficients lie in
``init +- 2``; at initialisation (FC weights ~ 0) they equal the starting values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Round to the nearest multiple of ``divisor``, never below ``min_value`` nor more than 10 % below ``value``
    (the TensorFlow MobileNet rule the official code copies)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def squeeze_channels(channels: int, reduction: int) -> int:
    return max(4, make_divisible(channels // reduction, 4))


def shift_index(channels: int, groups: int) -> torch.Tensor:
    """The channel each channel is paired with: one group and one channel further, circularly.

    >>> shift_index(8, 2).tolist()
    [5, 6, 7, 4, 1, 2, 3, 0]
    """
    if groups < 1 or channels % groups:
        raise ValueError(f"shift-max needs channels ({channels}) divisible by its groups ({groups})")
    per_group = channels // groups
    group = (torch.arange(groups) + 1) % groups
    position = (torch.arange(per_group) + 1) % per_group
    return (group[:, None] * per_group + position[None, :]).reshape(-1)


class DynamicShiftMax(nn.Module):
    """Dynamic Shift-Max with K = ``branches`` (1 or 2) fused shifts; state-dict keys ``fc.0.*``, ``fc.2.*``.

    Args:
        channels: input (= output) channels.
        reduction: squeeze ratio of the hyper-function.
        branches: K, the number of affine maps taken the max of (official ``act_relu``: K = 2 if True).
        init_a, init_b: starting values of (a1, a2) and (b1, b2).
        groups: G, the number of channel groups the shift moves across.
        act_max: half the coefficients' range (the official code doubles it: ``(h - 0.5) * 2 * act_max``).
    """

    def __init__(
        self,
        channels: int,
        reduction: int,
        branches: int,
        init_a: Sequence[float] = (1.0, 0.0),
        init_b: Sequence[float] = (0.0, 0.0),
        groups: int = 1,
        act_max: float = 2.0,
    ):
        super().__init__()
        if branches not in (1, 2):
            raise ValueError(f"Dynamic Shift-Max takes 1 or 2 branches, not {branches}")
        self.channels, self.branches, self.groups = channels, branches, groups
        self.scale = 2.0 * act_max
        self.init_a, self.init_b = tuple(init_a), tuple(init_b)
        squeeze = squeeze_channels(channels, reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, squeeze),
            nn.ReLU(inplace=True),
            nn.Linear(squeeze, 2 * branches * channels),
            nn.Hardsigmoid(),
        )
        # Rebuilt from the configuration, never stored: official checkpoints have no such key.
        self.register_buffer("index", shift_index(channels, groups), persistent=False)
        starts = [[self.init_a[k], self.init_b[k]] for k in range(branches)]
        self.register_buffer("starts", torch.tensor(starts).view(1, branches, 2, 1, 1, 1), persistent=False)

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, 2, C, 1, 1): ``[:, k, 0]`` = a_{k+1}, ``[:, k, 1]`` = b_{k+1}."""
        h = self.fc(x.mean((2, 3)))
        return (h - 0.5).mul_(self.scale).view(x.shape[0], self.branches, 2, self.channels, 1, 1) + self.starts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coeffs = self.coefficients(x)
        shifted = x.index_select(1, self.index)
        out = torch.addcmul(x * coeffs[:, 0, 0], shifted, coeffs[:, 0, 1])
        if self.branches == 2:
            out = torch.maximum(out, torch.addcmul(x * coeffs[:, 1, 0], shifted, coeffs[:, 1, 1]))
        return out

    def fusion_madds(self, output: torch.Tensor) -> int:
        """Multiply-adds of ``max_k(a_k x + b_k x2)`` per sample: J = 2 terms for each of the K branches."""
        return 2 * self.branches * output[0].numel()

    def fuse(self, in_perm: torch.Tensor | None = None, out_perm: torch.Tensor | None = None) -> FusedShiftMax:
        """The inference form (see :class:`FusedShiftMax`). ``in_perm``: the true input is ``x[:, in_perm]``;
        ``out_perm``: return ``out[:, out_perm]`` (a channel shuffle that follows, folded in)."""
        return FusedShiftMax(self, in_perm, out_perm)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, branches={self.branches}, groups={self.groups}, "
            f"init_a={self.init_a}, init_b={self.init_b}"
        )


class FusedShiftMax(nn.Module):
    """Dynamic Shift-Max for inference: the same function in fewer, cheaper ops.

    * the hard sigmoid, ``(h - 0.5) * scale`` and the starting values fold into FC2 and one clamp:
      ``(relu6(z + 3) / 6 - 0.5) * s + init = clamp(z * s/6 + init, init - s/2, init + s/2)``;
    * the channel order of the input (``in_perm``) folds into FC1's columns and the gather, a channel
      permutation of the output (``out_perm``, e.g. the shuffles after it) into FC2's rows and the gather:
      one ``index_select`` reads both ``x`` and its shifted copy in the order the next layer wants;
    * the affine maps are computed in place in that gathered buffer (one allocation for K = 2, none for K = 1).
    """

    def __init__(self, source: DynamicShiftMax, in_perm: torch.Tensor | None, out_perm: torch.Tensor | None):
        super().__init__()
        c, k = source.channels, source.branches
        identity = torch.arange(c)
        in_perm = identity if in_perm is None else in_perm
        out_perm = identity if out_perm is None else out_perm
        self.channels, self.branches = c, k
        fc1, fc2 = source.fc[0], source.fc[2]
        with torch.no_grad():
            w1 = torch.empty_like(fc1.weight)
            w1[:, in_perm] = fc1.weight  # FC1 reads GAP(x)[in_perm]
            rows = (torch.arange(2 * k)[:, None] * c + out_perm[None, :]).reshape(-1)
            starts = source.starts.reshape(2 * k, 1).expand(2 * k, c).reshape(-1)
            factor = source.scale / 6.0
            self.register_buffer("w1_t", w1.t().contiguous(), persistent=False)
            self.register_buffer("b1", fc1.bias.detach().clone(), persistent=False)
            self.register_buffer("w2_t", (fc2.weight[rows] * factor).t().contiguous(), persistent=False)
            self.register_buffer("b2", fc2.bias[rows] * factor + starts, persistent=False)
            self.register_buffer("low", starts - source.scale / 2, persistent=False)
            self.register_buffer("high", starts + source.scale / 2, persistent=False)
        direct = in_perm[out_perm]
        shifted = in_perm[source.index[out_perm]]
        self.reads_in_order = bool(torch.equal(direct, identity))  # then only the shifted copy is gathered
        self.register_buffer(
            "gather", shifted if self.reads_in_order else torch.cat([direct, shifted]), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return self._forward_static_shapes(x)
        b, c, h, w = x.shape
        hidden = torch.addmm(self.b1, x.mean((2, 3)), self.w1_t).relu_()
        coeffs = torch.addmm(self.b2, hidden, self.w2_t).clamp_(self.low, self.high)
        coeffs = coeffs.view(b, 2 * self.branches, c, 1, 1).unbind(1)  # a1, b1(, a2, b2)
        if self.reads_in_order:
            direct, shifted = x, x.index_select(1, self.gather)
        else:
            direct, shifted = x.index_select(1, self.gather).view(b, 2, c, h, w).unbind(1)
        if self.branches == 1:
            return shifted.mul_(coeffs[1]).addcmul_(direct, coeffs[0])
        second = torch.mul(direct, coeffs[2]).addcmul_(shifted, coeffs[3])
        first = shifted.mul_(coeffs[1]).addcmul_(direct, coeffs[0])
        return second.clamp_min_(first)  # max(second, first), in place

    def _forward_static_shapes(self, x: torch.Tensor) -> torch.Tensor:
        """The same function without reading the input's shape or splitting views in place, for ONNX export:
        the exported graph then has only constant slices (a view per shape, as above, costs onnxruntime some
        250 Shape/Gather/Unsqueeze/Concat/Split/Squeeze nodes in MicroNet M0, more time than its convs)."""
        c = self.channels
        hidden = torch.relu(torch.addmm(self.b1, x.mean((2, 3)), self.w1_t))
        coeffs = torch.clamp(torch.addmm(self.b2, hidden, self.w2_t), self.low, self.high)
        coeffs = coeffs.reshape(-1, 2 * self.branches * c, 1, 1)
        a = [coeffs[:, i * c : (i + 1) * c] for i in range(2 * self.branches)]  # a1, b1(, a2, b2)
        if self.reads_in_order:
            direct, shifted = x, x.index_select(1, self.gather)
        else:
            both = x.index_select(1, self.gather)
            direct, shifted = both[:, :c], both[:, c:]
        out = direct * a[0] + shifted * a[1]
        return out if self.branches == 1 else torch.maximum(out, direct * a[2] + shifted * a[3])
