"""Turn a finished training run's final weights (or their EMA) into weights shipped with the package.

Writes ``src/compactnets/weights/<model>.<tag>.safetensors``: the model's state dict (fp32, no pickle) with the
run's provenance in the safetensors metadata (recipe, epochs, data, class names, the train command). The weights
are the run's last ones, never an epoch picked by its test accuracy.
The accuracy that goes into the model's default config is then measured with ``compactnets eval``, not copied
from the training log (the log's figures come from bf16 autocast; eval runs fp32).

    python tools/ship_weights.py training/nin_cpu --tag cifar10jpeg_cpu60 [--ema]
"""

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file

from compactnets.checkpoint import extract_state_dict, load_file

OUT_DIR = Path(__file__).resolve().parents[1] / "src/compactnets/weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder written by `compactnets train`")
    parser.add_argument("--tag", required=True, help="pretrained tag, e.g. cifar10jpeg_3ep")
    parser.add_argument("--ema", action="store_true", help="ship the EMA weights (a run with --model-ema)")
    parser.add_argument("--data", default="../shared/data/cifar10 (CIFAR-10 re-encoded as JPEG quality 75)")
    args = parser.parse_args()

    ckpt = load_file(args.run / "last.pth")
    run_args = ckpt["args"]
    if ckpt["epoch"] < run_args["epochs"] or ckpt.get("step_in_epoch") or ckpt.get("pending_eval"):
        raise SystemExit(f"{args.run} has not finished: epoch {ckpt['epoch']} of {run_args['epochs']}")
    if args.ema and "state_dict_ema" not in ckpt:
        raise SystemExit(f"{args.run} was trained without --model-ema")
    weights = ckpt["state_dict_ema"] if args.ema else extract_state_dict(ckpt)
    state_dict = {k: v.contiguous() for k, v in weights.items()}
    metadata = {
        "arch": ckpt["arch"],
        "tag": args.tag,
        "recipe": str(run_args.get("recipe")),
        "epochs": str(run_args["epochs"]),
        "weights": "EMA of the final weights" if args.ema else "final weights",
        "data": args.data,
        "class_names": json.dumps(ckpt["class_names"]),
        "model_kwargs": json.dumps(ckpt.get("model_kwargs") or {}),
        "command": f"compactnets train --recipe {run_args.get('recipe')} --data ../shared/data/cifar10"
        if run_args.get("recipe")
        else "see args.json of the run",
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{ckpt['arch']}.{args.tag}.safetensors"
    save_file(state_dict, str(out), metadata=metadata)
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB): {ckpt['arch']}, {metadata['weights']} of {ckpt['epoch']} epochs")


if __name__ == "__main__":
    main()
