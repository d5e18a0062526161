"""WeightNet: convolution kernels generated per sample by grouped fully connected layers.

Paper: Ma, Zhang, Huang, Sun, "WeightNet: Revisiting the Design Space of Weight Networks" (ECCV 2020,
arXiv 2007.11823). Source: megvii-model/WeightNet at 669b5f4, ``weightnet.py``.

A block computes one gate input ``x_gap = reduce(GAP(x))`` (``gate_chs`` channels, one vector per sample) and
shares it among its WeightNet modules. Each module turns it into a kernel per sample::

    a = sigmoid(wn_fc1(x_gap))       # M * out_chs values (depthwise: M/G * chs)
    W = wn_fc2(a)                    # grouped 1x1 conv: G * out_chs groups (depthwise: chs groups)
    y[n] = conv2d(x[n], W[n].reshape(out_chs, in_chs, k, k))

``wn_fc2`` holds M/G times the weights of the convolution it replaces (the "M/G x" of the paper's tables).
With M = G = 2 (the released models) each kernel row is two static half-rows, each scaled by its own gate.

The per-sample convolution has two implementations, equal up to float rounding:

* ``grouped`` (default, the official formulation): the batch folded into the groups of one convolution,
  ``conv2d(x.reshape(1, N*C, H, W), W.reshape(N*O, C, k, k), groups=N)``; at N = 1 it is a plain dense
  convolution, the official batch-1 path. ONNX stores ``group`` as a constant, so it exports at a fixed batch.
* ``matmul``: a batched matrix product over unfolded patches (a reshape for 1x1 kernels), and for depthwise
  kernels a sum of k*k shifted slices times per-sample weights: exports to ONNX with a dynamic batch.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

PER_SAMPLE_IMPLS = ("grouped", "matmul")


def _check_impl(impl: str) -> None:
    if impl != "grouped" and impl != "matmul":  # PER_SAMPLE_IMPLS, spelled out for TorchScript
        # concatenation, not an f-string: this runs in forward, which TorchScript compiles
        raise ValueError("unknown per-sample convolution '" + impl + "'; choose from grouped, matmul")


def _out_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


def per_sample_conv2d(
    x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0, impl: str = "grouped"
) -> torch.Tensor:
    """``y[n] = conv2d(x[n], weight[n])`` for x (N, C, H, W) and weight (N, O, C, k, k)."""
    _check_impl(impl)
    n, chs, h, w = x.shape
    out_chs, k = weight.shape[1], weight.shape[-1]
    if impl == "grouped":
        y = F.conv2d(
            x.reshape(1, n * chs, h, w),
            weight.reshape(n * out_chs, chs, k, k),
            stride=stride,
            padding=padding,
            groups=n,
        )
        return y.reshape(n, out_chs, y.shape[-2], y.shape[-1])
    out_h, out_w = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    if k == 1 and stride == 1 and padding == 0:
        patches = x.reshape(n, chs, h * w)
    else:
        patches = F.unfold(x, k, padding=padding, stride=stride)  # (N, C*k*k, out_h*out_w)
    return torch.bmm(weight.reshape(n, out_chs, chs * k * k), patches).reshape(n, out_chs, out_h, out_w)


def per_sample_depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0, impl: str = "grouped"
) -> torch.Tensor:
    """``y[n] = conv2d(x[n], weight[n][:, None], groups=C)`` for x (N, C, H, W) and weight (N, C, k, k)."""
    _check_impl(impl)
    n, chs, h, w = x.shape
    k = weight.shape[-1]
    if impl == "grouped":
        y = F.conv2d(
            x.reshape(1, n * chs, h, w),
            weight.reshape(n * chs, 1, k, k),
            stride=stride,
            padding=padding,
            groups=n * chs,
        )
        return y.reshape(n, chs, y.shape[-2], y.shape[-1])
    out_h, out_w = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    x = F.pad(x, (padding, padding, padding, padding))
    weight = weight[..., None, None]  # (N, C, k, k, 1, 1): broadcast over each output position
    y: Optional[torch.Tensor] = None  # noqa: UP045 (TorchScript reads Optional, not `| None`, in a function body)
    for i in range(k):
        for j in range(k):
            tap = x[:, :, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]
            y = tap * weight[:, :, i, j] if y is None else y + tap * weight[:, :, i, j]
    assert y is not None
    return y


class GroupedFC(nn.Conv2d):
    """A grouped 1x1 convolution of (N, C, 1, 1) vectors (``wn_fc2``), computed as one matmul batched over the
    groups. Same parameters, result and MAC count as ``nn.Conv2d``; oneDNN's grouped convolution is 5-15x slower
    at this shape (hundreds of groups, 1x1 spatial)."""

    def __init__(self, in_chs: int, out_chs: int, groups: int):
        super().__init__(in_chs, out_chs, 1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, g = x.shape[0], self.groups
        weight = self.weight.reshape(g, self.out_channels // g, self.in_channels // g)
        y = torch.bmm(x.reshape(n, g, self.in_channels // g).transpose(0, 1), weight.transpose(1, 2))
        return y.transpose(0, 1).reshape(n, self.out_channels, 1, 1)


class _KernelGenerator(nn.Module):
    """``wn_fc2(sigmoid(wn_fc1(x_gap)))``: per-sample kernels (flattened) from the block's gate input."""

    def __init__(self, gate_chs: int, gates: int, kernel_numel: int, groups: int, impl: str):
        super().__init__()
        _check_impl(impl)
        self.impl = impl
        self.wn_fc1 = nn.Conv2d(gate_chs, gates, 1)
        self.sigmoid = nn.Sigmoid()
        self.wn_fc2 = GroupedFC(gates, kernel_numel, groups)

    def kernels(self, x_gap: torch.Tensor) -> torch.Tensor:
        return self.wn_fc2(self.sigmoid(self.wn_fc1(x_gap)))


