"""Training: one flat loop in the manner of torchvision's references/classification/train.py.

With no options it trains the default model on the embedded CIFAR-10 subset for a few minutes (the demo);
recipes (``--recipe``) set the published runs. Every epoch writes to the output folder:

* ``args.json``: the resolved options;
* ``log.csv``: one row per epoch (lr, train loss/top-1, auxiliary loss, eval loss/top-1/top-5, time);
* ``last.pth`` and ``best.pth``: model, optimizer, scheduler, AMP scaler, RNG states, epoch and best metric,
  each written to a temporary file and renamed, so ``--resume`` continues exactly where a run stopped;
* ``views.json``, after the last epoch of a run with ``--model-ema`` or ``--bn-reestimate`` (after every
  evaluation with ``--views-every-eval``): the EMA and the raw weights, each with its running and its re-estimated
  BN statistics. Neither lever changes the trained weights (the EMA is a shadow copy; re-estimation and
  evaluation work on copies and restore the RNG streams), so each view is exactly the evaluation of a run trained
  without the levers it leaves out.

``--steps N`` fixes the run length in iterations instead (step-based recipes such as WeightNet's 300,000): the
schedule spans exactly N iterations and training stops after the N-th, in the middle of an epoch if need be.

A model may define ``auxiliary_loss()`` (a scalar tensor, e.g. a regulariser on its weights); times
``--aux-loss-weight`` it is added to the task loss at every iteration, and its unweighted value is logged.
Under ``torchrun`` the loop runs data-parallel (DDP).
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import CheckpointError, load_state_dict_checked, plain
from ..data import default_augment, detect_kind
from ..data.datasets import KINDS
from ..data.transforms import AUGMENTATIONS
from ..errors import OptionError
from ..models import Checkpoint, create_model, get_model_cfg, parse_model_kwargs
from .batchnorm import BN_AUGMENT_CHOICES, reestimate_bn
from .distill import TEACHER_RUNTIMES, distillation_loss, load_teacher
from .distributed import device_description, init_distributed, resolve_device, shutdown_distributed
from .evaluate import evaluate
from .interrupt import StopSignals, TrainingInterrupted
from .loaders import FAST_DATA_CHOICES, build_training_data
from .optim import OPTIMIZERS, SCHEDULES, WD_FILTERS, create_optimizer, create_scheduler
from .precision import AMP_CHOICES, resolve_amp
from .progress import Progress
from .run_folder import RunFolder, read_log, resume_checkpoint_path, segment, trained_on, write_views

DEFAULT_MODEL = "nin"
LOG_FIELDS = (
    "epoch", "lr", "train_loss", "train_top1", "aux_loss",
    "eval_loss", "eval_top1", "eval_top5", "best_top1", "epoch_time_s", "epoch_cpu_s",
)  # fmt: skip


class EpochClock:
    """An epoch's wall time and this process's CPU time (all its threads: a run paused with SIGSTOP, or waiting
    on other jobs, adds wall time but not CPU time), carried across a resume inside the epoch. A checkpoint
    written before CPU time was recorded resumes with it unknown (None)."""

    def __init__(self, wall_s: float = 0.0, cpu_s: float | None = 0.0):
        self._wall0 = time.perf_counter() - wall_s
        self._cpu0 = None if cpu_s is None else time.process_time() - cpu_s

    def wall(self) -> float:
        return time.perf_counter() - self._wall0

    def cpu(self) -> float | None:
        return None if self._cpu0 is None else time.process_time() - self._cpu0


def _teacher_spec(value: str) -> str | None:
    return None if value.lower() == "none" else value


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``compactnets train``; the defaults are the demo run on the embedded subset."""
    add = parser.add_argument
    add("--recipe", help="named recipe (`compactnets list --recipes`) or path to a .toml recipe")
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    g.add_argument(
        "--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="constructor arguments, e.g. binary=True"
    )
    g.add_argument("--pretrained", help="checkpoint to initialise the weights from")
    g.add_argument("--num-classes", type=int, help="classifier width (default: the dataset's class count)")
    g.add_argument("--data", help="dataset folder (default: the CIFAR-10 subset embedded in the package)")
    g.add_argument("--dataset", choices=KINDS, help="dataset layout (default: detected from --data)")
    g.add_argument("--train-limit", type=int, help="train on a fixed random subset of this many images")
    g.add_argument("--eval-limit", type=int, help="evaluate on a fixed random subset of this many images")
    g.add_argument("--augment", choices=AUGMENTATIONS, help="default: cifar for 32x32 models, else imagenet")
    g.add_argument("--color-jitter", type=float, default=0.0, help="brightness/contrast/saturation jitter")
    g.add_argument("--workers", type=int, help="data-loading processes (default: 0 in memory, else up to 4)")
    g.add_argument(
        "--fast-data", choices=FAST_DATA_CHOICES, default="auto",
        help="uint8 dataset in memory, batches augmented as tensors on the device (auto: for CIFAR-size data)",
    )  # fmt: skip
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument(
        "--steps", type=int, help="total iterations instead of --epochs: the schedule spans them, training stops after"
    )
    g.add_argument("--batch-size", type=int, default=100, help="per process")
    g.add_argument("--eval-batch-size", type=int, help="default: --batch-size")
    g.add_argument("--opt", choices=OPTIMIZERS, default="sgd")
    g.add_argument("--lr", type=float, default=0.05)
    g.add_argument(
        "--lr-base-batch", type=int, help="--lr and --min-lr are for this global batch: scaled linearly to the real one"
    )
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=False)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--wd-filter", choices=WD_FILTERS, default="all", help="kernels: no decay on BN and biases")
    g.add_argument("--sched", choices=SCHEDULES, default="cosine")
    g.add_argument("--lr-milestones", type=float, nargs="+", help="multistep: epochs of the lr drops")
    g.add_argument("--lr-milestone-fractions", type=float, nargs="+", help="multistep: drops at these x epochs")
    g.add_argument("--lr-milestone-lag", type=int, default=0, help="1: each drop one epoch after its milestone (MCTS)")
    g.add_argument("--lr-gamma", type=float, default=0.1)
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up from 0, per iteration")
    g.add_argument("--min-lr", type=float, default=0.0, help="cosine floor")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument(
        "--aux-loss-weight", type=float, default=1.0, help="weight of the model's auxiliary_loss(), if it has one"
    )
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    g.add_argument(
        "--amp", choices=AMP_CHOICES, default="auto", help="autocast precision (auto: bf16 where the device is fast)"
    )
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC memory format")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="the training forward through torch.compile (Inductor fuses batch norm, ReLU and adds: "
                   "1.5-1.7x on the shared-bases ResNets on a 2-core CPU; on the NINs 0.7-1.4x, by model and CPU); "
                   "compiles once per process and batch shape (about a minute on 2 cores); evaluation stays "
                   "eager")  # fmt: skip
    g = parser.add_argument_group("averaging, distillation, batch-norm statistics")
    g.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=False,
                   help="keep an EMA of the weights (timm's ModelEmaV3); evaluations and the best checkpoint "
                   "measure it, checkpoints hold it as state_dict_ema (--no-model-ema: off, where a recipe has "
                   "it on)")  # fmt: skip
    g.add_argument("--model-ema-decay", type=float, default=0.999)
    g.add_argument("--model-ema-warmup", action=argparse.BooleanOptionalAction, default=False,
                   help="decay rising from 0 (timm's EMA warm-up)")  # fmt: skip
    g.add_argument("--teacher", type=_teacher_spec, help="distil from this model: a name with shipped weights "
                   "(NAME or NAME.TAG) or a checkpoint / run folder (none: no teacher, where a recipe names "
                   "one)")  # fmt: skip
    g.add_argument("--teacher-runtime", choices=TEACHER_RUNTIMES, default="auto",
                   help="what runs the teacher's forward (auto: OpenVINO on the CPU where it is installed, faster than "
                   "torch; else torch)")  # fmt: skip
    g.add_argument("--distill-weight", type=float, default=0.5, help="weight of the distillation term (1: no labels)")
    g.add_argument("--distill-temperature", type=float, default=1.0, help="softmax temperature of both models")
    g.add_argument(
        "--bn-reestimate", type=int, default=0, metavar="N",
        help="before each evaluation, recompute the batch-norm statistics on N training images (0: off)",
    )  # fmt: skip
    g.add_argument("--bn-augment", choices=BN_AUGMENT_CHOICES, default="train",
                   help="the images --bn-reestimate sees: train: as training sees them (one fixed draw of its "
                   "crops and flips); none: as evaluation does")  # fmt: skip
    g.add_argument("--views-every-eval", action="store_true",
                   help="measure the EMA and the raw weights with running and re-estimated BN statistics at every "
                   "evaluation (views.json), not only after the last epoch")  # fmt: skip
    g = parser.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (exact reruns; one that torch lacks is named in a warning)")  # fmt: skip
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--output", help="run folder (default: runs/<model>-<time>)")
    g.add_argument("--resume", help="continue from a checkpoint (last.pth) or a run folder")
    g.add_argument("--overwrite", action="store_true", help="start over in an --output folder that holds a run")
    g.add_argument("--print-config", action="store_true", help="print the resolved options (JSON) and exit")
    g.add_argument(
        "--checkpoint-interval", type=float, default=10.0, metavar="MINUTES",
        help="also save last.pth inside an epoch this often (0: at epoch ends only)",
    )  # fmt: skip
    g.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (0: never)")
    g.add_argument("--eval-first", action="store_true", help="also evaluate before training")
    g.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    g.add_argument("--log-interval", type=int, default=50, help="batches between progress lines off a terminal")
    parser.set_defaults(phases=None)  # set by a recipe's [[phases]] tables only
    return parser


