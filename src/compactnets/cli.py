"""The ``compactnets`` command: train, eval, predict, profile, list, reproduce and convert.

Start-up stays fast: this module imports no torch; a command's options (and the modules they need) are built
only when that command runs, so ``compactnets --help`` and ``--version`` import nothing heavy and ``list``
never imports torchvision.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from . import __version__
from .engine.recipes import RecipeError
from .errors import (
    BinaryKernelUnavailable,
    CheckpointError,
    DataError,
    DeployError,
    ImageReadError,
    ModelArgumentError,
    OptionError,
    ReproduceError,
    UnknownModelError,
)
from .safe_pickle import UnsafePickleError

# Errors that describe bad input: printed as one line, exit status 2. Anything else is a bug: traceback.
USER_ERRORS = (
    UnknownModelError, DataError, ImageReadError, CheckpointError, RecipeError, UnsafePickleError,
    ModelArgumentError, OptionError, FileNotFoundError, FloatingPointError, ReproduceError, BinaryKernelUnavailable,
    DeployError,
)  # fmt: skip


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _at_least(args, minimum: int, *options: str) -> None:
    for option in options:
        value = getattr(args, option.replace("-", "_"))
        if value is not None and value < minimum:
            raise OptionError(f"--{option} must be at least {minimum}, not {value}")


# --- train ------------------------------------------------------------------------------------------------


def _train(args, parser, argv):
    from .engine.interrupt import TrainingInterrupted
    from .engine.recipes import recipe_defaults
    from .engine.run_folder import resume_checkpoint_path
    from .engine.train import default_output, main, stored_args

    # Defaults in layers: options < recipe < the resumed run's options < the command line.
    defaults = {}
    if args.resume:
        defaults = stored_args(args.resume)
        for one_off in ("resume", "overwrite", "print_config"):  # said for one invocation, not for the run
            defaults.pop(one_off, None)
        defaults.setdefault("fast_data", "off")  # a run from before the fast path keeps its DataLoader batches
        defaults.setdefault("teacher_runtime", "torch")  # and one from before the OpenVINO teacher its torch teacher
        defaults.setdefault("bn_augment", "none")  # and one from before --bn-augment its un-augmented statistics
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
    if args.print_config:
        options = {k: v for k, v in sorted(vars(args).items()) if k not in ("func", "print_config")}
        print(json.dumps(options, indent=2, default=str))
        return
    try:
        main(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (TrainingInterrupted)
        where = f"{e}; " if isinstance(e, TrainingInterrupted) else ""
        signum = getattr(e, "signum", signal.SIGINT)
        raise TrainingInterrupted(signum, f"{where}resume with `compactnets train --resume {args.output}`") from None


# --- eval and predict -------------------------------------------------------------------------------------


def _eval(args, parser, argv):
    import torch

    from .engine.distributed import resolve_device
    from .engine.evaluate import build_bn_loader, build_eval_loader, checkpoint_path, evaluate
    from .engine.progress import Progress

    _at_least(args, 1, "batch-size", "limit", "log-interval", "bn-reestimate")
    _at_least(args, 0, "workers")
    fmt, path = _deployed_file(args)
    if args.bn_reestimate and fmt:
        raise OptionError(f"--bn-reestimate changes a PyTorch model's statistics; a --{fmt} file has them folded in")
    # a missing GPU is reported before any data is read; the deployed runtimes run on the CPU
    device = resolve_device("cpu" if fmt else args.device)
    model = _load_for_inference(args)
    loader = build_eval_loader(
        model.pretrained_cfg, args.data, args.dataset, args.split, args.batch_size, args.workers, args.limit,
        classes=getattr(model, "class_names", None), match=args.match_classes, note=_note,
    )  # fmt: skip
    channels_last = args.channels_last and not fmt  # the runners take NCHW batches
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if args.bn_reestimate:
        from .data import default_augment
        from .engine.batchnorm import reestimate_bn

        cfg = model.pretrained_cfg
        augment = default_augment(cfg) if args.bn_augment == "train" else None
        train_split = build_bn_loader(
            cfg, args.data, args.dataset, args.batch_size, args.workers, args.bn_reestimate, args.bn_seed, augment,
            classes=getattr(model, "class_names", None), match=args.match_classes,
        )  # fmt: skip
        how = f"{augment} augmentation" if augment else "un-augmented"
        _note(f"batch-norm statistics re-estimated on {len(train_split.dataset)} training images ({how}, seed "
              f"{args.bn_seed})")  # fmt: skip
        reestimate_bn(model, train_split, device, channels_last=channels_last)
    progress = Progress(not args.no_progress, "eval", args.log_interval)
    result = evaluate(model, loader, device, channels_last=channels_last, progress=progress, tta=args.tta)
    cfg = model.pretrained_cfg
    row = {
        "model": cfg["architecture"],
        "checkpoint": str(checkpoint_path(args.checkpoint)) if args.checkpoint else None,
        **({"pretrained": args.model} if args.pretrained else {}),
        **({fmt: path} if fmt else {}),
        **({"runtime": model.runtime, "precision": model.precision} if fmt == "onnx" else {}),
        "data": args.data or "embedded",
        "split": args.split,
        "tta": args.tta,
        "bn_reestimate": args.bn_reestimate,
        **({"bn_seed": args.bn_seed, "bn_augment": args.bn_augment} if args.bn_reestimate else {}),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
        "top1_err": round(100 - result["top1"], 4),
        "top5_err": round(100 - result["top5"], 4),
        "param_count": getattr(model, "param_count", None) or sum(p.numel() for p in model.parameters()),
        "img_size": cfg["input_size"][-1],
        "crop_pct": cfg["crop_pct"],
        "interpolation": cfg["interpolation"],
        "channels_last": channels_last,
        "device": str(device),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        ran = f" ({model.runtime}, {model.precision})" if fmt == "onnx" else ""
        print(
            f" * Acc@1 {result['top1']:.3f} ({row['top1_err']:.3f})  Acc@5 {result['top5']:.3f} "
            f"({row['top5_err']:.3f})  loss {result['loss']:.4f}  on {result['count']} images{ran}"
            + (" with flip TTA" if args.tta == "flip" else "")
        )


def _deployed_file(args) -> tuple[str | None, str | None]:
    """(format, path) of the deployed file named by ``--onnx`` and the like; (None, None) for a checkpoint."""
    from .deploy import FORMATS

    return next(((fmt, getattr(args, fmt)) for fmt in FORMATS if getattr(args, fmt, None)), (None, None))


def _load_for_inference(args):
    """The model of ``--checkpoint``, or the runner of a deployed file (CPU; its class names as the checkpoint's)."""
    from .deploy import load_deployed
    from .engine.evaluate import load_model

    fmt, path = _deployed_file(args)
    if args.runtime and fmt != "onnx":
        raise OptionError("--runtime applies to --onnx files")
    if args.ema and not args.checkpoint:
        raise OptionError("--ema applies to --checkpoint")
    if args.pretrained:
        return _load_shipped(args)
    if fmt is None:
        return load_model(args.checkpoint, args.model, ema=args.ema)
    if args.model:
        raise DeployError(f"--model applies to --checkpoint; a --{fmt} file names its model")
    args.device = "cpu"  # the runners (onnxruntime, the packed kernel) run on the CPU
    runner = load_deployed(fmt, path, **({"runtime": args.runtime} if args.runtime else {}))
    return runner


def _image_paths(args) -> list[str]:
    """The positional images (files, or folders of images), then the lines of --image-list."""
    from pathlib import Path

    from torchvision.datasets.folder import IMG_EXTENSIONS

    paths = []
    for item in args.images:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.suffix.lower() in IMG_EXTENSIONS and not any(part.startswith(".") for part in p.parts[1:])
            )
            if not found:
                raise DataError(f"no image file in the folder {path}")
            paths += found
        else:
            paths.append(item)
    if args.image_list:
        try:
            with open(args.image_list) as f:
                paths += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the image list {args.image_list}: {e}") from e
    if not paths:
        raise OptionError("name image files or folders, or pass --image-list")
    return paths


