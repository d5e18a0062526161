"""Reusable layers: binarization, channel shuffle, shared filter bases, WeightNet dynamic convolutions."""

from .binary import BinaryActivation, BinaryConv2d, binarize_activation, xnor_weight
from .shared_basis import SharedBasisConv2d, basis_similarity, refer_to
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
    "SharedBasisConv2d",
    "WeightNet",
    "WeightNetDW",
    "basis_similarity",
    "binarize_activation",
    "channel_shuffle",
    "per_sample_conv2d",
    "per_sample_depthwise_conv2d",
    "refer_to",
    "set_per_sample_impl",
    "xnor_weight",
]
