"""Re-estimating batch-norm statistics: the running means and variances recomputed for the weights as they are.

During training the running statistics trail the weights (an exponential average over the last ~10 steps'
batches, with momentum 0.1); a binary net, whose signs keep flipping, is hurt most: an epoch-7 ``nin_xnornet``
scored 52.1 % with its running statistics and 64.8 % after re-estimating them (issue 16). The pass runs the
batch norms in train mode (every other module in eval mode, so dropout stays off) without gradients, with
``momentum=None``: a cumulative average over the batches, as in SWA's ``update_bn``.

The images are best seen as training sees them (``BN_AUGMENT_CHOICES``: ``train``, as detectron2's PreciseBN
hook feeds fvcore's ``update_bn_stats`` the training loader): the weights learnt to work with the statistics of
augmented batches. The final raw weights of a 10-epoch ``nin_xnornet`` scored 72.73 with their running statistics,
71.30-72.43 re-estimated on four samples of un-augmented images, 72.91-73.48 on four augmented draws
(docs/training.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

BN_AUGMENT_CHOICES = ("train", "none")


@torch.no_grad()
def reestimate_bn(
    model: nn.Module, batches: Iterable, device: torch.device, autocast=None, channels_last: bool = False
) -> int:
    """Replace the running statistics of every batch norm in ``model`` by their average over ``batches``
    (``(images, targets)`` pairs); returns the number of images seen (0 and nothing changed without batch norms).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for images, _ in batches:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast or contextlib.nullcontext():
                model(images)
            seen += len(images)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return seen