def _printable(text: str) -> str:
    return text if text.isprintable() else ascii(text)[1:-1]


def _predict(args, parser, argv):
    import csv

    from .engine.distributed import resolve_device
    from .engine.evaluate import label_names, predict_images

    _at_least(args, 1, "topk", "batch-size")
    if args.json and args.csv:
        raise OptionError("--json and --csv cannot be combined")
    device = resolve_device("cpu" if _deployed_file(args)[0] else args.device)
    paths = _image_paths(args)
    model = _load_for_inference(args)
    if _deployed_file(args)[0] == "onnx":
        _note(f"running {args.onnx} in {model.runtime} ({model.precision})")
    skipped = []

    def skip(error):
        skipped.append(str(error))
        _note(f"skipped: {error}")

    results = predict_images(
        model.to(device), paths, label_names(model), args.topk, args.batch_size, device, on_error=skip
    )
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["image", "rank", "label", "index", "probability"])
        for r in results:
            for rank, top in enumerate(r["top"]):
                writer.writerow([r["image"], rank, top["label"], top["index"], f"{top['probability']:.6f}"])
    elif args.json:  # a JSON array written as results arrive: memory stays bounded by the batch
        print("[", end="")
        for i, r in enumerate(results):
            print(("," if i else "") + "\n" + json.dumps(r), end="")
        print("\n]")
    else:
        for r in results:
            print(_printable(r["image"]))
            for rank, top in enumerate(r["top"]):
                label = _printable(top["label"])
                print(f"{rank}: class = {label:20s} with probability = {100 * top['probability']:4.1f} %")
    if skipped and len(skipped) == len(paths):
        raise ImageReadError(f"none of the {len(paths)} images could be read")


