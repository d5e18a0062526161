"""Reusable layers: binarization, channel shuffle (dynamic convs, shift-max and shared bases join here)."""

from .binary import BinaryActivation, BinaryConv2d, binarize_activation, xnor_weight
from .shuffle import ChannelShuffle, channel_shuffle

__all__ = [
    "BinaryActivation",
    "BinaryConv2d",
    "ChannelShuffle",
    "binarize_activation",
    "channel_shuffle",
    "xnor_weight",
]
