"""``compactnets reproduce``: train the rows of a published table and put the measured figures beside the paper's.

A NAME is a recipe (one row, the recipe's model; a name or a .toml file), a published table that a family
registers with its rows (``register_table``; today ``xnor-net-cifar10``, the four NIN rows of xnor-net.md, and
``shared-bases-cifar10``, the six ResNet32/56 rows of shared-bases.md, each also as ``...-cpu`` in the recipes of
a 2-core CPU, and ``nin-xnornet-levers``), or one row of such a table by its name. Each row trains with
``compactnets train`` in its own process into ``OUTPUT/<row>/``, resuming a run that is already there; then
``OUTPUT/results.md`` and ``results.json`` list, per row: the published top-1, the measured best-epoch top-1 (the
figure the seed repos report) and last-epoch top-1, epochs run against the recipe's (and the paper recipe's, for
a recipe that ``shortens`` one), training time, device, precision, the data, and the command;
``OUTPUT/<row>/curves.png`` plots loss and top-1 per epoch (train and test) where matplotlib is installed
(``pip install compactnets[plot]``). A run with an EMA or BN re-estimation also shows its final weights measured
each way (EMA or raw weights, re-estimated or running BN statistics: the run folder's ``views.json``; its curves
show them along the run where it measured them at every evaluation, ``--views-every-eval``); a row
that names another row's ``run`` trains nothing itself and reports one of those views (an ablation of the
levers that leave the trained weights as they are).
``--compare DIR`` puts each row beside the same row's run in another output folder (the same recipe at another
length, say): a column of its last top-1 and epochs, and its test curve drawn in the row's ``curves.png``.
``--table-only`` rebuilds the table from the run folders without training. A stop signal (Ctrl-C, SIGTERM) is
passed on to the row being trained, which saves where it is; reproduce then stops, and the same command resumes.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ..data.classes import CIFAR10_CLASSES
from ..data.datasets import EMBEDDED_FILE, detect_kind
from ..errors import ReproduceError
from ..models import Checkpoint, TableRow, get_model_cfg, published_tables
from .interrupt import STOP_SIGNALS, TrainingInterrupted
from .precision import PRECISION_IN_WORDS
from .recipes import RecipeError, list_recipes, read_recipe
from .run_folder import read_log, stretches_in_words, views_by_epoch

RESULTS = "results"
# libjpeg's luminance quantisation table (ITU T.81 Annex K), scaled by the quality setting.
_JPEG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def resolve_rows(names: list[str]) -> list[TableRow]:
    """The rows of each NAME: a published table the families registered, one row of such a table, or one recipe."""
    tables, rows = published_tables(), []
    table_rows = {row.name: row for table in tables.values() for row in table}
    for name in names:
        if name in tables:
            rows += tables[name]
        elif name in table_rows:
            rows.append(table_rows[name])
        elif name in list_recipes() or name.endswith(".toml"):
            rows.append(TableRow(Path(name).stem, name))
        else:
            close = difflib.get_close_matches(name, [*tables, *table_rows, *list_recipes()], n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RecipeError(f"unknown table or recipe {name!r}{hint} (tables: {', '.join(tables)})")
    return list(dict.fromkeys(rows))


def _recipe_epochs(recipe: dict) -> int:
    return sum(p["epochs"] for p in recipe["phases"]) if "phases" in recipe else recipe["train"]["epochs"]


def train_command(row: TableRow, out: Path, data: str | None, epochs: int | None) -> list[str]:
    """The ``compactnets train`` command of a row: resume where a run is, else start it."""
    if (out / "last.pth").is_file():
        cmd = ["compactnets", "train", "--resume", str(out)]
    else:
        cmd = ["compactnets", "train", "--recipe", row.recipe, "--output", str(out)]
        cmd += ["--model", row.model] if row.model else []
        cmd += ["--data", data] if data else []
        cmd += list(row.options)
    return cmd + (["--epochs", str(epochs)] if epochs else []) + ["--no-progress"]


def _epochs_done(out: Path) -> tuple[int, int | None]:
    """(epochs a run folder holds, the epochs it was started for): from ``last.pth``, or, for a finished run kept
    without its checkpoints (the repository keeps only what resumes an unfinished run), its log and options."""
    if (out / "last.pth").is_file():
        state = Checkpoint.read(out / "last.pth").training
        return state["epoch"], state["args"].get("epochs")
    log = read_log(out / "log.csv")
    if not log or not (out / "args.json").is_file():
        return 0, None
    return int(log[-1]["epoch"]), json.loads((out / "args.json").read_text()).get("epochs")


def run_row(row: TableRow, out: Path, data: str | None, epochs: int | None) -> int:
    """Train one row (in its own process) unless its run already has the epochs; the exit status."""
    done, started_for = _epochs_done(out)
    if done and done >= (epochs or started_for):
        print(f"{row.name}: {done} epochs already in {out}")
        return 0
    cmd = train_command(row, out, data, epochs)
    print(f"{row.name}: {shlex.join(cmd)}", flush=True)
    return _train_in_child([sys.executable, "-m", "compactnets", *cmd[1:]])


def _train_in_child(cmd: list[str]) -> int:
    """Run ``cmd`` in a session of its own and pass each stop signal reproduce receives on to it, once: a Ctrl-C
    in a terminal (which would reach both processes, the second signal stopping the run before it can save) or a
    SIGTERM lets the run save where it is and exit with 130 or 143, after which reproduce stops too."""
    child = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum: int, frame) -> None:
        child.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():  # the only thread that can set handlers
        previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def jpeg_quality(path) -> int | None:
    """The libjpeg quality setting that produced a JPEG's luminance table, or None (not JPEG, other tables)."""
    from PIL import Image

    with Image.open(path) as img:
        table = sorted(img.quantization.get(0, ())) if img.format == "JPEG" else None
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        if table == sorted(min(max((q * scale + 50) // 100, 1), 255) for q in _JPEG_LUMA):
            return quality
    return None


def describe_data(data: str | None) -> str:
    """What a run trained on, said beside its figures: which dataset, how many images, how encoded."""
    import io

    import numpy as np

    if not data:
        with np.load(EMBEDDED_FILE, allow_pickle=False) as npz:
            quality = jpeg_quality(io.BytesIO(npz["train_jpeg"][: npz["train_offsets"][1]].tobytes()))
            counts = len(npz["train_labels"]), len(npz["test_labels"])
        return f"embedded CIFAR-10 subset ({counts[0]:,} train / {counts[1]:,} test), JPEG quality {quality}"
    root = Path(data)
    if not root.is_dir() or detect_kind(root) != "imagefolder":
        return str(data)
    counts, first, classes = [], None, []
    for split in ("train", "test"):
        files = sorted(f for f in (root / split).glob("*/*") if f.is_file())
        counts.append(len(files))
        first = first or (files[0] if files else None)
        classes = classes or sorted(d.name for d in (root / split).iterdir() if d.is_dir())
    name = "CIFAR-10" if classes == sorted(CIFAR10_CLASSES) else root.name
    quality = jpeg_quality(first) if first else None
    encoding = f" re-encoded as JPEG quality {quality}" if quality else ""
    return f"{name}{encoding} ({data}: {counts[0]:,} train / {counts[1]:,} test)"


def _number(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


_COMPILED = {True: "compiled", False: "eager"}  # the training forward, as the table names it


def run_figures(row: TableRow, out: Path, log: list[dict]) -> dict:
    """What a row's run in ``out`` measured (``log``: its log.csv): best test top-1 and its epoch, last top-1, the
    epochs run and the final weights' views; for a row that measures another row's run, its view alone."""
    evaluated = [r for r in log if _number(r["eval_top1"]) is not None]
    best = max(evaluated, key=lambda r: float(r["eval_top1"]), default=None)
    epochs_run = int(log[-1]["epoch"]) if log else 0
    views = views_by_epoch(out).get(epochs_run, {})  # the final weights' (none in a run extended since)
    last_top1 = _number(log[-1]["eval_top1"]) if log else None
    if row.run:  # a view of the final weights only: no best epoch of its own
        best, last_top1 = None, views[row.view]["top1"] if row.view in views else None
    return {
        "best_top1": best and float(best["eval_top1"]),
        "best_epoch": best and int(best["epoch"]),
        "last_top1": last_top1,
        "views": list(views.values()),
        "epochs_run": epochs_run,
    }


def row_result(row: TableRow, out: Path) -> dict:
    recipe = read_recipe(row.recipe)
    model = row.model or recipe["train"]["model"]
    paper = recipe.get("shortens")
    result = {
        "row": row.name,
        "model": model,
        "recipe": row.recipe,
        "shortens": paper,
        "published_top1": get_model_cfg(model)["reference"].get("top1"),
        "recipe_epochs": _recipe_epochs(recipe),
        "paper_epochs": _recipe_epochs(read_recipe(paper)) if paper else None,
        "output": str(out),
    }
    if row.run:
        result["measures"] = {"run": row.run, "weights": row.view[0], "bn": row.view[1]}
    if not (out / "log.csv").is_file():
        return {**result, "status": "not run"}
    options = json.loads((out / "args.json").read_text())
    log = read_log(out / "log.csv")
    figures = run_figures(row, out, log)
    epochs_run = figures["epochs_run"]
    # Process CPU time (all threads), of the epochs that recorded it (logs written before it was kept have none).
    cpu = [float(r["epoch_cpu_s"]) for r in log if r.get("epoch_cpu_s")]
    command = ["compactnets", "train", "--recipe", row.recipe, "--output", str(out)]
    command += ["--model", model] if model != recipe["train"]["model"] else []
    command += ["--data", options["data"]] if options.get("data") else []
    command += list(row.options)
    command += ["--epochs", str(options["epochs"])] if options["epochs"] != result["recipe_epochs"] else []
    return {
        **result,
        "status": "done" if epochs_run >= options["epochs"] else "incomplete",
        **figures,
        "epochs_planned": options["epochs"],
        "train_time_s": round(sum(float(r["epoch_time_s"]) for r in log), 1),
        "cpu_time_s": round(sum(cpu), 1) if cpu else None,
        "cpu_time_epochs": len(cpu),
        "device": stretches_in_words(options, epochs_run, "device") or "not recorded",
        "precision": stretches_in_words(options, epochs_run, "precision", PRECISION_IN_WORDS.get)
        or PRECISION_IN_WORDS.get(options.get("amp"), options.get("amp")),
        "data_path": "fast path" if options.get("fast_data_resolved") == "on" else "DataLoader",
        "compiled": stretches_in_words(options, epochs_run, "compiled", _COMPILED.get)
        or _COMPILED[bool(options.get("compile"))],
        "data": describe_data(options.get("data")),
        "command": shlex.join(command),
    }


def _how(r: dict) -> str:
    """The precision, data path and (where it was) compilation cell."""
    return f"{r['precision']}, {r['data_path']}" + (f", {r['compiled']}" if r["compiled"] != "eager" else "")


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def _train_time(r: dict) -> str:
    """Wall time, then CPU time where the log has it (with the epochs it covers when not all of them)."""
    text = f"{r['train_time_s'] / 60:.1f} min"
    if r["cpu_time_s"] is not None:
        covered = "" if r["cpu_time_epochs"] == r["epochs_run"] else f" in {r['cpu_time_epochs']} of the epochs"
        text += f" ({r['cpu_time_s'] / 3600:.2f} CPU h{covered})"
    return text


def _views(r: dict) -> str:
    """The final weights measured each way, as ``EMA 82.10 (80.95); raw 81.70 (79.85)``: top-1 with re-estimated BN
    statistics (with the running ones), or with the running ones alone in a run that never re-estimated."""
    by = {(v["weights"], v["bn"]): v["top1"] for v in r["views"]}
    cells = []
    for weights, label in (("ema", "EMA"), ("raw", "raw")):
        if (weights, "re-estimated") in by:
            cells.append(f"{label} {by[weights, 're-estimated']:.2f} ({by[weights, 'running']:.2f})")
        elif (weights, "running") in by:
            cells.append(f"{label} {by[weights, 'running']:.2f}")
    return "; ".join(cells) or "-"


def markdown_table(results: list[dict], compared_in: Path | None = None) -> str:
    header = (
        "row", "model", "published top-1", "best top-1 (epoch)", "last top-1",
        "final weights: EMA / raw, BN re-estimated (running)", "epochs run / planned (recipe; paper)",
        "train time (CPU time)", "device", "precision, data path", "data", "command",
    )  # fmt: skip
    columns = len(header)  # a row not run leaves the run's cells empty
    header += (f"the same row in {compared_in}: last top-1 (epochs run)",) if compared_in else ()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r["row"], r["model"], _fmt(r["published_top1"])]
        if r["status"] == "not run":
            cells.append(f"not run (a view of row {r['measures']['run']})" if "measures" in r else "not run")
        else:
            epochs = f"{r['epochs_run']} / {r['epochs_planned']}"  # a run's own length (--epochs), then its recipe's
            length = [f"recipe {r['recipe_epochs']}"] if r["epochs_planned"] != r["recipe_epochs"] else []
            length += [f"{r['shortens']}: {r['paper_epochs']}"] if r["shortens"] else []
            epochs += f" ({'; '.join(length)})" if length else ""
            command = f"`{r['command']}`"
            if "measures" in r:  # a view of another row's run
                m = r["measures"]
                command += f", measured as {m['weights']} weights with {m['bn']} BN statistics (row {m['run']})"
            cells += [
                f"{_fmt(r['best_top1'])} ({_fmt(r['best_epoch'], 'd')})", _fmt(r["last_top1"]), _views(r), epochs,
                _train_time(r), r["device"], _how(r), r["data"], command,
            ]  # fmt: skip
        cells += [""] * (columns - len(cells))
        if compared_in:
            compared = r.get("compared")
            cells.append(f"{_fmt(compared['last_top1'])} ({compared['epochs_run']})" if compared else "not run")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def log_model(out: Path) -> str:
    return json.loads((out / "args.json").read_text()).get("model", "?")


def plot_curves(out: Path, published: float | None, compared: Path | None = None) -> Path | None:
    """``out/curves.png``: loss and top-1 per epoch, train and test, and the test curves of the run ``compared``
    with it where there is one (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    log = read_log(out / "log.csv")
    options = json.loads((out / "args.json").read_text())
    evaluated = (
        "ema" if options.get("model_ema") else "raw",
        "re-estimated" if options.get("bn_reestimate") else "running",
    )
    history = views_by_epoch(out)  # measured at every evaluation (--views-every-eval): drawn beside the test curve
    test = f"test, {evaluated[0]} weights, {evaluated[1]} BN" if len(history) > 1 else "test"
    curves = [("train", "train", log, "-"), ("eval", test, log, "-o")]  # split, label, log, style
    if compared is not None:
        planned = json.loads((compared / "args.json").read_text())["epochs"]
        curves[1:] = [
            ("eval", f"{test}, {options['epochs']} epochs", log, "-o"),
            ("eval", f"test, {planned} epochs ({compared.parent.name})", read_log(compared / "log.csv"), "--s"),
        ]
    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((loss_ax, "loss", "loss"), (top1_ax, "top1", "top-1 (%)")):
        for split, name, curve, style in curves:
            points = [(int(r["epoch"]), float(r[f"{split}_{key}"])) for r in curve if r[f"{split}_{key}"]]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=name, markersize=3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if len(history) > 1:
        for view in sorted({view for views in history.values() for view in views} - {evaluated}):
            points = sorted((epoch, views[view]["top1"]) for epoch, views in history.items() if view in views)
            top1_ax.plot(*zip(*points, strict=True), ":o", markersize=2, label=f"test, {view[0]} weights, {view[1]} BN")
    if published is not None:
        top1_ax.axhline(published, color="gray", linestyle="--", label=f"published {published}")
    loss_ax.legend()
    top1_ax.legend()
    fig.suptitle(f"{out.name}: {log_model(out)}")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def add_reproduce_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add = parser.add_argument
    add("names", nargs="+", metavar="NAME", help=f"recipe, table ({', '.join(published_tables())}) or a table's row")
    add("--output", default=str(Path("runs") / "reproduce"), help="folder of the runs and the table")
    add("--data", help="dataset folder (default: the embedded CIFAR-10 subset)")
    add("--epochs", type=int, help="train each row for this many epochs instead of its recipe's")
    add("--table-only", action="store_true", help="only rebuild the table and curves from the run folders")
    add("--compare", metavar="DIR", help="put each row beside the same row's run in another output folder: its last "
        "top-1 in the table, its test curve in the row's curves")  # fmt: skip
    return parser


def main(args: argparse.Namespace) -> None:
    rows = resolve_rows(args.names)
    output = Path(args.output)
    compared_in = Path(args.compare) if args.compare else None
    if compared_in and not compared_in.is_dir():
        raise ReproduceError(f"--compare {compared_in}: no such folder")
    failed, stopped = [], None
    if not args.table_only:
        runs = {}  # a run folder per row, except where a row measures another row's run
        for row in rows:
            runs.setdefault(row.run or row.name, row)
        for folder, row in runs.items():
            status = run_row(row, output / folder, args.data, args.epochs)
            if status in (128 + s for s in STOP_SIGNALS):  # stopped and saved: the rows after it wait as well
                stopped = (folder, status - 128)
                break
            if status != 0:
                failed.append(folder)
    results = [row_result(row, output / (row.run or row.name)) for row in rows]
    compared = {}  # the run folder of each row's run in --compare, where it has one
    for row, r in zip(rows, results, strict=True):
        other = compared_in / (row.run or row.name) if compared_in else None
        if other and (other / "log.csv").is_file():
            figures = run_figures(row, other, read_log(other / "log.csv"))
            r["compared"] = {"output": str(other), **{k: figures[k] for k in ("last_top1", "best_top1", "epochs_run")}}
            compared[r["output"]] = other
    plotted = {r["output"]: r["published_top1"] for r in results if r["status"] != "not run"}  # a run once
    for out, published in plotted.items():
        if plot_curves(Path(out), published, compared.get(out)) is None:
            print("training curves need matplotlib: pip install 'compactnets[plot]'")
            break
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{RESULTS}.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / f"{RESULTS}.md").write_text(markdown_table(results, compared_in))
    print(markdown_table(results, compared_in), end="")
    print(f"table: {output / RESULTS}.md and .json; curves: {output}/<row>/curves.png")
    if stopped:
        raise TrainingInterrupted(stopped[1], f"{stopped[0]} saved where it stopped; the same command resumes it")
    if failed:
        raise ReproduceError(f"training failed for {', '.join(failed)} (their output is above)")