@dataclass(frozen=True)
class Phase:
    """Epochs [start, end) trained with ``args`` (the run's options with the phase's overrides)."""

    start: int
    end: int
    args: argparse.Namespace
    restart_from_best: bool = False


def build_phases(args: argparse.Namespace, lr_scale: float = 1.0) -> list[Phase]:
    """The recipe's ``[[phases]]`` (each a fresh optimizer and schedule over its own epochs, optionally
    restarting from the best checkpoint so far), or the whole run as one phase; rates times ``lr_scale``."""

    def scaled(options: dict) -> argparse.Namespace:
        merged = {**vars(args), **options}
        return argparse.Namespace(**{**merged, "lr": merged["lr"] * lr_scale, "min_lr": merged["min_lr"] * lr_scale})

    if not args.phases:
        return [Phase(0, args.epochs, scaled({}))]
    phases, start = [], 0
    for overrides in args.phases:
        options = {k: v for k, v in overrides.items() if k != "restart_from_best"}
        end = start + options["epochs"]
        phases.append(Phase(start, end, scaled(options), overrides.get("restart_from_best", False)))
        start = end
    return phases


# --- reproducibility --------------------------------------------------------------------------------------


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # A kernel that has no deterministic form warns, naming itself, instead of stopping the run: on a GPU the
        # backward of adaptive average pooling, which every classifier head here uses, is one.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].copy()), "pos": np_state[2], "gauss": np_state[3:]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy(), np_state["pos"], *np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- one epoch --------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _stop_if_diverged(first_bad: torch.Tensor, bad_value: torch.Tensor, first_step: int) -> None:
    step = int(first_bad)
    if step >= 0:
        raise FloatingPointError(
            f"the loss became {float(bad_value)} at step {first_step + step + 1} (iteration {step} of the epoch): "
            "lower --lr or set --clip-grad; no checkpoint of these weights was written"
        )


