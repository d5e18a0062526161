"""The ``compactnets`` command: train, eval, predict, profile, list, reproduce and convert."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .checkpoint import CheckpointError
from .data import DataError, ImageReadError
from .deploy import DeployError
from .deploy.binary_kernel import BinaryKernelUnavailable
from .engine.recipes import RecipeError
from .engine.reproduce import ReproduceError
from .registry import ModelArgumentError, UnknownModelError
from .safe_pickle import UnsafePickleError

# Errors that describe bad input: printed as one line, exit status 2. Anything else is a bug: traceback.
USER_ERRORS = (
    UnknownModelError, DataError, ImageReadError, CheckpointError, RecipeError, UnsafePickleError,
    ModelArgumentError, FileNotFoundError, FloatingPointError, ReproduceError, BinaryKernelUnavailable, DeployError,
)  # fmt: skip


def _train(args, parser, argv):
    from .engine.recipes import recipe_defaults
    from .engine.train import default_output, main, resume_checkpoint_path, stored_args

    # Defaults in layers: options < recipe < the resumed run's options < the command line.
    defaults = {}
    if args.resume:
        defaults = stored_args(args.resume)
        defaults.pop("resume", None)
        defaults.setdefault("fast_data", "off")  # a run from before the fast path keeps its DataLoader batches
        defaults["output"] = str(resume_checkpoint_path(args.resume).parent)
    elif args.recipe:
        defaults = recipe_defaults(parser, args.recipe)
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.phases and args.epochs != sum(p["epochs"] for p in args.phases):
        raise RecipeError(
            f"this recipe trains in phases of {' + '.join(str(p['epochs']) for p in args.phases)} epochs; "
            "--epochs cannot change it (edit the phases in a copy of the recipe)"
        )
    args.output = args.output or default_output(args.model)
    try:
        main(args)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"resume with `compactnets train --resume {args.output}`") from None


def _eval(args, parser, argv):
    import torch

    from .engine.distributed import resolve_device
    from .engine.evaluate import build_eval_loader, evaluate

    model, _ = _load_for_inference(args)
    device = resolve_device(args.device)  # a deployed file's runner sets it to the CPU
    loader = build_eval_loader(
        model.pretrained_cfg, args.data, args.dataset, args.split, args.batch_size, args.workers, args.limit
    )
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    result = evaluate(model.to(device), loader, device, channels_last=args.channels_last)
    cfg = model.pretrained_cfg
    fmt, path = _deployed_file(args)
    row = {
        "model": cfg["architecture"],
        "checkpoint": args.checkpoint,
        **({fmt: path} if fmt else {}),
        "data": args.data or "embedded",
        "split": args.split,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
        "top1_err": round(100 - result["top1"], 4),
        "top5_err": round(100 - result["top5"], 4),
        "param_count": getattr(model, "param_count", None) or sum(p.numel() for p in model.parameters()),
        "img_size": cfg["input_size"][-1],
        "crop_pct": cfg["crop_pct"],
        "interpolation": cfg["interpolation"],
        "device": str(device),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(
            f" * Acc@1 {result['top1']:.3f} ({row['top1_err']:.3f})  Acc@5 {result['top5']:.3f} "
            f"({row['top5_err']:.3f})  loss {result['loss']:.4f}  on {result['count']} images"
        )


def _predict(args, parser, argv):
    from .engine.evaluate import label_names, predict_images

    model, ckpt = _load_for_inference(args)
    results = predict_images(model, args.images, label_names(model, ckpt), args.topk)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(r["image"])
        for rank, top in enumerate(r["top"]):
            print(f"{rank}: class = {top['label']:20s} with probability = {100 * top['probability']:4.1f} %")


def _deployed_file(args) -> tuple[str | None, str | None]:
    """(format, path) of the deployed file named by ``--onnx`` and the like; (None, None) for a checkpoint."""
    from .deploy import FORMATS

    return next(((fmt, getattr(args, fmt)) for fmt in FORMATS if getattr(args, fmt, None)), (None, None))


def _load_for_inference(args):
    """The model of ``--checkpoint``, or the runner of a deployed file (CPU; its class names as the checkpoint's)."""
    from .deploy import load_deployed
    from .engine.evaluate import load_model

    fmt, path = _deployed_file(args)
    if fmt is None:
        return load_model(args.checkpoint, args.model)
    if args.model:
        raise DeployError(f"--model applies to --checkpoint; a --{fmt} file names its model")
    args.device = "cpu"  # the runners (onnxruntime, the packed kernel) run on the CPU
    runner = load_deployed(fmt, path)
    return runner, {"class_names": runner.class_names}


def _export(args, parser, argv):
    from .deploy import FORMATS
    from .engine.evaluate import label_names, load_model
    from .registry import create_model

    if args.checkpoint:
        model, ckpt = load_model(args.checkpoint, args.model)
    elif args.model:
        model, ckpt = create_model(args.model).eval(), None
        print(f"note: no --checkpoint: exporting {args.model} with random weights", file=sys.stderr)
    else:
        parser.error("name a model, or give --checkpoint")
    names = label_names(model, ckpt)
    options = dict(batch_size=args.batch_size, check=not args.no_check, class_names=names)
    if args.opset is not None:
        options["opset"] = args.opset
    result = FORMATS[args.format].function("export")(model, args.out, **options)
    check = result.get("check_error")
    details = [args.format]
    if "batch" in result:
        details.append(f"batch {result['batch']}")
    if "bytes" in result:
        details.append(f"{result['bytes']:,} bytes, {result['binary_convs']} binary convs")
    if "input_size" in result:
        details.append(f"input {'x'.join(map(str, result['input_size']))}")
    checked = "not checked" if check is None else f"checked: max |diff| = {check:.1e} x max |logit|"
    print(f"exported {model.pretrained_cfg['architecture']} -> {result['output']} ({', '.join(details)}; {checked})")


def _bench(args, parser, argv):
    from .deploy import bench
    from .registry import list_models

    names = []
    for pattern in args.models + (list(bench.DEFAULT_ANCHORS) if args.anchors else []):
        if ":" not in pattern and any(c in pattern for c in "*?["):
            matched = list_models(pattern)
            if not matched:
                raise DeployError(f"no registered model matches {pattern!r}")
            names += matched
        else:
            names.append(pattern)
    if not names:
        parser.error("name one or more models (or --anchors)")
    rows, env = bench.run_bench(
        list(dict.fromkeys(names)), args.backend, args.threads, args.warmup, args.runs, args.batch, args.batch_runs,
        args.input_size, log=lambda line: print(line, file=sys.stderr, flush=True),
    )  # fmt: skip
    outputs = {"json": bench.to_json, "csv": bench.to_csv}
    for kind, write in outputs.items():
        target = getattr(args, kind)
        if target == "-":
            print(write(rows, env))
        elif target:
            Path(target).write_text(write(rows, env))
    if args.plot:
        bench.plot(rows, env, args.plot, args.metric)
    if "-" not in (args.json, args.csv):
        print(bench.environment_line(env))
        print(bench.format_table(rows, markdown=args.markdown, metric=args.metric))


def _profile(args, parser, argv):
    from .profiler import format_layers, format_table, profile_model
    from .registry import list_models

    if args.all or args.family:
        names = list_models(family=args.family)
    elif args.models:
        names = args.models
    else:
        parser.error("name one or more models, or use --all / --family")
    profiles = [profile_model(n, args.convention) for n in names]
    if args.json:
        rows = [p.as_dict() for p in profiles]
        for row in rows:
            if not args.layers:
                row.pop("per_module_macs")
        print(json.dumps(rows, indent=2))
        return
    print(format_table(profiles))
    if args.layers:
        for p in profiles:
            print(f"\n{p.model}:\n{format_layers(p)}")


def _list(args, parser, argv):
    from .engine.recipes import list_recipes, read_recipe
    from .registry import get_model_cfg, list_models, model_family

    if args.recipes:
        rows = [{"recipe": r, "description": read_recipe(r).get("description", "")} for r in list_recipes()]
    else:
        rows = []
        for name in list_models(args.pattern, args.family):
            cfg = get_model_cfg(name)
            ref = cfg["reference"]
            rows.append(
                {
                    "model": name,
                    "family": model_family(name),
                    "dataset": cfg["dataset"],
                    "input": "x".join(map(str, cfg["input_size"][1:])),
                    "params": ref.get("params", ""),
                    "macs": ref.get("macs", ""),
                    "top1": ref.get("top1", ""),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no match")
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys).rstrip())
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys).rstrip())


