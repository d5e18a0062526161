"""Knowledge distillation from a trained teacher (Hinton et al. 2015), the standard lever for binary students
(Real-to-Binary, Martinez et al. 2020; Larq's zoo recipes).

The loss is ``(1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))``: ``w``
is ``--distill-weight``, ``T`` ``--distill-temperature`` (the T^2 keeps the soft term's gradient scale fixed as T
changes). The teacher sees the student's very batch (same augmentation), in eval mode, without gradients, with
its batch norms folded into the convs before them: the same logits to float rounding, one pass less per layer
(a distilled nin_xnornet step 1.07-1.14x faster, benchmarks/results/train_step_teacher.txt).

On a CPU the teacher's forward is inference, which OpenVINO runs faster than torch eager (a distilled step
1.15-1.17x faster, benchmarks/results/train_step_teacher_runtime.txt): ``--teacher-runtime auto`` compiles it with
OpenVINO where OpenVINO is installed and the run trains on the CPU, in the run's precision (bf16 where the student
trains in bf16 autocast, else f32). The compiled teacher is checked in f32 against torch before the run starts
(:data:`TEACHER_CHECK_RTOL`), and ``auto`` falls back to torch, saying why, where OpenVINO cannot take the model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError
from ..layers import fold_batch_norms
from ..models import is_model
from ..openvino_cpu import StaticShapeModel, failure_reason
from .evaluate import load_model, load_shipped

# The preprocessing the teacher must share with the student: it sees the same tensors.
_SHARED_INPUT_KEYS = ("input_size", "mean", "std", "channel_order", "pixel_range")
TEACHER_RUNTIMES = ("auto", "torch", "openvino")
# OpenVINO in f32 vs torch in fp32 on a random batch: max |diff| <= TEACHER_CHECK_RTOL * max |logit|
TEACHER_CHECK_RTOL = 1e-4


def load_teacher(
    spec: str, student: nn.Module, device: torch.device, channels_last: bool, runtime: str = "torch", amp: str = "none"
) -> tuple[nn.Module, str]:
    """The teacher and a line saying what runs it. ``spec``: a model name with shipped weights (``NAME`` or
    ``NAME.TAG``), or a checkpoint / run folder; ``runtime``: one of :data:`TEACHER_RUNTIMES`; ``amp``: the run's
    resolved precision (``bf16``: OpenVINO computes in bf16)."""
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
    teacher.requires_grad_(False)  # after folding, which makes new parameters
    if runtime != "torch":
        if device.type != "cpu":
            if runtime == "openvino":
                raise OptionError(f"--teacher-runtime openvino runs on the CPU, and this run trains on {device}")
        else:
            precision = "bf16" if amp == "bf16" else "f32"
            try:
                return OpenVinoTeacher(teacher, precision), f"teacher on OpenVINO in {precision}"
            except Exception as e:  # ImportError, or a model OpenVINO cannot convert or computes differently
                reason = failure_reason(e)
                if runtime == "openvino":
                    raise OptionError(f"--teacher-runtime openvino: {reason}") from None
                return _torch_teacher(teacher, device, channels_last), f"teacher on torch (auto: {reason})"
    return _torch_teacher(teacher, device, channels_last), "teacher on torch"


def _torch_teacher(teacher: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    teacher.to(device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


class OpenVinoTeacher(nn.Module):
    """A folded teacher compiled by OpenVINO for the CPU: ``forward`` takes the student's batch (any layout,
    float) and returns float32 logits; one static-shape model per batch shape (the last batch of an epoch may be
    smaller).

    Args:
        teacher: the torch teacher, in eval mode; converted once, then no longer needed.
        precision: OpenVINO's ``INFERENCE_PRECISION_HINT`` for the run (``"bf16"`` or ``"f32"``).
        threads: ``INFERENCE_NUM_THREADS`` (default: ``torch.get_num_threads()``).
    """

    def __init__(self, teacher: nn.Module, precision: str, threads: int | None = None):
        super().__init__()
        try:
            import openvino as ov
        except ImportError:
            raise ImportError("OpenVINO is not installed (pip install 'compactnets[onnx]')") from None
        size = tuple(teacher.pretrained_cfg["input_size"])
        with warnings.catch_warnings():  # its TorchScript trace: torch's deprecation notice is not the user's
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
            model = ov.convert_model(teacher, example_input=torch.zeros(2, *size))
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = StaticShapeModel(core, model, {**config, "INFERENCE_PRECISION_HINT": "f32"})
        x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = teacher(x)
        worst = (self(x) - expected).abs().max().item() / expected.abs().max().clamp_min(1e-12).item()
        if not worst <= TEACHER_CHECK_RTOL:
            raise ValueError(f"OpenVINO's logits differ from torch's by {worst:.2g} of the largest (f32)")
        self.compiled = StaticShapeModel(core, model, {**config, "INFERENCE_PRECISION_HINT": precision})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())  # NCHW, whatever the tensor's layout
        return torch.from_numpy(self.compiled.infer(array))


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