# --- profile, list, convert -------------------------------------------------------------------------------


def _published_number(text):
    from .profiler import Figure

    return None if text in (None, "") else Figure.parse(text).value


def _profile(args, parser, argv):
    from .models import list_models
    from .profiler import format_layers, format_table, profile_model

    if args.models and (args.all or args.family):
        raise OptionError("name models, or use --all or --family, not both")
    if args.all and args.family:
        raise OptionError("--all and --family cannot be combined")
    if args.all or args.family:
        names = list_models(family=args.family)
    elif args.models:
        names = args.models
    else:
        raise OptionError("name one or more models, or use --all / --family")
    profiles = [profile_model(n, args.convention) for n in names]
    if args.json:
        rows = [p.as_dict() for p in profiles]
        for row in rows:
            if not args.layers:
                row.pop("per_module_macs")
            for key in ("published_params", "published_macs"):  # numbers; the printed text beside them
                row[f"{key}_text"] = row[key]
                row[key] = _published_number(row[key])
        print(json.dumps(rows, indent=2))
        return
    print(format_table(profiles))
    if args.layers:
        for p in profiles:
            print(f"\n{p.model}:\n{format_layers(p)}")


def _list(args, parser, argv):
    import fnmatch

    from .engine.recipes import list_recipes, read_recipe
    from .models import get_model_cfg, list_models, model_family

    if args.recipes and args.pretrained:
        raise OptionError("--recipes and --pretrained list different things; choose one")
    if args.recipes:
        if args.family:
            raise OptionError("--family selects models; it cannot be combined with --recipes")
        rows = [
            {"recipe": r, "description": read_recipe(r).get("description", "")}
            for r in list_recipes()
            if fnmatch.fnmatch(r, args.pattern)
        ]
        text_rows = rows
    elif args.pretrained:
        rows = []
        for name in list_models(args.pattern, args.family, pretrained=True):
            cfg = get_model_cfg(name)
            trained = cfg["training"]
            rows.append(
                {
                    "model": name,
                    "recipe": trained.get("recipe"),
                    "epochs": trained.get("epochs"),
                    "top1": trained.get("top1"),
                    "top5": trained.get("top5"),
                    "published_top1": cfg["reference"].get("top1"),
                    "data": trained.get("data"),
                }
            )
        text_rows = [{k: "-" if v is None else v for k, v in row.items()} for row in rows]
    else:
        rows, text_rows = [], []
        for name in list_models(args.pattern, args.family):
            cfg = get_model_cfg(name)
            ref = cfg["reference"]
            row = {
                "model": name,
                "family": model_family(name),
                "dataset": cfg["dataset"],
                "input": "x".join(map(str, cfg["input_size"][1:])),
                "params": ref.get("params"),
                "macs": ref.get("macs"),
                "macs_convention": ref.get("macs_convention") if ref.get("macs") else None,
                "top1": ref.get("top1"),
            }
            text_rows.append({k: "-" if v is None else v for k, v in row.items()})
            rows.append(row | {"params": _published_number(row["params"]), "macs": _published_number(row["macs"])})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no match")
        return
    keys = list(text_rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in text_rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys).rstrip())
    for r in text_rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys).rstrip())
    if args.pretrained:
        print(
            "\ntop1, top5: measured by `compactnets eval --model NAME --pretrained --data ../shared/data/cifar10` "
            "(fp32, channels-last); published_top1: the paper's full schedule"
        )
    elif not args.recipes:
        print(
            "\nparams, macs, top1: the published figures (top-1 in %). macs_convention: the counting rule that "
            "reproduces each published MACs figure (`compactnets profile MODEL` measures it)."
        )


