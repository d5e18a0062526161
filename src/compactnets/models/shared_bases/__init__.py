"""The shared-bases family: ConvNets with deeply shared filter bases, one module per architecture.

Paper: Woochul Kang, Daeyeon Kim, "Learning Deeply Shared Filter Bases for Efficient ConvNets"
(arXiv 2006.05066). Source: ssregibility/Net_RL2 at f98cd9d (README of September 2020):
``models/{cifar10,cifar100,ilsvrc}/*.py`` and the regularisers of ``train_{cifar10,cifar100,ilsvrc}.py``.

* :mod:`.resnet`: CIFAR-10 ResNet32/56, CIFAR-100 and ImageNet ResNet34 (SingleShared and DoubleShared);
* :mod:`.densenet`: CIFAR-100 DenseNet-BC 121;
* :mod:`.resnext`: CIFAR-100 ResNeXt-50 32x4d;
* :mod:`.mobilenetv2`: CIFAR-100 and ImageNet MobileNetV2-Shared;
* :mod:`._common`: the base model (timm's head contract, the paper's orthogonality regulariser: the models'
  ``auxiliary_loss()``, which ``compactnets train --aux-loss-weight`` weighs as the official ``--lambdaR``, 10),
  the official-checkpoint filter and the config helpers.

Faithful to the official code: architectures, initialisation, state-dict names and order, and the module
structure that ptflops (the README's FLOPs) sees. Deliberate differences, none of which changes outputs or counts:

* a shared basis is registered once, by the model; the official blocks also register it as their child, so
  its state dict repeats the tensor under every block (the converter checks and drops those copies);
* unique and shared filters run as one convolution (:class:`~compactnets.layers.SharedBasisConv2d`);
* DenseNet's last dense block runs a basis of its own unless ``official_basis_reuse=True`` (see :mod:`.densenet`).

Importing this package registers every model of the family and its converter.
"""

import math

from ...counting import ptflops_macs, register_convention, register_ptflops_rule
from ...layers import SharedBasisConv2d
from .._registry import TableRow, register_converter, register_table
from . import densenet, mobilenetv2, resnet, resnext
from ._common import FAMILY, SharedBasisNet, checkpoint_filter_fn
from .densenet import SharedBasisDenseNet
from .mobilenetv2 import SharedMobileNetV2
from .resnet import SharedBasisResNet
from .resnext import SharedBasisResNeXt

# One converter for the family: the filter works for every architecture (see official_aliases).
register_converter(FAMILY, checkpoint_filter_fn, model_kwargs=densenet.CONVERT_MODEL_KWARGS)


def _ptflops_shared_basis(m: SharedBasisConv2d, inp, out) -> int:
    """As the unique and the shared nn.Conv2d that the official code runs side by side (no bias)."""
    per_position = math.prod(m.kernel_size) * m.in_channels
    per_position *= m.unique_rank // m.groups + m.shared.out_channels // m.shared.groups
    return per_position * out.shape[0] * math.prod(out.shape[2:])


# How the README's FLOPs were counted (see docs/shared-bases.md).
register_ptflops_rule(SharedBasisConv2d, _ptflops_shared_basis)
register_convention(
    "ptflops_x2",
    "2 x ptflops MACs (Net_RL2's README 'FLOPs', ptflops 0.6.2): a shared basis counts at every call, its "
    "parameters once",
    lambda model, x: 2 * ptflops_macs(model, x),
)
# shared-bases.md's CIFAR-10 table: each row is the shared_bases_cifar10 recipe with its model.
register_table(
    "shared-bases-cifar10",
    [TableRow(m, "shared_bases_cifar10", m) for m in resnet.CIFAR10_TABLE],
)
register_table(  # the same rows in the schedule of a 2-core CPU (issue 16)
    "shared-bases-cifar10-cpu",
    [TableRow(f"{m}_cpu", "shared_bases_cifar10_cpu", m) for m in resnet.CIFAR10_TABLE],
)

__all__ = [
    "FAMILY",
    "SharedBasisDenseNet",
    "SharedBasisNet",
    "SharedBasisResNeXt",
    "SharedBasisResNet",
    "SharedMobileNetV2",
    "checkpoint_filter_fn",
    "densenet",
    "mobilenetv2",
    "resnet",
    "resnext",
]