class WeightNet(_KernelGenerator):
    """A dense convolution whose kernel ``wn_fc2(sigmoid(wn_fc1(x_gap)))`` is generated for each sample.

    Args:
        in_chs, out_chs, kernel_size, stride: the convolution it replaces (padding ``kernel_size // 2``).
        gate_chs: channels of the block's shared gate input ``x_gap``.
        M: gates per output channel (``wn_fc1`` has ``M * out_chs`` outputs).
        G: groups per output channel in ``wn_fc2``; ``wn_fc2`` holds M/G times the kernel's weights.
        impl: per-sample convolution, ``grouped`` or ``matmul`` (see the module docstring).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        gate_chs: int = 16,
        M: int = 2,
        G: int = 2,
        impl: str = "grouped",
    ):
        if M % G or (in_chs * kernel_size**2) % G:
            raise ValueError(
                f"WeightNet needs G ({G}) to divide M ({M}) and in_chs * k * k ({in_chs * kernel_size**2})"
            )
        super().__init__(gate_chs, M * out_chs, out_chs * in_chs * kernel_size**2, G * out_chs, impl)
        self.in_chs, self.out_chs, self.kernel_size, self.stride = in_chs, out_chs, kernel_size, stride

    def forward(self, x: torch.Tensor, x_gap: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        weight = self.kernels(x_gap).reshape(-1, self.out_chs, self.in_chs, k, k)
        return per_sample_conv2d(x, weight, self.stride, k // 2, self.impl)

    def extra_repr(self) -> str:
        return f"{self.in_chs}, {self.out_chs}, kernel_size={self.kernel_size}, stride={self.stride}, impl={self.impl}"


class WeightNetDW(_KernelGenerator):
    """A depthwise convolution whose kernel is generated for each sample (official ``WeightNet_DW``).

    ``wn_fc1`` has ``M/G * chs`` outputs and ``wn_fc2`` one group per channel, so only the ratio M/G matters.
    """

    def __init__(
        self,
        chs: int,
        kernel_size: int,
        stride: int = 1,
        gate_chs: int = 16,
        M: int = 2,
        G: int = 2,
        impl: str = "grouped",
    ):
        if M % G:
            raise ValueError(f"WeightNetDW needs G ({G}) to divide M ({M})")
        super().__init__(gate_chs, M // G * chs, chs * kernel_size**2, chs, impl)
        self.chs, self.kernel_size, self.stride = chs, kernel_size, stride

    def forward(self, x: torch.Tensor, x_gap: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        weight = self.kernels(x_gap).reshape(-1, self.chs, k, k)
        return per_sample_depthwise_conv2d(x, weight, self.stride, k // 2, self.impl)

    def extra_repr(self) -> str:
        return f"{self.chs}, kernel_size={self.kernel_size}, stride={self.stride}, impl={self.impl}"


def set_per_sample_impl(module: nn.Module, impl: str) -> nn.Module:
    """Switch every WeightNet layer inside ``module`` to ``impl`` (e.g. ``matmul`` before an ONNX export with a
    dynamic batch); the weights are unchanged. Returns ``module``."""
    _check_impl(impl)
    for m in module.modules():
        if isinstance(m, _KernelGenerator):
            m.impl = impl
    return module
