"""Reusable layers: binarization, channel shuffle (dynamic convs, shift-max and shared bases join here)."""

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
from .shift_max import DynamicShiftMax, FusedShiftMax, make_divisible, shift_index
from .shuffle import ChannelShuffle, channel_shuffle

__all__ = [
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
    "SpatialSeparableConv",
    "binarize_activation",
    "channel_shuffle",
    "compose",
    "fold_bn",
    "make_divisible",
    "shift_index",
    "shuffle_perm",
    "xnor_weight",
]
