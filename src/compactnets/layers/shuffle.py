"""Channel shuffle (ShuffleNet), shared by the grouped NIN, MicroNet and ShuffleNetV2 families."""

import torch
import torch.nn.functional as F
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: ``out[j*groups + i] = in[i*(C/groups) + j]``.

    torch's native op keeps the input's memory format: a reshape-transpose-reshape copies a channels-last tensor
    into NCHW, and in training every op after it then converts back (a nin_gc step took 1.8 s instead of 0.85).
    ONNX has no such op, and its TorchScript-based export traces: a trace takes the reshapes."""
    if torch.jit.is_tracing():
        b, c, h, w = x.shape
        return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
    return F.channel_shuffle(x, groups)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups) if self.groups > 1 else x

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
