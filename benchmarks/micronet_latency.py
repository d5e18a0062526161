"""CPU latency and throughput of MicroNet M0-M3: compactnets (training form and fused inference form) vs the
official implementation, with torchvision's ShuffleNetV2 x0.5 / x1.0 as anchors, all in one run.

Convention (docs/conventions section 7): ``torch.set_num_threads(N)`` (default 1), eval mode under
``torch.inference_mode()``, NCHW float32, warm-up runs, then timed runs with ``time.perf_counter``; median and
min reported. The implementations are interleaved (one forward of each per round), so load from other
processes hits all of them alike; compare ratios, not absolute times, on a shared machine.

The official code (liyunsheng13/micronet, e.g. commit ed89b26) is imported at run time from ``--official``
(the repository root, holding ``backbone/``); it is never part of compactnets. Its models get the same weights
as the compactnets models, and the script prints the largest logit difference as a check.

    python benchmarks/micronet_latency.py --official /path/to/micronet
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
from common import environment, randomize_bn, time_interleaved  # benchmarks/common.py

import compactnets
from compactnets.profiler import count_params

# The scripts' options (scripts/train_micronet_m*.sh) for the official MicroNet(cfg).
OFFICIAL_OPTIONS = {
    "m0": ("msnx_dy6_exp4_4M_221", 4, [2, 2], 640, 0.05, [1.0, 1.0], [0.0, 0.0]),
    "m1": ("msnx_dy6_exp6_6M_221", 6, [3, 2], 960, 0.05, [1.0, 1.0], [0.0, 0.0]),
    "m2": ("msnx_dy9_exp6_12M_221", 8, [4, 2], 1024, 0.1, [1.0, 1.0], [0.0, 0.0]),
    "m3": ("msnx_dy12_exp6_20M_020", 12, [4, 3], 1024, 0.1, [1.0, 0.5], [0.0, 0.5]),
}


def official_model(root: Path, variant: str) -> torch.nn.Module:
    """The official MicroNet, built with a plain namespace in place of its yacs config (no yacs needed)."""
    if not (root / "backbone" / "micronet.py").is_file():
        raise SystemExit(f"--official {root}: no backbone/micronet.py there (give the repository root)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from backbone.micronet import MicroNet

    net_config, stem_ch, stem_groups, out_ch, dropout, init_a, init_b = OFFICIAL_OPTIONS[variant]
    micronets = SimpleNamespace(
        NET_CONFIG=net_config, BLOCK="DYMicroBlock", STEM_CH=stem_ch, STEM_DILATION=1, STEM_GROUPS=stem_groups,
        STEM_MODE="spatialsepsf", OUT_CH=out_ch, DEPTHSEP=True, SHUFFLE=True, POINTWISE="group", DROPOUT=dropout,
    )  # fmt: skip
    activation = SimpleNamespace(
        MODULE="DYShiftMax", ACT_MAX=2.0, LINEARSE_BIAS=False, INIT_A_BLOCK3=[1.0, 0.0], INIT_A=init_a,
        INIT_B=init_b, REDUCTION=8,
    )  # fmt: skip
    cfg = SimpleNamespace(MODEL=SimpleNamespace(MICRONETS=micronets, ACTIVATION=activation))
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructors print every layer
        return MicroNet(cfg)


def forward_times(models: dict[str, torch.nn.Module], x: torch.Tensor, warmup: int, runs: int) -> dict:
    with torch.inference_mode():
        return time_interleaved({name: partial(model, x) for name, model in models.items()}, warmup, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="root of a liyunsheng13/micronet checkout")
    parser.add_argument("--models", nargs="+", default=["m0", "m1", "m2", "m3"], choices=list(OFFICIAL_OPTIONS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=100, help="timed batch-1 runs of each model")
    parser.add_argument("--batch", type=int, default=64, help="throughput batch size (0: skip)")
    parser.add_argument("--batch-runs", type=int, default=10)
    parser.add_argument("--no-anchors", action="store_true", help="skip torchvision's ShuffleNetV2 anchors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models: dict[str, torch.nn.Module] = {}
    params: dict[str, int] = {}
    x = torch.randn(8, 3, 224, 224)
    for variant in args.models:
        model = compactnets.create_model(f"micronet_{variant}")
        randomize_bn(model)
        model.eval()
        models[f"micronet_{variant}"] = model
        models[f"micronet_{variant} fused"] = model.fuse()
        params[f"micronet_{variant}"] = params[f"micronet_{variant} fused"] = count_params(model)
        if args.official:
            official = official_model(args.official, variant)
            official.load_state_dict(model.state_dict())
            official.eval()
            models[f"micronet_{variant} official"] = official
            params[f"micronet_{variant} official"] = count_params(official)
            with torch.inference_mode():
                reference = official(x)
                ours, fused = model(x), models[f"micronet_{variant} fused"](x)
            print(
                f"micronet_{variant}: max |logits - official| {(ours - reference).abs().max():.1e} (compactnets), "
                f"{(fused - reference).abs().max():.1e} (fused)"
            )
    if not args.no_anchors:
        import torchvision

        for name in ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0"):
            models[name] = getattr(torchvision.models, name)().eval()
            params[name] = count_params(models[name])

    print(f"\n{environment()}")
    single = forward_times(models, torch.randn(1, 3, 224, 224), args.warmup, args.runs)
    batched = forward_times(models, torch.randn(args.batch, 3, 224, 224), 2, args.batch_runs) if args.batch else {}

    header = (
        "model", "params", "b1 median ms", "b1 min ms", "vs official", "b1 CPU ms", "vs official",
        f"b{args.batch} img/s", "vs official",
    )  # fmt: skip
    rows = []
    for name in models:
        base = name.split()[0]
        official = f"{base} official" if f"{base} official" in models else None
        wall, cpu = (statistics.median(t) for t in single[name])
        row = [name, f"{params[name]:,}", f"{1000 * wall:.2f}", f"{1000 * min(single[name][0]):.2f}"]
        row.append(f"{wall / statistics.median(single[official][0]):.3f}" if official else "-")
        row.append(f"{1000 * cpu:.2f}")
        row.append(f"{cpu / statistics.median(single[official][1]):.3f}" if official else "-")
        if batched:
            seconds = statistics.median(batched[name][0])
            row.append(f"{args.batch / seconds:.1f}")
            row.append(f"{statistics.median(batched[official][0]) / seconds:.2f}x" if official else "-")
        else:
            row += ["-", "-"]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print(
        f"\nbatch 1: medians of {args.runs} interleaved runs after {args.warmup} warm-up rounds (wall clock, and "
        f"process CPU time); batch {args.batch}: {args.batch_runs} runs. 'vs official': latency ratio (lower is "
        "faster), throughput ratio (higher is faster)."
    )


if __name__ == "__main__":
    main()
