"""Turn a training run's best checkpoint into weights shipped with the package.

Writes ``src/compactnets/weights/<model>.<tag>.safetensors``: the model's state dict (fp32, no pickle) with the
run's provenance in the safetensors metadata (recipe, epochs, best epoch, data, class names, the train command).
The accuracy that goes into the model's default config is then measured with ``compactnets eval``, not copied
from the training log (the log's figures come from bf16 autocast; eval runs fp32).

    python tools/ship_weights.py runs/nin_xnornet-short --tag cifar10jpeg_3ep
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
    parser.add_argument("--data", default="../shared/data/cifar10 (CIFAR-10 re-encoded as JPEG quality 75)")
    args = parser.parse_args()

    ckpt = load_file(args.run / "best.pth")
    run_args = ckpt["args"]
    state_dict = {k: v.contiguous() for k, v in extract_state_dict(ckpt).items()}
    metadata = {
        "arch": ckpt["arch"],
        "tag": args.tag,
        "recipe": str(run_args.get("recipe")),
        "epochs": str(run_args["epochs"]),
        "best_epoch": str(ckpt["best_epoch"]),
        "data": args.data,
        "class_names": json.dumps(ckpt["class_names"]),
        "model_kwargs": json.dumps(ckpt.get("model_kwargs") or {}),
        "command": f"compactnets train --recipe {run_args.get('recipe')} --data ../shared/data/cifar10",
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{ckpt['arch']}.{args.tag}.safetensors"
    save_file(state_dict, str(out), metadata=metadata)
    best = f"best epoch {ckpt['best_epoch']}/{run_args['epochs']}"
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB): {ckpt['arch']} {best}")


if __name__ == "__main__":
    main()
