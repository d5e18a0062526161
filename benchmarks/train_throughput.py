"""Training throughput (images/s) of the in-memory fast data path against the torchvision DataLoader path.

Both paths run the engine's own training step (``engine.train.train_one_epoch``: forward, loss, backward, SGD
update) on the same data, model and precision; only the batches differ: uint8 tensors in memory, cropped and
flipped as whole batches (``--fast-data on``), or JPEG decoding and per-image torchvision transforms in
DataLoader worker processes (``--fast-data off``, the default worker count). The two are interleaved, one chunk
of ``--iters`` iterations each per round, from iterators that stay open across rounds (no worker start-up in the
timings), so load from other processes hits both alike: compare the ratio. The workers compete with the model for
the same cores, which is what the fast path saves on a CPU.

    python benchmarks/train_throughput.py --data ../shared/data/cifar10 --threads 2
    python benchmarks/train_throughput.py --paths fast --models nin nin_gc nin_xnornet nin_gc_xnornet
    python benchmarks/train_throughput.py --paths fast --models nin_xnornet --teacher nin.cifar10jpeg_cpu60
    python benchmarks/train_throughput.py --paths fast --models nin_xnornet --teacher nin.cifar10jpeg_cpu60 \
        --teacher-runtimes torch openvino
    python benchmarks/train_throughput.py --paths fast --models resnet32_s8u1_cifar10 --forwards eager compiled
    python benchmarks/train_throughput.py --paths fast --models nin --memory-formats channels-last contiguous

With several ``--teacher-runtimes``, ``--forwards`` or ``--memory-formats`` each is a variant of its own, interleaved
with the others like the paths (a compiled forward is compiled during the warm-up, as ``train --compile`` does once
per process).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from common import environment  # benchmarks/common.py

from compactnets.data import detect_kind
from compactnets.engine.distill import load_teacher
from compactnets.engine.distributed import DistInfo
from compactnets.engine.loaders import build_training_data
from compactnets.engine.precision import resolve_amp
from compactnets.engine.progress import Progress
from compactnets.engine.train import add_train_args, train_one_epoch
from compactnets.models import create_model, get_model_cfg

DEFAULT_MODELS = ("resnet32_s8u1_cifar10", "nin_xnornet")
PATHS = ("fast", "dataloader")


class Chunk:
    """The next ``n`` batches of an open iterator, as a loader ``train_one_epoch`` can take."""

    def __init__(self, iterator, n: int):
        self.iterator, self.n = iterator, n

    def __iter__(self):
        return itertools.islice(self.iterator, self.n)

    def __len__(self) -> int:
        return self.n


def endless(data):
    for epoch in itertools.count():
        data.set_epoch(epoch)
        yield from data.train


def make_run(
    model_name: str, path: str, argv: list[str], iters: int, device: torch.device, compiled: bool = False,
    channels_last: bool = True,
):  # fmt: skip
    """A function that trains one chunk on ``path``'s batches and returns the images it trained on."""
    layout = "--channels-last" if channels_last else "--no-channels-last"
    args = add_train_args(argparse.ArgumentParser()).parse_args(
        [*argv, "--model", model_name, "--fast-data", "on" if path == "fast" else "off", "--eval-every", "0", layout]
    )
    note = ""
    cfg = get_model_cfg(model_name)
    data = build_training_data(args, cfg, detect_kind(args.data), "cifar", DistInfo(), device, print)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=len(data.classes)).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    amp = resolve_amp(args.amp, device)[0]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    teacher = None
    if args.teacher:
        teacher, note = load_teacher(args.teacher, model, device, channels_last, args.teacher_runtime, amp)
    batches = endless(data)
    forward = torch.compile(model, dynamic=False) if compiled else model

    def run() -> int:
        stats = train_one_epoch(
            model, optimizer, scheduler, Chunk(batches, iters), device, args, None, autocast,
            Progress(False, ""), teacher=teacher, forward=forward,
        )  # fmt: skip
        assert stats["loss"] == stats["loss"], "the loss is NaN"
        return iters * args.batch_size

    return run, f"{data.description}{f', {note}' if note else ''}", amp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10", help="dataset folder (CIFAR-size images)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--amp", default="auto", choices=("auto", "none", "bf16"))
    parser.add_argument("--iters", type=int, default=10, help="iterations per timed chunk")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--teacher", help="distil from this model (a distilled recipe's step: the teacher's forward too)"
    )
    parser.add_argument(
        "--teacher-runtimes", nargs="+", choices=("torch", "openvino"), default=["torch"],
        help="what runs the teacher's forward: each runtime is a variant, interleaved",
    )  # fmt: skip
    parser.add_argument(
        "--forwards", nargs="+", choices=("eager", "compiled"), default=["eager"],
        help="the training forward as it is, or through torch.compile (train --compile): each a variant, interleaved",
    )  # fmt: skip
    parser.add_argument(
        "--memory-formats", nargs="+", choices=("channels-last", "contiguous"), default=["channels-last"],
        help="the batches' and weights' layout (train --[no-]channels-last): each a variant, interleaved",
    )  # fmt: skip
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=list(PATHS),
        help="data paths to time (fast alone: the training step's own rate, per model)",
    )
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    argv = ["--data", opts.data, "--batch-size", str(opts.batch_size), "--amp", opts.amp]
    argv += ["--teacher", opts.teacher] if opts.teacher else []
    print(environment().replace(", NCHW float32", ""))
    teacher = f", distilled from {opts.teacher}" if opts.teacher else ""
    layouts = "" if len(opts.memory_formats) > 1 else f", {opts.memory_formats[0]}"
    print(f"data {opts.data}, batch {opts.batch_size}{layouts}{teacher}, {opts.iters} iterations x {opts.rounds} "
          "rounds")  # fmt: skip
    runtimes = opts.teacher_runtimes if opts.teacher else ["torch"]
    for name in opts.models:
        runs, notes = {}, {}
        variants = itertools.product(opts.paths, runtimes, opts.forwards, opts.memory_formats)
        for path, runtime, forward, layout in variants:
            varied = [runtime] * (len(runtimes) > 1) + [forward] * (len(opts.forwards) > 1)
            varied += [layout] * (len(opts.memory_formats) > 1)
            variant = ", ".join([path, *varied])
            run, description, amp = make_run(
                name, path, [*argv, "--teacher-runtime", runtime], opts.iters, device, forward == "compiled",
                layout == "channels-last",
            )  # fmt: skip
            runs[variant], notes[variant] = run, description
        for run in runs.values():  # warm-up: first batches, workers started, kernels chosen
            run()
        rates = {variant: [] for variant in runs}
        for _ in range(opts.rounds):
            for variant, run in runs.items():
                start = time.perf_counter()
                images = run()
                rates[variant].append(images / (time.perf_counter() - start))
        median = {variant: statistics.median(r) for variant, r in rates.items()}
        print(f"\n{name} ({f'{amp} autocast' if amp != 'none' else 'fp32'}):")
        for variant in runs:
            print(f"  {variant:30s} {median[variant]:7.1f} img/s (median; min {min(rates[variant]):.1f}, max "
                  f"{max(rates[variant]):.1f})  {notes[variant]}")  # fmt: skip
        first, *others = runs
        for other in others:  # the faster over the slower
            fast, slow = sorted((first, other), key=median.get, reverse=True)
            print(f"  {fast} / {slow}: {median[fast] / median[slow]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
