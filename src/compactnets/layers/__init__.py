"""Reusable layers: binarization, channel shuffle, shared filter bases, WeightNet dynamic convolutions,
MicroNet's micro-factorized convolutions and Dynamic Shift-Max, BN folding for inference, and the global pooling
in front of the models' classifiers."""

from .binary import BinaryActivation, BinaryConv2d, binarize_activation, xnor_weight
from .classifier import GLOBAL_POOL_TYPES, create_global_pool
from .fold import ConcatConv2d, compose, fold_batch_norms, fold_bn, plain_conv, shuffle_perm
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
    "GLOBAL_POOL_TYPES",
    "PER_SAMPLE_IMPLS",
    "BinaryActivation",
    "BinaryConv2d",
    "ChannelGather",
    "ChannelShuffle",
    "ConcatConv2d",
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
    "create_global_pool",
    "fold_batch_norms",
    "fold_bn",
    "make_divisible",
    "per_sample_conv2d",
    "plain_conv",
    "per_sample_depthwise_conv2d",
    "refer_to",
    "set_per_sample_impl",
    "shift_index",
    "shuffle_perm",
    "xnor_weight",
]
