"""Optimizers with weight-decay groups, and the learning-rate schedules of the seed recipes."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("multistep", "cosine", "linear", "constant")
WD_FILTERS = ("all", "kernels")


def param_groups(model: nn.Module, weight_decay: float, wd_filter: str = "all") -> list[dict]:
    """``all``: decay every parameter (BN and biases too). ``kernels``: decay only conv/linear kernels
    (parameters with more than one dimension) not listed in ``model.no_weight_decay()``."""
    if wd_filter == "all" or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    if wd_filter != "kernels":
        raise ValueError(f"unknown weight-decay filter {wd_filter!r}; choose from {', '.join(WD_FILTERS)}")
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 and name not in skip else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    groups = param_groups(model, args.weight_decay, args.wd_filter)
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov)
    if args.opt == "adam":
        return torch.optim.Adam(groups, lr=args.lr)
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr)
    raise ValueError(f"unknown optimizer {args.opt!r}; choose from {', '.join(OPTIMIZERS)}")


def lr_factor_fn(args, iters_per_epoch: int) -> Callable[[int], float]:
    """The learning rate of iteration ``step`` (0-based) as a fraction of the base rate.

    * ``multistep``: x ``lr_gamma`` at each milestone epoch, per epoch. With ``lr_milestone_lag = 1`` a drop
      lands one epoch after its milestone, as when ``MultiStepLR.step(epoch=e)`` runs after epoch e (MCTS):
      milestones 100/150 of 200 epochs then drop at 0-based epochs 101 and 151.
    * ``cosine``: half cosine from 1 to ``min_lr / lr`` over the iterations after warm-up.
    * ``linear``: from 1 after warm-up down to 0 on the iteration after the last, per iteration (with a warm-up,
      the triangular one-cycle schedule of fast CIFAR training).
    * ``constant``.
    Warm-up (any schedule): linear from 0 over ``warmup_epochs``, per iteration: ``step / warmup_steps``.
    """
    total = args.epochs * iters_per_epoch
    warmup = round(args.warmup_epochs * iters_per_epoch)
    milestones = list(args.lr_milestones or [])
    if args.lr_milestone_fractions:
        milestones += [f * args.epochs for f in args.lr_milestone_fractions]
    floor = args.min_lr / args.lr if args.lr else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        if args.sched == "multistep":
            epoch = step // iters_per_epoch
            return args.lr_gamma ** sum(m + args.lr_milestone_lag <= epoch for m in milestones)
        if args.sched == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if args.sched == "linear":
            return max(0.0, (total - step) / max(1, total - warmup))
        return 1.0

    if args.sched not in SCHEDULES:
        raise ValueError(f"unknown schedule {args.sched!r}; choose from {', '.join(SCHEDULES)}")
    return factor


def create_scheduler(optimizer: torch.optim.Optimizer, args, iters_per_epoch: int):
    """A LambdaLR stepped once per iteration. Its state is only the step count: on resume the schedule is
    rebuilt from the arguments (so ``--epochs`` can be extended) and the count restored."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(args, iters_per_epoch))
