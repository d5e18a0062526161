"""Reusable layers: binarization, channel shuffle (dynamic convs, shift-max and shared bases join here)."""

from .binary import BinaryActivation, BinaryConv2d, binarize_activation, xnor_weight
from .shared_basis import SharedBasisConv2d, basis_similarity, refer_to
from .shuffle import ChannelShuffle, channel_shuffle

__all__ = [
    "BinaryActivation",
    "BinaryConv2d",
    "ChannelShuffle",
    "SharedBasisConv2d",
    "basis_similarity",
    "binarize_activation",
    "channel_shuffle",
    "refer_to",
    "xnor_weight",
]
