"""Knowledge distillation from a trained teacher (Hinton et al. 2015), the standard lever for binary students
(Real-to-Binary, Martinez et al. 2020; Larq's zoo recipes).

The loss is ``(1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))``: ``w``
is ``--distill-weight``, ``T`` ``--distill-temperature`` (the T^2 keeps the soft term's gradient scale fixed as T
changes). The teacher sees the student's very batch (same augmentation), in eval mode, without gradients, with
its batch norms folded into the convs before them: the same logits to float rounding, one pass less per layer
(a distilled nin_xnornet step 1.07-1.14x faster, benchmarks/results/train_step_teacher.txt).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError
from ..layers import fold_batch_norms
from ..models import is_model
from .evaluate import load_model, load_shipped

# The preprocessing the teacher must share with the student: it sees the same tensors.
_SHARED_INPUT_KEYS = ("input_size", "mean", "std", "channel_order", "pixel_range")


def load_teacher(spec: str, student: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """``spec``: a model name with shipped weights (``NAME`` or ``NAME.TAG``), or a checkpoint / run folder."""
    if Path(spec).exists():
        teacher = load_model(spec)
    elif is_model(spec.partition(".")[0]):
        try:
            teacher = load_shipped(spec)
        except ValueError as e:  # no weights shipped for it
            raise OptionError(f"--teacher {spec}: {e}") from None
    else:
        raise OptionError(f"--teacher {spec}: neither a checkpoint file nor a model with shipped weights")
    for key in _SHARED_INPUT_KEYS:
        theirs, ours = teacher.pretrained_cfg.get(key), student.pretrained_cfg.get(key)
        if theirs is not None and ours is not None and tuple(_flat(theirs)) != tuple(_flat(ours)):
            raise OptionError(f"--teacher {spec} expects {key} {theirs}, the student {ours}: they must see one input")
    if teacher.num_classes != student.num_classes:
        raise OptionError(f"--teacher {spec} has {teacher.num_classes} classes, the student {student.num_classes}")
    fold_batch_norms(teacher.eval(), torch.zeros(1, *teacher.pretrained_cfg["input_size"]))
    teacher.requires_grad_(False).to(device)  # after folding, which makes new parameters
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


def _flat(v):
    return v if isinstance(v, (list, tuple)) else [v]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student_logits.float() / t, dim=1),
            F.log_softmax(teacher_logits.float() / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )
