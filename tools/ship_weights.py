"""Turn a finished training run's final weights (or their EMA) into weights shipped with the package.

Writes ``src/compactnets/weights/<model>.<tag>.safetensors``: the model's state dict (fp32, no pickle) with the
run's provenance in the safetensors metadata (recipe, epochs, data, class names, the train command), then measures
it with ``compactnets eval`` (fp32, every test image) and records recipe, epochs and the measured top-1/top-5 in
``weights/manifest.json``, from which the model's config for that tag is made. The weights are the run's last
ones, never an epoch picked by its test accuracy; the figures are measured, never copied from the training log
(the log's training figures come from bf16 autocast).

    python tools/ship_weights.py training/nin_cifar10_cpu --tag cifar10jpeg_cpu60 [--ema] [--recipe nin_cifar10_cpu]

``--recipe`` names the recipe a run followed when it was started with the options themselves (its args.json has
no recipe): every value of the recipe must equal the run's, except where either leaves the choice to the run
(a recipe's "auto", a run's unset option, the model of a recipe that several rows share): those are printed.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from compactnets.engine.precision import PRECISION_IN_WORDS
from compactnets.engine.recipes import recipe_defaults
from compactnets.engine.run_folder import stretches_in_words
from compactnets.engine.train import add_train_args
from compactnets.models import Checkpoint
from compactnets.models._registry import SHIPPED_MANIFEST

DATA = "../shared/data/cifar10"


def _train_command(recipe: str, arch: str) -> str:
    """The command that trains these weights: the recipe, and the model where the recipe's own is another."""
    command = f"compactnets train --recipe {recipe} --data {DATA}"
    recipe_model = recipe_defaults(add_train_args(argparse.ArgumentParser()), recipe).get("model")
    return command + (f" --model {arch}" if recipe_model != arch else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder written by `compactnets train`")
    parser.add_argument("--tag", required=True, help="pretrained tag, e.g. cifar10jpeg_3ep")
    parser.add_argument("--ema", action="store_true", help="ship the EMA weights (a run with --model-ema)")
    parser.add_argument("--data", default=DATA, help="the test set the figures are measured on")
    parser.add_argument("--recipe", help="the recipe the run followed, where its args.json names none (checked)")
    args = parser.parse_args()

    ckpt = Checkpoint.read(args.run / "last.pth")
    state, run_args = ckpt.training, ckpt.training["args"]
    if state["epoch"] < run_args["epochs"] or state.get("step_in_epoch") or state.get("pending_eval"):
        raise SystemExit(f"{args.run} has not finished: epoch {state['epoch']} of {run_args['epochs']}")
    recipe = run_args.get("recipe") or args.recipe
    if args.recipe:
        if args.recipe != recipe:
            raise SystemExit(f"{args.run} followed recipe {recipe}, not {args.recipe}")
        values = recipe_defaults(add_train_args(argparse.ArgumentParser()), args.recipe)
        # "model" too: a recipe of several table rows (shared_bases_cifar10_cpu) trains each with --model
        open_choices = {k for k, v in values.items() if v == "auto" or run_args.get(k) is None or k == "model"}
        differ = {k: (v, run_args[k]) for k, v in values.items() if k not in open_choices and run_args[k] != v}
        print(f"{args.recipe}: resolved by the run, not compared: " + ", ".join(
            f"{k} = {run_args.get(k)} (recipe: {values[k]})" for k in sorted(open_choices)))  # fmt: skip
        if differ:
            raise SystemExit(f"{args.run} did not follow {args.recipe}: " + ", ".join(
                f"{k} = {run} (recipe: {want})" for k, (want, run) in sorted(differ.items())))  # fmt: skip
    epochs = state["epoch"]
    weights = "EMA of the final weights" if args.ema else "final weights"
    if run_args.get("bn_reestimate"):  # the file holds the statistics the run measured its weights with
        weights += f", BN statistics re-estimated on {run_args['bn_reestimate']} training images"
    provenance = {
        "tag": args.tag,
        "recipe": str(recipe),
        "epochs": str(run_args["epochs"]),
        "weights": weights,
        "data": f"{DATA} (CIFAR-10 re-encoded as JPEG quality 75)",
        "command": _train_command(recipe, ckpt.arch) if recipe else "see args.json of the run",
        # the CPU and precision the run trained on (each with its epochs where a resume changed them)
        "device": stretches_in_words(run_args, epochs, "device") or "not recorded",
        "precision": stretches_in_words(run_args, epochs, "precision", PRECISION_IN_WORDS.get) or "not recorded",
    }
    out = SHIPPED_MANIFEST.parent / f"{ckpt.arch}.{args.tag}.safetensors"
    (ckpt.ema() if args.ema else ckpt).save(out, metadata=provenance)
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB): {ckpt.arch}, {provenance['weights']} of {epochs} epochs")

    command = [sys.executable, "-m", "compactnets", "eval", "--checkpoint", str(out), "--data", args.data]
    measured = json.loads(subprocess.run([*command, "--json", "--no-progress"], check=True, capture_output=True,
                                         text=True).stdout)  # fmt: skip
    manifest = json.loads(SHIPPED_MANIFEST.read_text())
    manifest[f"{ckpt.arch}.{args.tag}"] = {
        "recipe": recipe, "epochs": run_args["epochs"], "top1": measured["top1"], "top5": measured["top5"],
    }  # fmt: skip
    SHIPPED_MANIFEST.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    print(f"{ckpt.arch}.{args.tag}: top-1 {measured['top1']:.2f} top-5 {measured['top5']:.2f} ({measured['count']} "
          f"images), recorded in {SHIPPED_MANIFEST}")  # fmt: skip


if __name__ == "__main__":
    main()
