"""Packed vs float XNOR-Net on real data: file sizes, logit differences, differing top-1, and the trace of every sign
that came out differently to its pre-sign value.

    PYTHONPATH=src python benchmarks/binary_agreement.py --checkpoint runs/nin_xnornet/best.pth \
        --data ../shared/data/cifar10

The float model runs as ``compactnets eval`` runs it (NCHW). Differences can only come from float summation order
(the float conv adds +-alpha terms in some order; the kernel counts bits exactly): a sign flips only where its
pre-sign value lies within rounding of zero. A flip changes the next layers' inputs, so the trace keeps, per image,
the first layer where the signs differ: those flips are the primary ones, caused by rounding alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from compactnets.deploy.packed_export import export_packed
from compactnets.deploy.packed_plan import DEFAULT_PRECISION, PRECISIONS
from compactnets.deploy.packed_runtime import load_packed, read_packed
from compactnets.engine.evaluate import build_eval_loader, checkpoint_path, load_model
from compactnets.layers import BinaryActivation, BinaryConv2d
from compactnets.models import Checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from common import environment  # noqa: E402


def sizes(model, packed: Path, tmp: Path) -> dict:
    """Bytes of the float32 weights (safetensors), the packed file, and the binary layers in each."""
    from safetensors.torch import save_file

    float_file = tmp / "float.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(float_file))
    _, tensors = read_packed(packed)
    binary_float = 4 * sum(m.weight.numel() for m in model.modules() if isinstance(m, BinaryConv2d))
    binary_bits = sum(t.numel() for k, t in tensors.items() if k.endswith("weight_bits"))
    binary_terms = sum(  # per-channel thresholds, signs, alpha/bias of binary convs (shuffles: groups in the header)
        t.numel() * t.element_size()
        for k, t in tensors.items()
        if k.split(".", 1)[1] in ("threshold", "threshold_sign_bits", "alpha", "bias")
        and any(k.startswith(f"{i}.") for i in _binary_nodes(packed))
    )
    return {
        "float_safetensors_bytes": float_file.stat().st_size,
        "packed_bytes": packed.stat().st_size,
        "binary_weights_float_bytes": binary_float,
        "binary_weights_packed_bytes": binary_bits,
        "binary_per_channel_bytes": binary_terms,
    }


def _binary_nodes(packed: Path) -> list[int]:
    header, _ = read_packed(packed)
    return [i for i, n in enumerate(header["nodes"]) if n["op"] == "binary_conv2d"]


@torch.no_grad()
def compare(model, runner, loader) -> dict:
    pre_signs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda m, a, o: pre_signs.append(a[0]))
        for m in model.modules()
        if isinstance(m, BinaryActivation)
    ]
    layers = sum(isinstance(m, BinaryActivation) for m in model.modules())
    flips = [0] * layers
    primary_flips, primary_max = [0] * layers, [0.0] * layers
    typical = [[] for _ in range(layers)]
    exact_zeros = 0
    max_diff, count, top1_differ, float_correct, packed_correct = 0.0, 0, [], 0, 0
    try:
        for images, targets in loader:
            pre_signs.clear()
            logits = model(images)
            out, signs = runner.run_with_signs(images)
            max_diff = max(max_diff, (out - logits).abs().max().item())
            float_top1, packed_top1 = logits.argmax(1), out.argmax(1)
            float_correct += (float_top1 == targets).sum().item()
            packed_correct += (packed_top1 == targets).sum().item()
            first_layer = torch.full((len(images),), -1)
            first_value = torch.zeros(len(images))
            for i, (pre, got) in enumerate(zip(pre_signs, signs, strict=True)):
                exact_zeros += (pre == 0).sum().item()
                differ = torch.where(pre > 0, 1.0, -1.0) != got
                flips[i] += differ.sum().item()
                typical[i].append(pre.abs().median().item())
                per_image = differ.flatten(1).any(1)
                new = per_image & (first_layer < 0)
                for b in new.nonzero().flatten().tolist():
                    values = pre[b][differ[b]].abs()
                    primary_flips[i] += values.numel()
                    primary_max[i] = max(primary_max[i], values.max().item())
                    first_layer[b], first_value[b] = i, values.max()
            for b in (float_top1 != packed_top1).nonzero().flatten().tolist():
                top1_differ.append(
                    {
                        "image": count + b,
                        "float": float_top1[b].item(),
                        "packed": packed_top1[b].item(),
                        "first_flipped_layer": first_layer[b].item(),
                        "max_abs_pre_sign_there": first_value[b].item(),
                    }
                )
            count += len(images)
    finally:
        for h in hooks:
            h.remove()
    return {
        "images": count,
        "max_abs_logit_diff": max_diff,
        "top1_differ": len(top1_differ),
        "top1_differ_detail": top1_differ,
        "float_top1": 100.0 * float_correct / count,
        "packed_top1": 100.0 * packed_correct / count,
        "sign_flips_per_layer": flips,
        "primary_flips_per_layer": primary_flips,
        "primary_flip_max_abs_pre_sign_per_layer": primary_max,
        "median_abs_pre_sign_per_layer": [sorted(t)[len(t) // 2] for t in typical],
        "pre_sign_exact_zeros": exact_zeros,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--limit", type=int, help="a fixed random subset of this many images")
    parser.add_argument("--threads", type=int, help="torch and kernel threads (default: torch's)")
    parser.add_argument("--packed-out", help="also keep the packed file here")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="the runner's float layers (exact: float32 in torch; fast: bf16x3 with float32's signs "
                        "where faster on this CPU)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        packed = Path(args.packed_out) if args.packed_out else tmp / "model.packed.safetensors"
        export_packed(model, packed, class_names=model.class_names)
        runner = load_packed(packed, threads=args.threads, precision=args.precision)
        row = {
            "model": model.pretrained_cfg["architecture"],
            "checkpoint": args.checkpoint,
            "epoch": Checkpoint.read(checkpoint_path(args.checkpoint)).training.get("epoch"),
            "machine": environment(),
            "precision": args.precision,
            "checkpoint_bytes": Path(args.checkpoint).stat().st_size,
            **sizes(model, packed, tmp),
        }
        loader = build_eval_loader(model.pretrained_cfg, args.data, None, args.split, args.batch_size, None, args.limit)
        row |= compare(model, runner, loader)
        row["plan"] = [f"{r['layer']}: {r['path']}" for plan in runner._plans.values() for r in plan.report]
    if args.json:
        print(json.dumps(row, indent=2))
        return
    print("\n".join(report(row)))


def report(row: dict) -> list[str]:
    r = row
    bits, terms, bw = r["binary_weights_packed_bytes"], r["binary_per_channel_bytes"], r["binary_weights_float_bytes"]
    lines = [
        f"{r['model']} ({r['checkpoint']}, epoch {r['epoch']}); {r['machine']}; precision {r['precision']}",
        f"  plan(s): {'; '.join(dict.fromkeys(r['plan']))}",
        f"  checkpoint {r['checkpoint_bytes']:,} B, float safetensors {r['float_safetensors_bytes']:,} B, "
        f"packed {r['packed_bytes']:,} B ({r['float_safetensors_bytes'] / r['packed_bytes']:.1f}x smaller)",
        f"  binary layers: {bw:,} B float -> {bits:,} B bits ({bw / bits:.1f}x), {terms:,} B per-channel terms "
        f"({bw / (bits + terms):.1f}x with them)",
        f"  {r['images']} images: max |logit diff| {r['max_abs_logit_diff']:.3g}, top-1 differs on "
        f"{r['top1_differ']}; top-1 float {r['float_top1']:.2f} %, packed {r['packed_top1']:.2f} %",
        f"  sign flips per binary layer: {r['sign_flips_per_layer']} (primary: {r['primary_flips_per_layer']}); "
        f"exact zeros before a sign: {r['pre_sign_exact_zeros']}",
        "  max |pre-sign| of primary flips per layer: "
        + ", ".join(f"{v:.2g}" for v in r["primary_flip_max_abs_pre_sign_per_layer"])
        + "; median |pre-sign|: "
        + ", ".join(f"{v:.2g}" for v in r["median_abs_pre_sign_per_layer"]),
    ]
    for d in r["top1_differ_detail"]:
        lines.append(
            f"  image {d['image']}: float {d['float']} vs packed {d['packed']}, first flip in binary layer "
            f"{d['first_flipped_layer']} at |pre-sign| {d['max_abs_pre_sign_there']:.2g}"
        )
    return lines


if __name__ == "__main__":
    main()