def _reproduce(args, parser, argv):
    from .engine.reproduce import main

    main(args)


def _convert(args, parser, argv):
    from .convert import convert_checkpoint
    from .models import model_family, parse_model_kwargs

    family = args.family or model_family(args.model)
    kwargs = parse_model_kwargs(args.model_kwargs, args.model)
    result = convert_checkpoint(family, args.model, args.src, args.dst, kwargs)
    print(f"converted {args.src} -> {result['output']} ({args.model}, {result['tensors']} tensors)")


def _load_shipped(args):
    from .engine.evaluate import load_shipped

    if not args.model:
        raise OptionError("--pretrained needs --model NAME (or NAME.TAG): `compactnets list --pretrained` shows them")
    return load_shipped(args.model)


def _export(args, parser, argv):
    from .deploy import FORMATS
    from .engine.evaluate import label_names, load_model
    from .models import create_model

    if args.checkpoint:
        model = load_model(args.checkpoint, args.model)
    elif args.pretrained:
        model = _load_shipped(args)
    elif args.model:
        model = create_model(args.model).eval()
        print(f"note: no --checkpoint: exporting {args.model} with random weights", file=sys.stderr)
    else:
        parser.error("name a model, or give --checkpoint")
    names = label_names(model)
    options = dict(batch_size=args.batch_size, check=not args.no_check, class_names=names)
    if args.opset is not None:
        options["opset"] = args.opset
    result = FORMATS[args.format].function("export")(model, args.out, **options)
    check = result.get("check_error")
    details = [args.format]
    if "batch" in result:
        details.append(f"batch {result['batch'] or 'dynamic'}")
    if "bytes" in result:
        details.append(f"{result['bytes']:,} bytes, {result['binary_convs']} binary convs")
    if "input_size" in result:
        details.append(f"input {'x'.join(map(str, result['input_size']))}")
    checked = "not checked" if check is None else f"checked: max |diff| = {check:.1e} x max |logit|"
    print(f"exported {model.pretrained_cfg['architecture']} -> {result['output']} ({', '.join(details)}; {checked})")


