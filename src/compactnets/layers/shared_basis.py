"""Shared filter bases and their orthogonality regulariser.

Kang & Kim, "Learning Deeply Shared Filter Bases for Efficient ConvNets" (arXiv 2006.05066), official code
ssregibility/Net_RL2 @ f98cd9d. A k x k convolution of a layer is decomposed into a filter basis followed by
1x1 coefficients; the basis concatenates filters unique to the layer with filters of a basis that several
layers share::

    basis(x) = cat([conv(x, W_unique), conv(x, W_shared)], dim=1)      (unique filters first)

:class:`SharedBasisConv2d` computes that as one convolution with ``cat([W_unique, W_shared])`` when neither is
grouped (1.1-1.6x faster on CPU than two convs and a concat). The shared basis is an ordinary ``nn.Conv2d``
registered once by the model; each layer only keeps a reference to it, so its weight is one tensor, counted
once, and receives the gradients of every layer that uses it.

:func:`basis_similarity` is the regulariser's term for one group of bases, as the official training scripts
compute it (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fold import ConcatConv2d, plain_conv


def refer_to(owner: nn.Module, name: str, target: nn.Module) -> None:
    """Make ``target`` (a shared basis registered by the model) a child ``owner.<name>`` that the state dict skips.

    A real child, so TorchScript, fx and module hooks see it; but its tensors are saved and loaded once, under
    the model's own key, and ``parameters()``/``named_modules()`` list it once (under the first path: register
    it on the model before its users). (``nn.DataParallel`` replicas would still point at the original module:
    train with DDP, as ``compactnets train`` does under torchrun.)
    """
    owner.add_module(name, target)
    if not hasattr(owner, "_referenced"):
        owner._referenced = set()
        owner.register_state_dict_post_hook(_drop_referenced)
        owner.register_load_state_dict_pre_hook(_remember_prefix)
        owner.register_load_state_dict_post_hook(_ignore_referenced)
    owner._referenced.add(name)


def _drop_referenced(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    copies = tuple(f"{prefix}{name}." for name in module._referenced)
    for key in [k for k in state_dict if k.startswith(copies)]:
        del state_dict[key]


def _remember_prefix(module: nn.Module, state_dict, prefix: str, *args) -> None:
    module._load_prefix = prefix


def _ignore_referenced(module: nn.Module, incompatible_keys) -> None:
    # load_state_dict visits every path of a child, so it reports the copies the state dict skips as missing
    copies = tuple(f"{module._load_prefix}{name}." for name in module._referenced)
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if not k.startswith(copies)]


class SharedBasisConv2d(nn.Module):
    """``cat([unique filters, shared filters])`` applied to the input: a layer's filter basis.

    Args:
        in_channels: input channels (the shared basis must take the same).
        unique_rank: number of filters unique to this layer (``weight`` has this many rows).
        shared: the shared basis, an ``nn.Conv2d`` without bias registered by the model; its kernel size,
            padding and dilation are used for the unique filters too. Stride is 1.
        unique_groups: groups of the unique filters (ResNeXt); fused with the shared ones only when both are 1.
    """

    def __init__(self, in_channels: int, unique_rank: int, shared: nn.Conv2d, unique_groups: int = 1):
        super().__init__()
        if shared.in_channels != in_channels or shared.bias is not None or shared.stride != (1, 1):
            raise ValueError("a shared basis takes the layer's input channels, has no bias and stride 1")
        if unique_groups < 1 or in_channels % unique_groups or unique_rank % unique_groups:
            raise ValueError(
                f"{unique_rank} unique filters over {in_channels} channels cannot form {unique_groups} groups"
            )
        self.in_channels = in_channels
        self.unique_rank = unique_rank
        self.groups = unique_groups
        self.kernel_size = shared.kernel_size
        self.padding = shared.padding
        self.dilation = shared.dilation
        self.weight = nn.Parameter(torch.empty(unique_rank, in_channels // unique_groups, *shared.kernel_size))
        refer_to(self, "shared", shared)
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        return self.unique_rank + self.shared.out_channels

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default

    def as_conv(self) -> nn.Module:
        """Plain convs computing the same (what BN folding needs): one conv of ``cat([unique, shared])`` when neither
        is grouped, else the two side by side; the shared basis is copied into each layer, so that each layer's
        BN can fold into it."""
        if self.groups == 1 and self.shared.groups == 1:
            return plain_conv(torch.cat([self.weight, self.shared.weight]), self, 1)
        unique, shared = plain_conv(self.weight, self, self.groups), self.shared
        return ConcatConv2d([unique, plain_conv(shared.weight, shared, shared.groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding, dilation = self.padding, self.dilation
        if self.groups == 1 and self.shared.groups == 1:
            return F.conv2d(x, torch.cat([self.weight, self.shared.weight]), None, 1, padding, dilation)
        unique = F.conv2d(x, self.weight, None, 1, padding, dilation, self.groups)
        shared = F.conv2d(x, self.shared.weight, None, 1, padding, dilation, self.shared.groups)
        return torch.cat([unique, shared], dim=1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, unique={self.unique_rank}, shared={self.shared.out_channels}, "
            f"kernel_size={self.kernel_size}, padding={self.padding}"
            + (
                f", unique_groups={self.groups}, shared_groups={self.shared.groups}"
                if self.groups > 1 or self.shared.groups > 1
                else ""
            )
        )


def basis_similarity(shared: Sequence[torch.Tensor], unique: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, int]:
    """Squared deviation from orthonormality of one group of bases: ``(sum of selected entries, their count)``.

    Each filter is a row of length ``C/groups * k * k``. With ``S`` the shared filters stacked (several shared
    bases jointly) and ``B = [S; U_1; ...; U_K]`` all rows, ``D = (S B^T - I)^2`` elementwise; the selected
    entries are all of ``D`` (shared rows against every row) plus, for each unique basis ``U_k`` on its own,
    ``(U_k U_k^T - I)^2``. Unique bases are never compared with each other. Without unique bases this is the
    whole ``(S S^T - I)^2``. The diagonal pulls every filter to unit norm.

    The regulariser is ``sum(similarities) / sum(counts)`` over the groups of a model (a mean over all selected
    entries, not per group), computed in float32 (or the weights' wider type) even under autocast.
    """
    dtype = torch.promote_types(shared[0].dtype, torch.float32)  # float32 at least, whatever the autocast
    with torch.autocast(shared[0].device.type, enabled=False):
        s = torch.cat([w.flatten(1) for w in shared]).to(dtype)
        rows = torch.cat([s, *(w.flatten(1).to(dtype) for w in unique)])
        n_shared, n_rows = s.shape[0], rows.shape[0]
        total = (s @ rows.T - torch.eye(n_shared, n_rows, dtype=dtype, device=s.device)).square().sum()
        count = n_shared * n_rows
        if unique:
            u = torch.stack([w.flatten(1) for w in unique]).to(dtype)  # (K, rank, length)
            total = total + (u @ u.transpose(1, 2) - torch.eye(u.shape[1], dtype=dtype, device=u.device)).square().sum()
            count += u.shape[0] * u.shape[1] ** 2
    return total, count
