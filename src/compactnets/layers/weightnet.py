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

For inference, :meth:`WeightNet.mixture` gives a third, static form (:class:`MixtureConv2d`): the generated
kernel is linear in the gates, ``W[n] = sum_j a[n, j] * S_j`` with static ``S_j`` (the columns of ``wn_fc2``),
so the per-sample conv is ``sum_j a[n, j] * conv(x[n], S_j)``: one static grouped conv with M/G times the
outputs, mixed per sample. With M = G = 2 it has the MACs of the conv it replaces (no kernel generation), its
BN folds into ``S_j``, and it exports to ONNX with a dynamic batch as plain Conv, Mul and ReduceSum.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .fold import fold_bn

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

    @torch.no_grad()
    def _mixture(self, static: torch.Tensor, gate_rows: torch.Tensor, depthwise: bool, bn) -> "MixtureConv2d":
        """``static``: (parts, out, gates per part, fan-in) kernels; ``gate_rows``: (parts, out, gates), the
        ``wn_fc1`` output that scales each."""
        parts, out_chs, gates, fan_in = static.shape
        scale, shift = torch.ones(out_chs), torch.zeros(out_chs)
        if bn is not None:
            scale, shift = fold_bn(scale, shift, bn)
        static = static * scale.view(1, -1, 1, 1)
        # Static conv outputs and gates in one order: a depthwise conv must keep each channel's outputs together
        # (channel, gate); a dense one is free to put the sum's terms in contiguous blocks (part, gate, output).
        order = (1, 2, 0) if depthwise else (0, 2, 1)
        weight = static.permute(*order, 3).reshape(
            -1, fan_in // self.kernel_size**2, self.kernel_size, self.kernel_size
        )
        rows = gate_rows.permute(*order).reshape(-1)
        gate_fc = nn.Conv2d(self.wn_fc1.in_channels, len(rows), 1)
        gate_fc.weight.copy_(self.wn_fc1.weight[rows])
        gate_fc.bias.copy_(self.wn_fc1.bias[rows])
        groups = out_chs if depthwise else parts
        return MixtureConv2d(gate_fc, weight, shift, groups, out_chs, parts * gates, depthwise, self.stride)


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

    def mixture(self, bn: nn.Module | None = None) -> "MixtureConv2d":
        """The static inference form of ``bn(self(x, x_gap))`` (eval-mode BN; None: this layer alone). Needs G
        to divide ``in_chs`` (each of the G parts of a kernel row then covers whole input channels)."""
        groups, out_chs = self.wn_fc2.groups // self.out_chs, self.out_chs
        if self.in_chs % groups:
            raise ValueError(f"the mixture form needs G ({groups}) to divide in_chs ({self.in_chs})")
        gates = self.wn_fc2.in_channels // self.wn_fc2.groups
        # wn_fc2 row (o*G + h)*L + l, column j: tap l of part h of output o's kernel, for gate (o*G + h)*gates + j.
        static = self.wn_fc2.weight.reshape(out_chs, groups, -1, gates).permute(1, 0, 3, 2)  # (G, out, gates, L)
        if self.kernel_size == 1 and self.stride == 1:
            return GatedPointwise(self.wn_fc1, static.permute(1, 0, 2, 3), bn)
        gate_rows = torch.arange(out_chs * groups * gates).view(out_chs, groups, gates).transpose(0, 1)
        return self._mixture(static, gate_rows, False, bn)


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

    def mixture(self, bn: nn.Module | None = None) -> "MixtureConv2d":
        """The static inference form of ``bn(self(x, x_gap))`` (eval-mode BN; None: this layer alone)."""
        gates = self.wn_fc2.in_channels // self.chs
        static = self.wn_fc2.weight.reshape(1, self.chs, -1, gates).transpose(2, 3)  # (1, chs, gates, k*k)
        return self._mixture(static, torch.arange(self.chs * gates).view(1, self.chs, gates), True, bn)


