"""The data anchor: what a CIFAR-10 copy costs a recipe that is known to reach its published figure.

airbench94_muon (Keller Jordan, github.com/KellerJordan/cifar10-airbench, ``airbench94_muon.py``; the method in
arXiv 2404.00498) reaches 94.01 % top-1 (mean of 200 runs, with its test-time augmentation) on the original
CIFAR-10 batches after 8 epochs. This script trains the same network with the same recipe on the CIFAR-10 copy
given by ``--data`` and prints its accuracy beside 94.01. On ``../shared/data/cifar10`` (the official images
re-encoded as JPEG quality 75) the gap is what that data costs a recipe whose figure is settled, the reference
against which the seed rows' misses in training/results.md are read.

    python benchmarks/airbench_anchor.py --data ../shared/data/cifar10 --threads 2
    python benchmarks/airbench_anchor.py --data ../shared/data/cifar10 --runs 3 --json anchor.json
    python benchmarks/airbench_anchor.py --data ../shared/data/cifar10 --compare-with airbench94_muon.py

The last one checks the port against the published script (its own classes, stepped beside this one's).

The recipe, written here from the published script: a frozen 2x2 patch-whitening conv (eigenvectors of the patch
covariance of 5,000 training images, +-) with a trained bias (for the first 3 epochs only), GELU, three blocks
(3x3 conv, 2x2 max pool, BN, GELU, 3x3 conv, BN, GELU) of widths 64/256/256 with identity-initialised filters,
3x3 max pool, a bias-free linear head scaled by 1/256; BN with momentum 0.4 (airbench's 0.6) and frozen scales;
batch 2000, label smoothing 0.2 on summed losses; Muon (lr 0.24, momentum 0.6, Nesterov, 3 Newton-Schulz steps)
on the filters, renormalised to norm sqrt(out channels) before each step; Nesterov SGD (momentum 0.85) on the
biases (lr 0.053) and the head (lr 0.67), coupled weight decay 0.004 / lr; every lr decays linearly to 0;
reflect-padded random translation by up to 2 pixels and a random flip of the whole set made once, then the set
mirrored every other epoch; the accuracy with its 6-view test-time augmentation (mirror x translation by one
pixel), the single-view figure beside it.

Where the CPU differs from the A100 script: float32 throughout (its float16 has no fast path on most CPUs;
float32 loses nothing), the filters kept as (out, in * 3 * 3) matrices so that ``torch.optim.Muon`` (2-D only)
takes them as they are, and the whitening estimated on 5,000 training images drawn at random (an ImageFolder
lists its images class by class, where the python batches are shuffled).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import os
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F
from common import environment  # benchmarks/common.py
from torch import nn

from compactnets.data import DataError, detect_kind
from compactnets.data.memory import decode_split

PUBLISHED_TOP1 = 94.01  # airbench94_muon.py, mean of 200 runs on the original batches, 6-view TTA
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
EPOCHS = 8
BATCH = 2000
WHITEN_BIAS_EPOCHS = 3
LABEL_SMOOTHING = 0.2
FILTER_LR, FILTER_MOMENTUM, NEWTON_SCHULZ_STEPS = 0.24, 0.6, 3
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
BIAS_LR, HEAD_LR, SGD_MOMENTUM = 0.053, 0.67, 0.85
WEIGHT_DECAY = 2e-6 * BATCH
TRANSLATE = 2


class Conv(nn.Module):
    """A 3x3 'same' convolution without bias whose filters live as an (out, in * 9) matrix, the shape Muon
    orthogonalises; initialised as ``nn.Conv2d`` is, then the first ``in`` filters set to the identity."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        filters = nn.Conv2d(channels_in, channels_out, 3, bias=False).weight.detach()
        nn.init.dirac_(filters[:channels_in])
        self.shape = filters.shape
        self.weight = nn.Parameter(filters.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.view(self.shape), padding=1)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    norm.weight.requires_grad_(False)
    return norm