def _bench(args, parser, argv):
    from pathlib import Path

    from .deploy import bench, bench_models, bench_report
    from .models import list_models

    names = []
    for pattern in args.models + (list(bench_models.DEFAULT_ANCHORS) if args.anchors else []):
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
    outputs = {"json": bench_report.to_json, "csv": bench_report.to_csv}
    for kind, write in outputs.items():
        target = getattr(args, kind)
        if target == "-":
            print(write(rows, env))
        elif target:
            Path(target).write_text(write(rows, env))
    if args.plot:
        bench_report.plot(rows, env, args.plot, args.metric)
    if "-" not in (args.json, args.csv):
        print(bench_report.environment_line(env))
        print(bench_report.format_table(rows, markdown=args.markdown, metric=args.metric))


def _batch_size(value: str) -> int | None:
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive batch size or 'dynamic', not {value!r}")
    return int(value)


# --- the parser -------------------------------------------------------------------------------------------


def _train_args(p):
    from .engine.train import add_train_args

    add_train_args(p)


def _checkpoint_args(p):
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="compactnets checkpoint, or a run folder (its best.pth)")
    from .deploy import FORMATS

    source.add_argument("--pretrained", action="store_true", help="the weights shipped for --model (NAME or NAME.TAG)")
    for fmt in FORMATS:
        source.add_argument(
            f"--{fmt}", metavar="FILE", help=f"a model exported with `compactnets export --format {fmt}`"
        )
    from .deploy.onnx import RUNTIMES

    p.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        help="what runs an --onnx file (default: onnxruntime); openvino computes in its default precision for the"
        " CPU (bf16 on a CPU with AMX), openvino_f32 in float32",
    )
    p.add_argument("--model", help="model name (default: the one the checkpoint names)")
    p.add_argument("--ema", action="store_true", help="the checkpoint's EMA weights (a run trained with --model-ema)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def _eval_args(p):
    from .data.datasets import KINDS
    from .engine.batchnorm import BN_AUGMENT_CHOICES

    _checkpoint_args(p)
    p.add_argument("--data", help="dataset folder (default: the embedded CIFAR-10 subset)")
    p.add_argument("--dataset", choices=KINDS, help="dataset layout (default: detected)")
    p.add_argument("--split", default="test", help="test or val (ImageFolder accepts either), or train")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int)
    p.add_argument("--limit", type=int, help="evaluate a fixed random subset of this many images")
    p.add_argument(
        "--match-classes",
        choices=("name", "index"),
        default="name",
        help="name: map the data's classes to the checkpoint's class names (a subset is fine, an unknown class"
        " is an error); index: take the data's label numbers as they are",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels-last memory format, as training uses by default (a binary net's signs can flip on"
        " rounding-level differences of summation order: the same format gives the training log's figures)",
    )
    p.add_argument(
        "--tta", choices=("none", "flip"), default="none",
        help="test-time augmentation: flip averages the logits of each image and its mirror image (reported apart"
        " from single-view figures)",
    )  # fmt: skip
    p.add_argument(
        "--bn-reestimate", type=int, metavar="N",
        help="first recompute the batch-norm statistics on N images of the training split of --data",
    )  # fmt: skip
    p.add_argument(
        "--bn-seed", type=int, default=0, metavar="S",
        help="which random N images --bn-reestimate takes, and their crops and flips (train --bn-reestimate takes "
        "those of the run's --seed; another S shows how much the figure depends on the sample)",
    )  # fmt: skip
    p.add_argument(
        "--bn-augment", choices=BN_AUGMENT_CHOICES, default="train",
        help="the images --bn-reestimate sees: train: with the training augmentation (crop and flip; the draw differs "
        "from a fast-path run's own), none: as evaluation does (the same statistics as train --bn-augment none)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--log-interval", type=int, default=20, help="batches between progress lines off a terminal")


def _predict_args(p):
    _checkpoint_args(p)
    p.add_argument("images", nargs="*", help="image files or folders of images")
    p.add_argument("--image-list", help="a text file with one image path per line")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (bounds the memory)")
    p.add_argument("--json", action="store_true", help="a JSON array, one object per image")
    p.add_argument("--csv", action="store_true", help="CSV rows: image, rank, label, index, probability")


def _profile_args(p):
    from .models import list_families
    from .profiler import CONVENTIONS  # with every family's own, once the profiler has imported the models

    p.add_argument("models", nargs="*", help="model names")
    p.add_argument("--all", action="store_true", help="every registered model")
    p.add_argument("--family", choices=list_families(), help="every model of one family")
    p.add_argument(
        "--convention", choices=list(CONVENTIONS), help="MACs counting rule (default: the paper's, per model)"
    )
    p.add_argument("--layers", action="store_true", help="also print MACs per layer")
    p.add_argument("--json", action="store_true")


def _list_args(p):
    from .models import list_families

    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'nin*' (models or recipes)")
    p.add_argument("--family", choices=list_families())
    p.add_argument("--recipes", action="store_true", help="list the training recipes instead")
    p.add_argument("--pretrained", action="store_true", help="list the shipped weights (NAME.TAG) and their figures")
    p.add_argument("--json", action="store_true", help="numbers as numbers, null where no figure is published")


def _export_args(p):
    from .deploy import FORMATS

    p.add_argument("model", nargs="?", help="model name (default: the one the checkpoint names)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="compactnets checkpoint (default: random weights)")
    source.add_argument("--pretrained", action="store_true", help="the weights shipped for MODEL (NAME or NAME.TAG)")
    p.add_argument("--format", default="onnx", choices=list(FORMATS))
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument(
        "--batch-size", type=_batch_size, default=None, metavar="B|dynamic", help="a fixed batch size, or 'dynamic'"
    )
    p.add_argument("--no-check", action="store_true", help="skip the runtime vs PyTorch check at batch 1 and 3")


def _bench_args(p):
    from .deploy.bench import BACKENDS
    from .deploy.bench_models import DEFAULT_ANCHORS

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
        help="latency for the best-backend mark and the plot: wall-clock median or CPU-time median"
        " (steadier on a shared machine)",
    )


def _reproduce_args(p):
    from .engine.reproduce import add_reproduce_args

    add_reproduce_args(p)


def _convert_args(p):
    from .models import list_families

    p.add_argument("--family", choices=list_families(), help="default: the family of --model")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="constructor arguments")
    p.add_argument("src", help="official checkpoint file")
    p.add_argument("dst", help="compactnets checkpoint to write")