def train_one_epoch(
    model, optimizer, scheduler, batches, device, args, scaler, autocast, progress, *,
    first_step: int = 0, start_step: int = 0, stats: list | None = None, teacher=None, ema=None, checkpoints=None,
    forward=None,
) -> dict:  # fmt: skip
    """One pass over ``batches``: a whole epoch, or its rest after ``start_step`` steps when a run resumes inside
    it (``stats`` then holds the sums of those steps). A non-finite loss stops training (FloatingPointError naming
    the step, counted from ``first_step``) before the epoch's weights can be saved. ``teacher``: distil from its
    logits; ``ema``: update the moving average after each step; ``checkpoints``: a :class:`StepCheckpoints` asked
    after each step whether a mid-epoch checkpoint is due; ``forward``: what computes the logits, ``model``
    compiled (default ``model``)."""
    model.train()
    forward = model if forward is None else forward
    auxiliary_loss = getattr(_unwrap(model), "auxiliary_loss", None)
    # loss sum, correct, count, aux sum
    stats = torch.tensor(stats or [0.0] * 4, dtype=torch.float64, device=device)
    # The first iteration whose loss is not finite, kept on the device (no sync per step).
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    bad_value = torch.zeros((), device=device)
    for step, (images, targets) in enumerate(progress(batches), start=start_step):
        if args.steps and scheduler.last_epoch >= args.steps:  # the scheduler counts the run's iterations
            break
        images = images.to(device, non_blocking=True)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast:
            logits = forward(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=args.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(images)
                soft = distillation_loss(logits, teacher_logits, args.distill_temperature)
                loss = (1 - args.distill_weight) * loss + args.distill_weight * soft
            aux = auxiliary_loss() if auxiliary_loss else None
            total = loss + args.aux_loss_weight * aux if aux is not None else loss
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        if args.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(_unwrap(model), step=scheduler.last_epoch)
        newly_bad = ~torch.isfinite(total.detach()) & (first_bad < 0)
        first_bad = torch.where(newly_bad, step, first_bad)
        bad_value = torch.where(newly_bad, total.detach().float(), bad_value)
        n = len(targets)
        stats += torch.stack(
            [
                loss.detach().double() * n,
                (logits.argmax(dim=1) == targets).sum().double(),
                torch.tensor(float(n), device=device, dtype=torch.float64),
                (aux.detach().double() * n) if aux is not None else torch.zeros((), device=device).double(),
            ]
        )
        if step % 20 == 0 or step == len(batches) + start_step - 1:
            _stop_if_diverged(first_bad, bad_value, first_step)
            loss_sum, correct, count, _ = stats.tolist()
            progress.postfix(loss=loss_sum / count, top1=100 * correct / count)
        if checkpoints is not None and checkpoints.due():
            _stop_if_diverged(first_bad, bad_value, first_step)  # never a checkpoint of diverged weights
            checkpoints.save(step + 1, stats.tolist())
    _stop_if_diverged(first_bad, bad_value, first_step)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
    loss_sum, correct, count, aux_sum = stats.tolist()
    return {
        "loss": loss_sum / count,
        "top1": 100.0 * correct / count,
        "aux_loss": aux_sum / count if auxiliary_loss else None,
    }


# --- the run ----------------------------------------------------------------------------------------------


def _write_log(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def check_options(args: argparse.Namespace) -> None:
    """Raise an OptionError naming the first option whose value cannot be meant."""

    def fail(option: str, value, expected: str):
        raise OptionError(f"--{option} must be {expected}, not {value}")

    for option in ("epochs", "batch_size", "eval_batch_size", "steps", "train_limit", "eval_limit", "lr_base_batch"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            fail(option.replace("_", "-"), value, "a positive integer")
    if args.log_interval < 1:
        fail("log-interval", args.log_interval, "a positive integer")
    for option in ("workers", "eval_every", "bn_reestimate"):
        value = getattr(args, option, None)
        if value is not None and value < 0:
            fail(option.replace("_", "-"), value, "zero or more")
    for option in (
        "lr", "weight_decay", "momentum", "warmup_epochs", "min_lr", "color_jitter", "aux_loss_weight",
        "checkpoint_interval",
    ):  # fmt: skip
        value = getattr(args, option, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            fail(option.replace("_", "-"), value, "a finite number >= 0")
    if not 0 <= args.label_smoothing < 1:
        fail("label-smoothing", args.label_smoothing, "in [0, 1)")
    if not 0 < args.model_ema_decay < 1:
        fail("model-ema-decay", args.model_ema_decay, "in (0, 1)")
    if not 0 <= args.distill_weight <= 1:
        fail("distill-weight", args.distill_weight, "in [0, 1]")
    if not (math.isfinite(args.distill_temperature) and args.distill_temperature > 0):
        fail("distill-temperature", args.distill_temperature, "a positive number")
    if args.clip_grad is not None and not (math.isfinite(args.clip_grad) and args.clip_grad > 0):
        fail("clip-grad", args.clip_grad, "a positive number")
    if args.steps is not None and args.phases:
        raise OptionError("--steps cannot be combined with [[phases]] (each phase counts epochs)")
    if args.phases and any("steps" in p for p in args.phases):
        raise OptionError("--steps cannot be combined with [[phases]] (each phase counts epochs)")
    if args.resume and args.overwrite:
        raise OptionError("--resume continues a run and --overwrite starts over: choose one")
    parse_model_kwargs(args.model_kwargs, args.model)  # names a bad key or type before any data is read


def main(args: argparse.Namespace) -> dict:
    """Train as ``args`` say; return the final and best metrics."""
    check_options(args)
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type == "cpu":
        raise OptionError(
            "--amp fp16 on the CPU runs far slower than fp32 (CPUs have no fast fp16 kernels); use --amp bf16"
        )
    dist_info, device = init_distributed(device)
    try:
        with RunFolder(Path(args.output), args, dist_info.is_main):
            return _run(args, dist_info, device)
    finally:
        shutdown_distributed(dist_info)


class StepCheckpoints:
    """When to write a checkpoint inside an epoch: every ``interval_s`` seconds, and at the step a stop signal
    arrived (the loop then stops: :class:`TrainingInterrupted`). ``save(steps_done, stats)`` writes it."""

    def __init__(self, interval_s: float, signals: StopSignals, save):
        self.interval_s, self.signals, self._save = interval_s, signals, save
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.signals.requested is not None or (
            self.interval_s > 0 and time.monotonic() - self.last >= self.interval_s
        )

    def save(self, steps_done: int, stats: list) -> None:
        where = self._save(steps_done, stats)
        self.last = time.monotonic()
        if self.signals.requested is not None:
            raise TrainingInterrupted(self.signals.requested, where)


def _run(args: argparse.Namespace, dist_info, device: torch.device) -> dict:
    log = print if dist_info.is_main else (lambda *a, **k: None)
    seed_everything(args.seed, args.deterministic)

    # Data first: the number of classes comes from the dataset.
    cfg = get_model_cfg(args.model)
    kind = args.dataset or detect_kind(args.data)
    augment = args.augment or default_augment(cfg)
    training_data = build_training_data(args, cfg, kind, augment, dist_info, device, log)
    train_loader, eval_loader, classes = training_data.train, training_data.eval, training_data.classes
    num_classes = args.num_classes or len(classes)

    model_kwargs = parse_model_kwargs(args.model_kwargs, args.model)
    model = create_model(args.model, pretrained=args.pretrained or False, num_classes=num_classes, **model_kwargs)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    iters_per_epoch = len(train_loader)
    if args.steps:
        args.epochs = math.ceil(args.steps / iters_per_epoch)
    amp, amp_reason = resolve_amp(args.amp, device)
    earlier = trained_on(vars(args)) if args.resume else []  # the resumed run's processes, before this one's
    args.amp_resolved, args.device_resolved = amp, device_description(device)  # recorded in args.json
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    teacher, args.teacher_runtime_resolved = None, None
    if args.teacher:
        teacher, args.teacher_runtime_resolved = load_teacher(
            args.teacher, model, device, args.channels_last, args.teacher_runtime, amp
        )
    ema = _model_ema(model, args) if args.model_ema else None  # before DDP wraps the model, as timm does
    if dist_info.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    evaluated = ema.module if ema is not None else _unwrap(model)  # the weights each evaluation measures
    # Static shapes: one graph for the batch size, one for an epoch's smaller last batch.
    forward = torch.compile(model, dynamic=False) if _check_compile(args, device) else model

    out = Path(args.output)
    ckpt, start_epoch, start_step, best, best_epoch = None, 0, 0, None, None
    if args.resume:
        path = resume_checkpoint_path(args.resume)
        saved = Checkpoint.read(path)
        ckpt = saved.training  # the run's state: epoch, optimizer, RNG, ...
        lacking = [k for k in ("rng", "epoch", "optimizer", "scheduler") if k not in ckpt]
        if lacking:
            raise CheckpointError(
                f"{path} holds weights without a training state (no {', '.join(lacking)}): --resume continues "
                f"a compactnets training run; to start a run from these weights use --pretrained {path}"
            )
        saved.load_exact(_unwrap(model))
        if ema is not None:
            if saved.state_dict_ema is None:
                raise CheckpointError(f"{path} was trained without --model-ema: resume it without")
            load_state_dict_checked(ema.module, saved.state_dict_ema, what=f"the EMA weights of {path}")
        if ckpt.get("running_buffers"):  # the file holds re-estimated BN statistics: go on from the running ones
            load_state_dict_checked(
                evaluated, {**evaluated.state_dict(), **ckpt["running_buffers"]}, what=f"the BN statistics of {path}"
            )
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_epoch, start_step = ckpt["epoch"], ckpt.get("step_in_epoch", 0)
        best, best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
        where = f"step {start_step}/{iters_per_epoch} of epoch {start_epoch + 1}" if start_step else None
        log(f"resuming {path} {f'at {where}' if where else f'after epoch {start_epoch}'}/{args.epochs} "
            f"(best top-1 {_fmt(best, '.2f')})")  # fmt: skip
    rows = read_log(out / "log.csv", start_epoch)
    # Each process that trains the run, with where it started: a run resumed on another machine says so.
    args.segments = [*earlier, segment(start_epoch, start_step, args.device_resolved, amp, forward is not model)]
    options = plain({k: v for k, v in vars(args).items() if not callable(v)})  # the CLI adds its handler
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(options, indent=2) + "\n")

    n_params = sum(p.numel() for p in _unwrap(model).parameters())
    data = f"{kind} {args.data}" if args.data else kind
    log(
        f"{args.model}: {n_params:,} params | data {data} ({training_data.num_train} train images, "
        f"{len(classes)} classes) | {args.epochs} epochs x {iters_per_epoch} iterations | {device} | out {out}"
    )
    compiled = " | forward compiled (torch.compile, once per batch shape)" if forward is not model else ""
    log(f"data: {training_data.description} | precision: {amp_dtype or torch.float32} ({amp_reason}){compiled}")
    levers = _levers_line(args, dist_info.world_size)
    if levers:
        log(levers)

    def measure(module: nn.Module, reestimated: bool, label: str) -> tuple[dict, nn.Module]:
        """The figures of ``module`` (in fp32 whatever the training precision: those `compactnets eval` reports)
        and the module measured: with ``reestimated``, a copy whose BN statistics are re-estimated. Measuring
        leaves the run as it was, RNG streams included: the levers measured at the end (:func:`weight_views`)
        are exactly those of runs trained without them."""
        state = rng_state()
        try:
            if reestimated:
                module = copy.deepcopy(module)
                reestimate_bn(module, training_data.bn_batches, device, channels_last=args.channels_last)
            progress = Progress(show_progress, label, args.log_interval)
            stats = evaluate(module, eval_loader, device, channels_last=args.channels_last, progress=progress)
        finally:
            set_rng_state(state)
        return stats, module

    def evaluation(epoch: int) -> tuple[dict, nn.Module]:
        """The evaluated weights' figures, and those weights as measured."""
        return measure(evaluated, training_data.bn_batches is not None, f"eval after epoch {epoch + 1}")

    def weight_views(stats: dict, measured: nn.Module) -> list[dict]:
        """The weights as they are now, measured each way: the EMA and the raw weights, each with its running BN
        statistics and with re-estimated ones (as the run's options allow): what each lever changes."""
        weights = {"ema": ema.module, "raw": _unwrap(model)} if ema is not None else {"raw": _unwrap(model)}
        views = []
        for name, module in weights.items():
            for bn in ("re-estimated", "running") if training_data.bn_batches is not None else ("running",):
                if module is evaluated and (bn == "re-estimated") == (measured is not evaluated):
                    figures = stats  # the evaluation's own
                else:
                    figures = measure(module, bn == "re-estimated", f"{name} weights, {bn} BN")[0]
                views.append({"weights": name, "bn": bn, **{k: figures[k] for k in ("top1", "top5", "loss")}})
        return views

    def checkpoint(state: dict, measured: nn.Module | None = None) -> Checkpoint:
        """The weights as they are now (and their EMA), with the training state ``state``. ``measured``: the
        evaluated weights as measured (BN statistics re-estimated), saved in their place, so that the file gives
        the logged figures; the state keeps the running statistics, which a resumed run goes on from."""
        raw, ema_module = _unwrap(model), (ema.module if ema is not None else None)
        if measured is not None and measured is not evaluated:
            state = {**state, "running_buffers": dict(evaluated.named_buffers())}
            raw, ema_module = (raw, measured) if ema is not None else (measured, None)
        return Checkpoint.of_model(raw, ema_module, model_kwargs=model_kwargs, class_names=classes, training=state)

    def training_state(epoch: int, phase: int, optimizer, scheduler, **position) -> dict:
        """The state a run resumes from, and where in the run it stands (``position``)."""
        return {
            "epoch": epoch,
            "phase": phase,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "args": options,
            "best_top1": best,
            "best_epoch": best_epoch,
            "rng": rng_state(),
            **position,
        }

    def save_inside(epoch, phase, optimizer, scheduler, lr, clock, steps_done: int, stats: list) -> str:
        """A mid-epoch checkpoint: the sums of the epoch's steps so far travel with it."""
        if dist_info.is_main:
            position = {"step_in_epoch": steps_done, "epoch_stats": stats, "elapsed_s": clock.wall(),
                        "elapsed_cpu_s": clock.cpu(), "metrics": {"lr": lr}}  # fmt: skip
            checkpoint(training_state(epoch, phase, optimizer, scheduler, **position)).save(out / "last.pth")
        return f"saved at step {steps_done}/{iters_per_epoch} of epoch {epoch + 1}"

    def finish_epoch(epoch: int, state: dict, lr: float, train_stats: dict, clock: EpochClock, evaluate_now: bool):
        """Evaluate (when due), log, and save the best and last checkpoints of the trained epoch ``epoch``."""
        nonlocal best, best_epoch, metrics
        eval_stats = measured = None
        if evaluate_now:
            if dist_info.is_main:  # kept if the evaluation is interrupted: resuming evaluates this epoch again
                pending = _metrics(epoch, lr, train_stats, None, best, clock)
                checkpoint({**state, "metrics": pending, "pending_eval": True}).save(out / "last.pth")
            eval_stats, measured = evaluation(epoch)
            due = epoch + 1 == args.epochs or args.views_every_eval
            if due and (ema is not None or training_data.bn_batches is not None):
                views = weight_views(eval_stats, measured)
                if dist_info.is_main:
                    write_views(out, epoch + 1, views)
        # The best epoch is the best evaluated one (train top-1 only in runs that never evaluate).
        score = eval_stats["top1"] if eval_stats else (None if eval_loader is not None else train_stats["top1"])
        is_best = score is not None and (best is None or score > best)
        if is_best:
            best, best_epoch = score, epoch + 1
        metrics = _metrics(epoch, lr, train_stats, eval_stats, best, clock)
        if dist_info.is_main:
            saved = checkpoint({  # the weights as evaluated: BN statistics re-estimated
                **state, "metrics": metrics, "best_top1": best, "best_epoch": best_epoch, "rng": rng_state(),
                "pending_eval": False,
            }, measured)  # fmt: skip
            # Log, best, then last: a run killed between any two writes resumes from a consistent last.pth
            # (log rows after its epoch are dropped on resume).
            rows.append({k: ("" if v is None else v) for k, v in metrics.items()})
            _write_log(out / "log.csv", rows)
            if is_best:
                saved.save(out / "best.pth")
            saved.save(out / "last.pth")
        log(_epoch_line(metrics, args.epochs))

    show_progress = dist_info.is_main and not args.no_progress
    metrics = {}
    phases = build_phases(args, _lr_scale(args, dist_info.world_size))
    # Under torchrun only epoch ends are saved: a rank's partial sums are its own (see interrupt.py).
    interval_s = 0 if dist_info.enabled else 60 * args.checkpoint_interval
    with StopSignals(defer=not dist_info.enabled) as signals:
        if ckpt is not None and ckpt.get("pending_eval"):  # stopped during the evaluation of its last epoch
            m = ckpt["metrics"]
            train_stats = {"loss": m["train_loss"], "top1": m["train_top1"], "aux_loss": m["aux_loss"]}
            clock = EpochClock(m["epoch_time_s"], m.get("epoch_cpu_s"))
            finish_epoch(start_epoch - 1, ckpt, m["lr"], train_stats, clock, evaluate_now=True)
        elif args.eval_first and start_epoch == 0 and start_step == 0 and eval_loader is not None:
            e = evaluation(-1)[0]
            log(f"epoch 0 (before training): eval loss {e['loss']:.3f} top-1 {e['top1']:.2f} top-5 {e['top5']:.2f}")

        for index, phase in enumerate(phases):
            if phase.end <= start_epoch:
                continue
            resumed_inside = (
                ckpt is not None and ckpt.get("phase", 0) == index and (start_epoch > phase.start or start_step > 0)
            )
            if len(phases) > 1 and not resumed_inside:
                log(f"phase {index + 1}/{len(phases)}: epochs {phase.start + 1}-{phase.end}, lr {phase.args.lr:g}")
                if phase.restart_from_best:
                    best_ckpt = Checkpoint.read(out / "best.pth")
                    best_ckpt.load_exact(_unwrap(model))
                    log(f"  restarting from best.pth (epoch {best_ckpt.training['epoch']}), fresh {phase.args.opt} "
                        "optimizer")  # fmt: skip
            optimizer = create_optimizer(_unwrap(model), phase.args)
            # With --steps the schedule spans steps / iters_per_epoch (fractional) epochs: exactly the steps.
            schedule_args = (
                argparse.Namespace(**{**vars(phase.args), "epochs": args.steps / iters_per_epoch})
                if args.steps
                else phase.args
            )
            scheduler = create_scheduler(optimizer, schedule_args, iters_per_epoch)
            if resumed_inside:
                optimizer.load_state_dict(ckpt["optimizer"])
                scheduler.load_state_dict(ckpt["scheduler"])

            for epoch in range(max(start_epoch, phase.start), phase.end):
                inside = epoch == start_epoch and start_step > 0  # resumed inside this epoch
                step0, stats0 = (start_step, ckpt["epoch_stats"]) if inside else (0, None)
                clock = EpochClock(ckpt["elapsed_s"], ckpt.get("elapsed_cpu_s")) if inside else EpochClock()
                training_data.set_epoch(epoch)
                lr = ckpt["metrics"]["lr"] if inside else optimizer.param_groups[0]["lr"]

                progress = Progress(show_progress, f"epoch {epoch + 1}/{args.epochs}", args.log_interval)
                with signals.deferred():
                    train_stats = train_one_epoch(
                        model, optimizer, scheduler, training_data.batches_from(step0), device, phase.args,
                        scaler, autocast, progress, first_step=epoch * iters_per_epoch, start_step=step0,
                        stats=stats0, teacher=teacher, ema=ema, forward=forward,
                        checkpoints=StepCheckpoints(
                            interval_s, signals,
                            functools.partial(save_inside, epoch, index, optimizer, scheduler, lr, clock),
                        ),
                    )  # fmt: skip
                evaluate_now = eval_loader is not None and (
                    (epoch + 1) % args.eval_every == 0 or epoch + 1 == phase.end
                )
                state = training_state(epoch + 1, index, optimizer, scheduler)
                finish_epoch(epoch, state, lr, train_stats, clock, evaluate_now)
    if metrics:
        log(
            f"best top-1 {_fmt(best, '.2f')} at epoch {best_epoch}; "
            f"checkpoints in {out}/ (last.pth, best.pth), log {out}/log.csv"
        )
    return {"final": metrics, "best_top1": best, "best_epoch": best_epoch, "output": str(out)}


def _check_compile(args: argparse.Namespace, device: torch.device) -> bool:
    """Whether to compile the training forward; on the CPU, Inductor's C++ compiler must exist (else it would
    fail at the first step with a long trace)."""
    if not args.compile or device.type != "cpu":
        return args.compile
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception:
        raise OptionError(
            "--compile on the CPU needs the C++ compiler torch.compile's Inductor builds with (none found: "
            "install g++ or set CXX), or train with --no-compile"
        ) from None
    return True


def _model_ema(model: nn.Module, args: argparse.Namespace):
    try:
        from timm.utils import ModelEmaV3
    except ImportError:
        raise OptionError("--model-ema uses timm's ModelEmaV3: pip install 'compactnets[timm]'") from None
    # Kept in float32 whatever the autocast: a bf16 average cannot hold updates of (1 - decay) x the weights.
    return ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup, dtype=torch.float32)


def _lr_scale(args: argparse.Namespace, world_size: int) -> float:
    """``--lr-base-batch B``: the rates are given for batches of B images, scaled linearly to the global batch."""
    return args.batch_size * world_size / args.lr_base_batch if args.lr_base_batch else 1.0


def _levers_line(args: argparse.Namespace, world_size: int) -> str:
    parts = []
    if args.lr_base_batch:
        scale = _lr_scale(args, world_size)
        parts.append(f"lr {args.lr:g} x {scale:g} = {args.lr * scale:g} (batch {args.batch_size * world_size})")
    if args.model_ema:
        parts.append(f"EMA decay {args.model_ema_decay:g}{' with warm-up' if args.model_ema_warmup else ''}"
                     " (evaluated and saved)")  # fmt: skip
    if args.teacher:
        parts.append(f"distilling from {args.teacher} (weight {args.distill_weight:g}, T {args.distill_temperature:g}, "
                     f"{args.teacher_runtime_resolved})")  # fmt: skip
    if args.bn_reestimate:
        how = "augmented as in training" if args.bn_augment == "train" else "un-augmented"
        parts.append(
            f"BN statistics re-estimated on {args.bn_reestimate} training images ({how}) before each evaluation"
        )
    return "levers: " + "; ".join(parts) if parts else ""


def _metrics(epoch: int, lr: float, train_stats: dict, eval_stats: dict | None, best, clock: EpochClock) -> dict:
    cpu = clock.cpu()
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": train_stats["loss"],
        "train_top1": train_stats["top1"],
        "aux_loss": train_stats["aux_loss"],
        "eval_loss": eval_stats and eval_stats["loss"],
        "eval_top1": eval_stats and eval_stats["top1"],
        "eval_top5": eval_stats and eval_stats["top5"],
        "best_top1": best,
        "epoch_time_s": round(clock.wall(), 2),
        "epoch_cpu_s": None if cpu is None else round(cpu, 2),
    }


def _epoch_line(m: dict, epochs: int) -> str:
    line = (
        f"epoch {m['epoch']}/{epochs}  lr {m['lr']:.4g}  train loss {m['train_loss']:.3f} top-1 {m['train_top1']:.2f}"
    )
    if m["aux_loss"] is not None:
        line += f"  aux {m['aux_loss']:.4f}"
    if m["eval_top1"] is not None:
        line += f"  | eval loss {m['eval_loss']:.3f} top-1 {m['eval_top1']:.2f} top-5 {m['eval_top5']:.2f}"
    if m["best_top1"] is not None:  # None until the first evaluated epoch
        line += f"  | best {m['best_top1']:.2f}"
    return line + f"  ({m['epoch_time_s']:.0f}s)"


def default_output(model: str) -> str:
    return str(Path("runs") / f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def stored_args(resume: str) -> dict:
    """The options a run was started with, read from its checkpoint."""
    return dict(Checkpoint.read(resume_checkpoint_path(resume)).training.get("args") or {})