def _reproduce(args, parser, argv):
    from .engine.reproduce import main

    main(args)


def _convert(args, parser, argv):
    from .convert import convert_checkpoint
    from .registry import parse_model_kwargs

    result = convert_checkpoint(args.family, args.model, args.src, args.dst, parse_model_kwargs(args.model_kwargs))
    print(f"converted {args.src} -> {result['output']} ({args.model}, {result['tensors']} tensors)")


def _batch_size(value: str) -> int | None:
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive batch size or 'dynamic', not {value!r}")
    return int(value)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from .data.datasets import KINDS
    from .deploy import FORMATS
    from .deploy.bench import BACKENDS, DEFAULT_ANCHORS
    from .engine.reproduce import add_reproduce_args
    from .engine.train import add_train_args
    from .profiler import CONVENTIONS
    from .registry import list_families

    parser = argparse.ArgumentParser(
        prog="compactnets",
        description="Efficient ConvNets: train, evaluate, predict, profile, list and convert models.",
    )
    parser.add_argument("--version", action="version", version=f"compactnets {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs = {}

    def command(name, help_text, func):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        subs[name] = p
        return p

    p = command("train", "train a model (no options: the demo on the embedded CIFAR-10 subset)", _train)
    add_train_args(p)

    def add_checkpoint_args(p):
        from .deploy import FORMATS

        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--checkpoint", help="compactnets checkpoint (train or convert output)")
        for fmt in FORMATS:
            source.add_argument(
                f"--{fmt}", metavar="FILE", help=f"a model exported with `compactnets export --format {fmt}`"
            )
        p.add_argument("--model", help="model name (default: the one the checkpoint names)")

    p = command("eval", "top-1/top-5 and loss of a checkpoint on a dataset", _eval)
    add_checkpoint_args(p)
    p.add_argument("--data", help="dataset folder (default: the embedded CIFAR-10 subset)")
    p.add_argument("--dataset", choices=KINDS, help="dataset layout (default: detected)")
    p.add_argument("--split", default="test", help="test or val (ImageFolder accepts either), or train")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int)
    p.add_argument("--limit", type=int, help="evaluate a fixed random subset of this many images")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last memory format, as training uses by default (a binary net's signs can flip on"
        " rounding-level differences in summation order; this reproduces the training log's figures)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("predict", "top-k classes with probabilities for image files", _predict)
    add_checkpoint_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true")

    p = command("export", "export a model (inference form) to a file another runtime runs, and check it", _export)
    p.add_argument("model", nargs="?", help="model name (default: the one the checkpoint names)")
    p.add_argument("--checkpoint", help="compactnets checkpoint (default: random weights)")
    p.add_argument("--format", default="onnx", choices=list(FORMATS))
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        metavar="B|dynamic",
        help="a fixed batch size, or 'dynamic' (default)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the runtime vs PyTorch check at batch 1 and 3")

    p = command(
        "bench", "CPU latency and throughput beside params and MACs, interleaved across models and backends", _bench
    )
    p.add_argument("models", nargs="*", help="registered names or patterns ('micronet_m?'), tv:NAME, timm:NAME")
    p.add_argument("--anchors", action="store_true", help=f"add {', '.join(DEFAULT_ANCHORS)}")
    p.add_argument("--backend", nargs="+", default=["eager", "onnxruntime"], choices=list(BACKENDS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20, help="warm-up rounds")
    p.add_argument("--runs", type=int, default=100, help="timed batch-1 rounds")
    p.add_argument("--batch", type=int, default=16, help="throughput batch size (1: skip)")
    p.add_argument("--batch-runs", type=int, default=10, help="timed throughput rounds")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="override every input size")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write JSON (no FILE: to stdout)")
    p.add_argument("--csv", nargs="?", const="-", metavar="FILE", help="write CSV (no FILE: to stdout)")
    p.add_argument("--plot", metavar="FILE.png", help="latency against MACs, log-log (needs matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument(
        "--metric",
        choices=["wall", "cpu"],
        default="wall",
        help="latency for the best-backend mark and the plot: wall-clock median (default) or CPU-time median"
        " (steadier on a shared machine)",
    )

    p = command("profile", "parameters, MACs, binary MACs and size beside the published figures", _profile)
    p.add_argument("models", nargs="*", help="model names")
    p.add_argument("--all", action="store_true", help="every registered model")
    p.add_argument("--family", choices=list_families(), help="every model of one family")
    p.add_argument(
        "--convention", choices=list(CONVENTIONS), help="MACs counting rule (default: the paper's, per model)"
    )
    p.add_argument("--layers", action="store_true", help="also print MACs per layer")
    p.add_argument("--json", action="store_true")

    p = command("list", "registered models (or recipes) with their published figures", _list)
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'nin*'")
    p.add_argument("--family", choices=list_families())
    p.add_argument("--recipes", action="store_true", help="list the training recipes instead")
    p.add_argument("--json", action="store_true")

    p = command("reproduce", "train the rows of a published table; table of published vs measured top-1", _reproduce)
    add_reproduce_args(p)

    p = command("convert", "convert an official checkpoint into a compactnets checkpoint", _convert)
    p.add_argument("--family", required=True, choices=list_families())
    p.add_argument("--model", required=True, help="model name of that family")
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="constructor arguments")
    p.add_argument("src", help="official checkpoint file")
    p.add_argument("dst", help="compactnets checkpoint to write")
    return parser, subs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, subs = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args, subs[args.command], argv[argv.index(args.command) + 1 :])
    except USER_ERRORS as e:
        print(f"compactnets {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{f'; {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    return 0