class ConvGroup(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__(
            Conv(channels_in, channels_out),
            nn.MaxPool2d(2),
            batch_norm(channels_out),
            nn.GELU(),
            Conv(channels_out, channels_out),
            batch_norm(channels_out),
            nn.GELU(),
        )


class CifarNet(nn.Module):
    WIDTHS = (64, 256, 256)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.whiten = nn.Conv2d(3, 2 * 3 * 2 * 2, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        widths = (self.whiten.out_channels, *self.WIDTHS)
        self.layers = nn.Sequential(
            nn.GELU(), *(ConvGroup(a, b) for a, b in itertools.pairwise(widths)), nn.MaxPool2d(3), nn.Flatten()
        )
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        with torch.no_grad():
            self.head.weight /= self.head.weight.std()

    @torch.no_grad()
    def init_whiten(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Filters that whiten the 2x2 patches of ``images`` (normalised, NCHW): the eigenvectors of their
        covariance scaled by 1 / sqrt(eigenvalue + eps), each also negated (GELU follows)."""
        c, (h, w) = images.shape[1], self.whiten.kernel_size
        patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = eigenvectors.T.reshape(-1, c, h, w) / torch.sqrt(eigenvalues.view(-1, 1, 1, 1) + eps)
        self.whiten.weight.copy_(torch.cat((filters, -filters)).float())

    def forward(self, x: torch.Tensor, whiten_bias_grad: bool = True) -> torch.Tensor:
        bias = self.whiten.bias if whiten_bias_grad else self.whiten.bias.detach()
        x = self.layers(F.conv2d(x, self.whiten.weight, bias))
        return self.head(x) / x.size(-1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, standardised with CIFAR-10's mean and std."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR_MEAN, CIFAR_STD))
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(len(images), generator=generator) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def random_translate(padded: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A ``size`` x ``size`` crop of each padded image at an independent random offset (every offset equally
    likely), one slice per offset value."""
    r = (padded.size(-1) - size) // 2
    shifts = torch.randint(0, 2 * r + 1, (len(padded), 2), generator=generator)
    rows = torch.empty(*padded.shape[:2], size, padded.size(-1), dtype=padded.dtype)
    for s in range(2 * r + 1):
        chosen = shifts[:, 0] == s
        rows[chosen] = padded[chosen, :, s : s + size, :]
    out = torch.empty(*padded.shape[:2], size, size, dtype=padded.dtype)
    for s in range(2 * r + 1):
        chosen = shifts[:, 1] == s
        out[chosen] = rows[chosen, :, :, s : s + size]
    return out.contiguous(memory_format=torch.channels_last)


def epoch_batches(flipped_padded: torch.Tensor, labels: torch.Tensor, epoch: int, generator: torch.Generator):
    """airbench's training epoch: fresh translations of the once-flipped set, the whole set mirrored on odd
    epochs, shuffled, full batches only."""
    images = random_translate(flipped_padded, flipped_padded.size(-1) - 2 * TRANSLATE, generator)
    if epoch % 2 == 1:
        images = images.flip(-1)
    order = torch.randperm(len(images), generator=generator)
    for i in range(len(images) // BATCH):
        index = order[i * BATCH : (i + 1) * BATCH]
        yield images[index], labels[index]


def tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    """Level 0: one view; 1: the mean with the mirror image; 2: half that, half its mean over translations by
    one pixel up-left and down-right (reflect padding): airbench's 6 views and weights."""

    def mirrored(v):
        return 0.5 * (model(v) + model(v.flip(-1)))

    if level == 0:
        return model(x)
    if level == 1:
        return mirrored(x)
    size = x.size(-1)
    padded = F.pad(x, (1,) * 4, "reflect")
    shifted = [padded[:, :, :size, :size], padded[:, :, 2 : 2 + size, 2 : 2 + size]]
    return 0.5 * mirrored(x) + 0.25 * sum(mirrored(v) for v in shifted)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, level: int) -> float:
    model.eval()
    logits = torch.cat([tta_logits(model, x, level) for x in images.split(BATCH)])
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def bias_and_head_sgd(whiten_bias, norm_biases: list, head_weight) -> torch.optim.SGD:
    """Nesterov SGD in three groups (whitening bias, BN biases, head), coupled weight decay scaled by 1 / lr."""
    return torch.optim.SGD(
        [
            dict(params=[whiten_bias], lr=BIAS_LR, weight_decay=WEIGHT_DECAY / BIAS_LR),
            dict(params=norm_biases, lr=BIAS_LR, weight_decay=WEIGHT_DECAY / BIAS_LR),
            dict(params=[head_weight], lr=HEAD_LR, weight_decay=WEIGHT_DECAY / HEAD_LR),
        ],
        momentum=SGD_MOMENTUM,
        nesterov=True,
    )


def make_optimizers(model: CifarNet) -> tuple[torch.optim.SGD, torch.optim.Muon]:
    """Nesterov SGD for the whitening bias, the BN biases and the head; Muon for the filters."""
    filters = [m.weight for m in model.modules() if isinstance(m, Conv)]
    norm_biases = [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    sgd = bias_and_head_sgd(model.whiten.bias, norm_biases, model.head.weight)
    muon = torch.optim.Muon(
        filters,
        lr=FILTER_LR,
        momentum=FILTER_MOMENTUM,
        nesterov=True,
        weight_decay=0.0,
        ns_coefficients=NEWTON_SCHULZ_COEFFICIENTS,
        ns_steps=NEWTON_SCHULZ_STEPS,
    )
    for group in (*sgd.param_groups, *muon.param_groups):
        group["initial_lr"] = group["lr"]
    return sgd, muon


def optimizer_step(sgd: torch.optim.SGD, muon: torch.optim.Muon, step: int, total_steps: int, bias_steps: int) -> None:
    """Step ``step`` (from 0): every lr decayed linearly to 0 over its steps (the whitening bias over the first
    ``bias_steps``), the filters renormalised to norm sqrt(out channels), then both updates."""
    sgd.param_groups[0]["lr"] = BIAS_LR * max(0.0, 1 - step / bias_steps)
    for group in (*sgd.param_groups[1:], *muon.param_groups):
        group["lr"] = group["initial_lr"] * (1 - step / total_steps)
    with torch.no_grad():
        for p in muon.param_groups[0]["params"]:
            p.mul_(len(p) ** 0.5 / p.norm())
    sgd.step()
    muon.step()


def train(model: CifarNet, images: torch.Tensor, labels: torch.Tensor, seed: int, log=print) -> None:
    """The recipe, on normalised NCHW ``images``; the model as built (filters and whitening set here)."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(images) // BATCH
    if steps_per_epoch == 0:
        raise ValueError(f"{len(images)} training images make no batch of {BATCH}")
    total_steps = EPOCHS * steps_per_epoch
    bias_steps = WHITEN_BIAS_EPOCHS * steps_per_epoch
    model.init_whiten(images[torch.randperm(len(images), generator=generator)[:5000]])
    update = functools.partial(optimizer_step, *make_optimizers(model), total_steps=total_steps, bias_steps=bias_steps)
    padded = F.pad(random_flip(images, generator), (TRANSLATE,) * 4, "reflect")
    step = 0
    for epoch in range(EPOCHS):
        model.train()
        start = time.perf_counter()
        for x, y in epoch_batches(padded, labels, epoch, generator):
            outputs = _train_step(model, x, y, step, bias_steps, update)
            step += 1
        accuracy = 100.0 * (outputs.argmax(1) == y).float().mean().item()
        log(f"  epoch {epoch + 1}/{EPOCHS}: {time.perf_counter() - start:.0f} s, last batch {accuracy:.1f} % train")


def _newton_schulz64(g: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """Muon's orthogonalisation in float64: for comparing two formulations without bfloat16 rounding between them."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = g.double() / (g.double().norm() + eps)
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


def compare_with_published(path: str, images: torch.Tensor, labels: torch.Tensor, steps: int = 6) -> None:
    """Trains this script's model and the published script's own (its classes, loaded from ``path``, on the CPU in
    float32; the optimisers as its ``main`` builds them) from the same weights on the same batches of 100, both
    orthogonalising in float64, and prints the largest logit difference at each step, beside that of this script
    against itself with one filter changed by 1e-7 (Muon magnifies rounding, so later steps part either way)."""
    spec = importlib.util.spec_from_file_location("airbench_published", path)
    published = importlib.util.module_from_spec(spec)
    with mock.patch("torch.compile", lambda fn=None, **_: fn):  # its GPU-tuned decorator: eager here
        spec.loader.exec_module(published)
    missing = [name for name in ("CifarNet", "Muon", "zeropower_via_newtonschulz5") if not hasattr(published, name)]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)}: not airbench94_muon.py")
    published.zeropower_via_newtonschulz5 = lambda g, steps=NEWTON_SCHULZ_STEPS, eps=1e-7: _newton_schulz64(g, steps)
    ours, nudged = CifarNet(), CifarNet()
    ours.init_whiten(images)
    theirs = published.CifarNet().float()
    names = {"0": "conv1", "2": "norm1", "4": "conv2", "5": "norm2"}
    state = {}
    for name, tensor in ours.state_dict().items():
        parts = name.split(".")
        if parts[0] == "layers" and len(parts) > 2:  # layers.G.I.x -> layers.G.convN / normN.x
            block = getattr(theirs.layers[int(parts[1])], names[parts[2]])
            name = ".".join(["layers", parts[1], names[parts[2]], *parts[3:]])
            tensor = tensor.view(block.weight.shape) if names[parts[2]].startswith("conv") else tensor
        state[name] = tensor
    theirs.load_state_dict(state)
    nudged.load_state_dict(ours.state_dict())
    with torch.no_grad():
        nudged.layers[2][4].weight.add_(torch.randn(nudged.layers[2][4].weight.shape) * 1e-7)
    filters = [p for p in theirs.parameters() if p.ndim == 4 and p.requires_grad]
    norm_biases = [p for n, p in theirs.named_parameters() if "norm" in n and p.requires_grad]
    their_sgd = bias_and_head_sgd(theirs.whiten.bias, norm_biases, theirs.head.weight)
    their_muon = published.Muon(filters, lr=FILTER_LR, momentum=FILTER_MOMENTUM, nesterov=True)
    for group in (*their_sgd.param_groups, *their_muon.param_groups):
        group["initial_lr"] = group["lr"]
    total_steps, bias_steps = 10, 4

    def step_published(step: int) -> None:  # its main's schedule, then its two optimisers
        their_sgd.param_groups[0]["lr"] = BIAS_LR * (1 - step / bias_steps)
        for group in (*their_sgd.param_groups[1:], *their_muon.param_groups):
            group["lr"] = group["initial_lr"] * (1 - step / total_steps)
        their_sgd.step()
        their_muon.step()

    updates = [
        *((m, functools.partial(optimizer_step, *make_optimizers(m), total_steps=total_steps, bias_steps=bias_steps))
          for m in (ours, nudged)),
        (theirs, step_published),
    ]  # fmt: skip
    with mock.patch("torch.optim._muon._zeropower_via_newtonschulz", lambda g, _, n, eps: _newton_schulz64(g, n)):
        for step in range(steps):
            x, y = images[step * 100 : (step + 1) * 100], labels[step * 100 : (step + 1) * 100]
            mine, nudged_out, published_out = (
                _train_step(model, x, y, step, bias_steps, update) for model, update in updates
            )
            print(
                f"step {step}: max |logit difference| against the published script "
                f"{(mine - published_out).abs().max():.1e}, against itself nudged "
                f"{(mine - nudged_out).abs().max():.1e} (max |logit| {mine.abs().max():.2f})"
            )


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int, bias_steps: int, update) -> torch.Tensor:
    """Step ``step`` of the recipe: its loss, backward, then ``update(step)`` (the optimisers). Returns the logits
    before the update."""
    model.train()
    outputs = model(x, whiten_bias_grad=step < bias_steps)
    F.cross_entropy(outputs, y, label_smoothing=LABEL_SMOOTHING, reduction="sum").backward()
    update(step)
    model.zero_grad(set_to_none=True)
    return outputs.detach()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a CIFAR-10 copy: an ImageFolder tree or the python batches")
    parser.add_argument("--runs", type=int, default=1, help="independent runs (seeds 0, 1, ...)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--train-limit", type=int, default=None, help="a random subset of the training set")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--compare-with",
        metavar="AIRBENCH94_MUON_PY",
        help="instead of training: run that file (the published script) and step its classes beside this one's",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        kind = detect_kind(args.data)
        train_split = decode_split(args.data, "train", kind, limit=args.train_limit)
        test_split = decode_split(args.data, "test", kind)
    except DataError as e:
        parser.exit(2, f"error: {e}\n")
    if len(train_split.classes) != 10:
        parser.exit(2, f"error: {args.data} has {len(train_split.classes)} classes; the anchor is CIFAR-10's\n")
    if len(train_split) < BATCH:
        parser.exit(2, f"error: {len(train_split)} training images make no batch of {BATCH}\n")
    train_images = normalize(train_split.images)
    if args.compare_with:
        if not os.path.isfile(args.compare_with):
            parser.exit(2, f"error: --compare-with: no file {args.compare_with}\n")
        torch.manual_seed(0)
        sample = torch.randperm(len(train_images))[:600]
        try:
            return compare_with_published(args.compare_with, train_images[sample], train_split.targets[sample])
        except ValueError as e:
            parser.exit(2, f"error: {e}\n")
    test_images = normalize(test_split.images)
    print(environment())
    print(f"data {args.data}: {len(train_images)} train / {len(test_images)} test images")
    print(f"{EPOCHS} epochs, batch {BATCH}, {args.runs} run(s)")

    results = []
    for run in range(args.runs):
        torch.manual_seed(run)
        model = CifarNet().to(memory_format=torch.channels_last)
        start = time.perf_counter()
        train(model, train_images, train_split.targets, seed=run)
        minutes = (time.perf_counter() - start) / 60
        single, tta = (evaluate(model, test_images, test_split.targets, level) for level in (0, 2))
        results.append(dict(seed=run, top1_tta=tta, top1_single_view=single, train_minutes=minutes))
        print(f"run {run}: top-1 {tta:.2f} % with TTA ({single:.2f} % single view), trained in {minutes:.1f} min")
    tta = [r["top1_tta"] for r in results]
    mean = statistics.mean(tta)
    spread = f" +- {statistics.stdev(tta):.2f} (std)" if len(tta) > 1 else ""
    print(
        f"airbench94_muon on {args.data}: {mean:.2f} %{spread} over {len(tta)} run(s) with TTA; "
        f"published on the original batches: {PUBLISHED_TOP1:.2f} %: {mean - PUBLISHED_TOP1:+.2f} points"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(data=args.data, published_top1=PUBLISHED_TOP1, runs=results), f, indent=2)


if __name__ == "__main__":
    main()