# name: (one-line help, handler, options builder)
COMMANDS = {
    "train": ("train a model (no options: the demo on the embedded CIFAR-10 subset)", _train, _train_args),
    "eval": ("top-1/top-5 and loss of a checkpoint on a dataset", _eval, _eval_args),
    "predict": ("top-k classes with probabilities for image files", _predict, _predict_args),
    "profile": ("parameters, MACs, binary MACs and size beside the published figures", _profile, _profile_args),
    "list": ("registered models (or recipes) with their published figures", _list, _list_args),
    "export": ("export a model (inference form) to a file another runtime runs, and check it", _export, _export_args),
    "bench": (
        "CPU latency and throughput beside params and MACs, interleaved across models and backends",
        _bench,
        _bench_args,
    ),
    "reproduce": (
        "train the rows of a published table; table of published vs measured top-1",
        _reproduce,
        _reproduce_args,
    ),
    "convert": ("convert an official checkpoint into a compactnets checkpoint", _convert, _convert_args),
}


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append each option's default to its help (argparse's formatter would skip options without help)."""
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default in (None, False, [], argparse.SUPPRESS):
            continue
        if "%(default)" not in (action.help or ""):
            action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser with every command, and the options of ``command`` only ('': none; None: every command's)."""
    parser = argparse.ArgumentParser(
        prog="compactnets",
        description="Efficient ConvNets: train, eval, predict, profile, list, export, bench, reproduce, convert.",
    )
    parser.add_argument("--version", action="version", version=f"compactnets {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs = {}
    for name, (help_text, func, add_options) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if command in (None, name):
            add_options(p)
            _show_defaults(p)
        subs[name] = p
    return parser, subs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser, subs = build_parser(command if command in COMMANDS else "")
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
        return getattr(e, "exit_status", 130)  # 128 + the signal number, as a shell reports it
    return 0