class MixtureConv2d(nn.Module):
    """Inference form of a WeightNet layer (see the module docstring): ``sum_j a_j * conv(x, S_j) + bias`` with
    the gates ``a = sigmoid(gate_fc(x_gap))`` (``wn_fc1``, rows reordered) and the static kernels ``S_j`` of
    ``wn_fc2`` (a folded BN's scale in them, its shift in ``bias``).

    The graph is Conv, Sigmoid, Conv, Mul, then the sum over the ``terms`` outputs of each channel: dense, the
    terms are contiguous blocks of ``out_chs`` channels (slices and adds); depthwise, adjacent channels (a
    grouped 1x1 conv of ones). No reshape reads the input's shape, so ONNX keeps a dynamic batch for free.
    """

    def __init__(
        self, gate_fc: nn.Conv2d, weight, bias, groups: int, out_chs: int, terms: int, depthwise: bool, stride: int
    ):
        super().__init__()
        self.gate_fc = gate_fc
        self.register_buffer("weight", weight.contiguous())
        self.groups, self.stride, self.padding = groups, stride, weight.shape[-1] // 2
        self.out_chs, self.terms, self.depthwise = out_chs, terms, depthwise
        if depthwise and terms > 1:
            self.register_buffer("term_sum", torch.ones(out_chs, terms, 1, 1))
        self.register_buffer("bias", bias.clone() if depthwise and terms > 1 else bias.view(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor, x_gap: torch.Tensor) -> torch.Tensor:
        z = F.conv2d(x, self.weight, None, self.stride, self.padding, 1, self.groups) * torch.sigmoid(
            self.gate_fc(x_gap)
        )
        if self.terms == 1:
            return z + self.bias
        if self.depthwise:
            return F.conv2d(z, self.term_sum, self.bias, groups=self.out_chs)
        c = self.out_chs
        y = z[:, :c] + z[:, c : 2 * c]
        for i in range(2, self.terms):
            y = y + z[:, i * c : (i + 1) * c]
        return y + self.bias

    def extra_repr(self) -> str:
        return f"out_chs={self.out_chs}, terms={self.terms}, depthwise={self.depthwise}, stride={self.stride}"


class GatedPointwise(nn.Module):
    """Inference form of a 1x1, stride-1 WeightNet layer: the per-sample kernel built from the gates and the
    static parts of ``wn_fc2`` by broadcasting (``W[n, o, h] = sum_j a[n, o, h, j] * S[o, h, j]``, no generator
    matmul), then one batched matmul over the pixels; a folded BN's scale in ``S``, its shift in ``bias``.

    In onnxruntime this beats :class:`MixtureConv2d` for pointwise layers: two elementwise ops over the feature
    map (bias, and the block's ReLU) instead of five on twice its size. The reshapes take the spatial size as
    Python ints, so an ONNX export has constant shapes except the batch (-1)."""

    def __init__(self, wn_fc1: nn.Conv2d, static: torch.Tensor, bn: nn.Module | None):
        super().__init__()
        out_chs, parts, gates, fan_in = static.shape  # (out, parts, gates, in / parts)
        scale, shift = torch.ones(out_chs), torch.zeros(out_chs)
        if bn is not None:
            scale, shift = fold_bn(scale, shift, bn)
        self.gate_fc = wn_fc1
        self.out_chs, self.in_chs, self.parts, self.gates = out_chs, parts * fan_in, parts, gates
        self.register_buffer("static", (static * scale.view(-1, 1, 1, 1)).detach().clone())
        self.register_buffer("bias", shift.view(-1, 1).detach().clone())

    def forward(self, x: torch.Tensor, x_gap: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.gate_fc(x_gap)).reshape(-1, self.out_chs, self.parts, self.gates, 1)
        weight = gates * self.static
        weight = (weight if self.gates == 1 else weight.sum(3)).reshape(-1, self.out_chs, self.in_chs)
        height, width = int(x.shape[2]), int(x.shape[3])
        y = torch.matmul(weight, x.reshape(-1, self.in_chs, height * width)) + self.bias
        return y.reshape(-1, self.out_chs, height, width)

    def extra_repr(self) -> str:
        return f"{self.in_chs}, {self.out_chs}, parts={self.parts}, gates={self.gates}"


def set_per_sample_impl(module: nn.Module, impl: str) -> nn.Module:
    """Switch every WeightNet layer inside ``module`` to ``impl`` (e.g. ``matmul`` before an ONNX export with a
    dynamic batch); the weights are unchanged. Returns ``module``."""
    _check_impl(impl)
    for m in module.modules():
        if isinstance(m, _KernelGenerator):
            m.impl = impl
    return module
