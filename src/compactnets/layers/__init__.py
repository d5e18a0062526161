"""Reusable layers: binarization, channel shuffle, shared filter bases, WeightNet dynamic convolutions,
MicroNet's micro-factorized convolutions and Dynamic Shift-Max, and BN folding for inference."""

from .binary import BinaryActivation, BinaryConv2d, binarize_activation, xnor_weight
from .fold import compose, fold_bn, shuffle_perm
from .micro_factorized import (
    ChannelGather,
    GroupConvBN,
    GroupedPointwise,
    MaxGroupPooling,
    MergedSeparableConv,
    SpatialSeparableConv,
)
from .shared_basis import SharedBasisConv2d, basis_similarity, refer_to
from .shift_max import DynamicShiftMax, FusedShiftMax, make_divisible, shift_index
from .shuffle import ChannelShuffle, channel_shuffle
from .weightnet import (
    PER_SAMPLE_IMPLS,
    WeightNet,
    WeightNetDW,
    per_sample_conv2d,
    per_sample_depthwise_conv2d,
    set_per_sample_impl,
)

__all__ = [
    "PER_SAMPLE_IMPLS",
    "BinaryActivation",
    "BinaryConv2d",
    "ChannelGather",
    "ChannelShuffle",
    "DynamicShiftMax",
    "FusedShiftMax",
    "GroupConvBN",
    "GroupedPointwise",
    "MaxGroupPooling",
    "MergedSeparableConv",
    "SharedBasisConv2d",
    "SpatialSeparableConv",
    "WeightNet",
    "WeightNetDW",
    "basis_similarity",
    "binarize_activation",
    "channel_shuffle",
    "compose",
    "fold_bn",
    "make_divisible",
    "per_sample_conv2d",
    "per_sample_depthwise_conv2d",
    "refer_to",
    "set_per_sample_impl",
    "shift_index",
    "shuffle_perm",
    "xnor_weight",
]
