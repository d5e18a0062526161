"""Reusable layers: binarization, channel shuffle (dynamic convs, shift-max and shared bases join here)."""

from .binary import BinaryActivation, BinaryConv2d, binarize_activation, xnor_weight
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
    "ChannelShuffle",
    "WeightNet",
    "WeightNetDW",
    "binarize_activation",
    "channel_shuffle",
    "per_sample_conv2d",
    "per_sample_depthwise_conv2d",
    "set_per_sample_impl",
    "xnor_weight",
]
