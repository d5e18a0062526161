"""compactnets reproduce: rows from tables and recipes, runs resumed, the results table, curves, data notes."""

import csv
import dataclasses
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SHARED_DATA, needs_shared_data
from PIL import Image

from compactnets.checkpoint import load_file
from compactnets.engine.recipes import read_recipe
from compactnets.engine.reproduce import describe_data, jpeg_quality, resolve_rows, train_command
from compactnets.engine.run_folder import views_by_epoch
from compactnets.models import TableRow, _registry, published_tables
from compactnets.models._registry import register_table

TINY_RECIPE = """
description = "a tiny NIN row"
shortens = "nin_cifar10"
[train]
model = "nin"
model_kwargs = ["channels=[16,16,16,16,16,16,16,16]"]
train_limit = 100
eval_limit = 50
epochs = 1
batch_size = 50
"""


def test_tables_name_the_published_rows():
    rows = resolve_rows(["xnor-net-cifar10"])
    assert [r.recipe for r in rows] == [
        "nin_cifar10",
        "nin_gc_cifar10",
        "nin_xnornet_cifar10",
        "nin_gc_xnornet_cifar10",
    ]
    rows = resolve_rows(["shared-bases-cifar10", "nin_xnornet_cifar10_short"])
    assert len(rows) == 7 and {r.recipe for r in rows[:6]} == {"shared_bases_cifar10"}
    assert rows[0].model == "resnet32_s8u1_cifar10" and rows[-1].name == "nin_xnornet_cifar10_short"
    assert len(published_tables()["shared-bases-cifar10"]) == 6


def test_cpu_tables_name_one_cpu_recipe_per_row():
    rows = resolve_rows(["xnor-net-cifar10-cpu", "shared-bases-cifar10-cpu"])
    assert [r.name for r in rows[:4]] == [
        "nin_cifar10_cpu",
        "nin_gc_cifar10_cpu",
        "nin_xnornet_cifar10_cpu",
        "nin_gc_xnornet_cifar10_cpu",
    ]
    assert all(r.name == r.recipe for r in rows[:4])
    assert {r.recipe for r in rows[4:]} == {"shared_bases_cifar10_cpu"} and len(rows) == 10
    assert [r.name for r in rows[4:]] == [f"{r.model}_cpu" for r in resolve_rows(["shared-bases-cifar10"])]
    for row in rows:  # each shortens the paper recipe of its row, and trains the row's model
        recipe = read_recipe(row.recipe)
        assert recipe["shortens"] == row.recipe.removesuffix("_cpu")
        assert (row.model or recipe["train"]["model"]) in row.name


def test_the_levers_ablation_rows_turn_each_lever_off(run_cli, tmp_path):
    rows = resolve_rows(["nin-xnornet-levers"])
    assert {r.recipe for r in rows} == {"nin_xnornet_cifar10_cpu"}
    cmd = train_command(rows[-1], tmp_path / "run", "data", 10)
    assert cmd == [
        "compactnets", "train", "--recipe", "nin_xnornet_cifar10_cpu", "--output", str(tmp_path / "run"),
        "--data", "data", "--teacher", "none", "--views-every-eval", "--epochs", "10", "--no-progress",
    ]  # fmt: skip
    levers = {}
    for row in rows:  # the levers as trained, then as measured: a view of the final weights drops EMA or BN
        status, out, _ = run_cli("train", "--recipe", row.recipe, *row.options, "--print-config")
        config = json.loads(out)
        weights, bn = row.view or ("ema", "re-estimated")
        levers[row.name] = (config["model_ema"] and weights == "ema", config["teacher"],
                            bool(config["bn_reestimate"]) and bn == "re-estimated")  # fmt: skip
    assert levers == {
        "nin_xnornet_all_levers": (True, "nin.cifar10jpeg_cpu60", True),
        "nin_xnornet_no_ema": (False, "nin.cifar10jpeg_cpu60", True),
        "nin_xnornet_no_bn_reestimation": (True, "nin.cifar10jpeg_cpu60", False),
        "nin_xnornet_no_distillation": (True, None, True),
        "nin_xnornet_no_levers": (False, None, False),
    }
    assert [r.run for r in rows] == [None, "nin_xnornet_all_levers", "nin_xnornet_all_levers", None,
                                     "nin_xnornet_no_distillation"]  # fmt: skip


def test_a_row_measuring_another_rows_run_trains_nothing_and_reports_its_view(run_cli, tmp_path, monkeypatch):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE + "model_ema = true\nbn_reestimate = 50\nviews_every_eval = true\n")
    monkeypatch.setattr(_registry, "_tables", {})
    with pytest.raises(RuntimeError, match="measures 'tiny': an earlier row trained alike"):
        register_table("bad", [TableRow("view", str(recipe), run="tiny", view=("raw", "running"))])
    run, view = (
        TableRow("tiny", str(recipe)),
        TableRow("tiny_no_ema", str(recipe), run="tiny", view=("raw", "re-estimated")),
    )
    with pytest.raises(RuntimeError, match="an earlier row trained alike"):
        register_table("bad", [run, dataclasses.replace(view, options=("--lr", "1"))])
    with pytest.raises(RuntimeError, match="names both, run and view"):
        register_table("bad", [run, dataclasses.replace(view, view=None)])
    register_table("tiny-levers", [run, view])
    out = tmp_path / "runs"
    assert run_cli("reproduce", "tiny-levers", "--output", out, "--table-only")[0] == 0
    assert "| tiny_no_ema | nin | 92.37 | not run (a view of row tiny) |" in (out / "results.md").read_text()
    status, stdout, _ = run_cli("reproduce", "tiny-levers", "--output", out, "--epochs", "2")
    assert status == 0 and stdout.count(": compactnets train --recipe") == 1  # the run, once
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["tiny"]
    history = views_by_epoch(out / "tiny")
    assert list(history) == [1, 2]  # measured at every evaluation, drawn beside the test curve
    views = {view: v["top1"] for view, v in history[2].items()}
    run, view = json.loads((out / "results.json").read_text())
    assert run["last_top1"] == views["ema", "re-estimated"] and run["best_epoch"] in (1, 2)
    assert view["last_top1"] == views["raw", "re-estimated"] and view["best_top1"] is None
    assert view["measures"] == {"run": "tiny", "weights": "raw", "bn": "re-estimated"}
    table = (out / "results.md").read_text()
    assert (f"EMA {views['ema', 're-estimated']:.2f} ({views['ema', 'running']:.2f}); "
            f"raw {views['raw', 're-estimated']:.2f} ({views['raw', 'running']:.2f})") in table  # fmt: skip
    assert "measured as raw weights with re-estimated BN statistics (row tiny)" in table
    assert (out / "tiny" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_one_row_of_a_table_by_its_name():
    (row,) = resolve_rows(["resnet32_s8u1_cifar10_cpu"])
    assert (row.recipe, row.model) == ("shared_bases_cifar10_cpu", "resnet32_s8u1_cifar10")
    (view,) = resolve_rows(["nin_xnornet_no_ema"])  # trains (or reads) the run it measures
    assert view.run == "nin_xnornet_all_levers" and view.view == ("raw", "re-estimated")
    assert resolve_rows(["nin_cifar10"]) == [resolve_rows(["xnor-net-cifar10"])[0]]  # a recipe and a row alike


def test_unknown_name_is_one_line(run_cli, tmp_path):
    status, _, err = run_cli("reproduce", "xnor-net-cifar", "--output", tmp_path)
    assert status == 2 and err.count("\n") == 1 and "did you mean xnor-net-cifar10" in err
    status, _, err = run_cli("reproduce", "resnet32_s8u1_cifar10_cpus", "--output", tmp_path)
    assert status == 2 and "did you mean resnet32_s8u1_cifar10_cpu" in err


def test_jpeg_quality_from_the_quantisation_tables(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for quality in (30, 75, 95):
        image.save(tmp_path / f"{quality}.jpg", quality=quality)
        assert jpeg_quality(tmp_path / f"{quality}.jpg") == quality
    image.save(tmp_path / "lossless.png")
    assert jpeg_quality(tmp_path / "lossless.png") is None


@needs_shared_data
def test_the_shared_cifar10_is_described_as_jpeg_75():
    assert describe_data(str(SHARED_DATA / "cifar10")).startswith(
        "CIFAR-10 re-encoded as JPEG quality 75 (" + str(SHARED_DATA / "cifar10")
    )


def test_rows_train_resume_and_tabulate(run_cli, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "runs"
    status, stdout, _ = run_cli("reproduce", recipe, "nin_cifar10", "--output", out, "--table-only")
    assert status == 0 and not (out / "tiny").exists()
    assert json.loads((out / "results.json").read_text())[0]["status"] == "not run"

    assert run_cli("reproduce", recipe, "--output", out)[0] == 0  # trains epoch 1 (in a child process)
    assert run_cli("reproduce", recipe, "--output", out, "--epochs", "2")[0] == 0  # resumes to epoch 2
    with open(out / "tiny" / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    assert [r["epoch"] for r in log] == ["1", "2"]
    (row,) = json.loads((out / "results.json").read_text())
    top1 = [float(r["eval_top1"]) for r in log]
    assert row["best_top1"] == max(top1) and row["best_epoch"] == 1 + top1.index(max(top1))
    assert row["last_top1"] == top1[-1] and row["epochs_run"] == 2 and row["status"] == "done"
    assert row["published_top1"] == 92.37 and row["shortens"] == "nin_cifar10" and row["paper_epochs"] == 200
    assert row["recipe_epochs"] == 1 and row["data"].startswith("embedded CIFAR-10 subset")
    assert row["command"] == f"compactnets train --recipe {recipe} --output {out / 'tiny'} --epochs 2"
    assert row["device"].startswith("cpu (") and row["data_path"] == "fast path"
    segments = json.loads((out / "tiny" / "args.json").read_text())["segments"]  # one per process, where it began
    assert [(s["epoch"], s["step"], s["device"], s["compiled"]) for s in segments] == [
        (0, 0, row["device"], False),
        (1, 0, row["device"], False),
    ]
    assert row["train_time_s"] == pytest.approx(sum(float(r["epoch_time_s"]) for r in log), abs=0.05)
    assert row["cpu_time_s"] == pytest.approx(sum(float(r["epoch_cpu_s"]) for r in log), abs=0.05)
    assert row["cpu_time_s"] > 0 and row["cpu_time_epochs"] == 2 and row["views"] == []  # no EMA, no re-estimation
    table = (out / "results.md").read_text()
    assert (
        f"| tiny | nin | 92.37 | {max(top1):.2f} ({row['best_epoch']}) | {top1[-1]:.2f} | - | "
        "2 / 2 (recipe 1; nin_cifar10: 200)" in table
    )
    assert (out / "tiny" / "curves.png").read_bytes()[:4] == b"\x89PNG"

    status, stdout, _ = run_cli("reproduce", recipe, "--output", out, "--epochs", "2")
    assert status == 0 and "2 epochs already in" in stdout
    for checkpoint in ("last.pth", "best.pth"):  # a finished run as the repository keeps it: log and options
        (out / "tiny" / checkpoint).unlink()
    status, stdout, _ = run_cli("reproduce", recipe, "--output", out, "--epochs", "2")
    assert status == 0 and "2 epochs already in" in stdout


def test_a_run_resumed_on_another_machine_names_each_with_its_epochs(run_cli, tmp_path):
    """The table's device and precision of a run trained partly on one CPU, partly on another: each with its
    epochs (the epoch split between them in both); a process that saved nothing before the next began is left
    out; a run from before segments were recorded: the device of its options."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    header = "epoch,lr,train_loss,train_top1,aux_loss,eval_loss,eval_top1,eval_top5,best_top1,epoch_time_s"
    rows = [f"{e},0.1,1.0,50.0,,1.0,{40 + e},90.0,{40 + e},10.0" for e in range(1, 6)]
    (run / "log.csv").write_text("\n".join([header, *rows]) + "\n")
    xeon, epyc = "cpu (Intel Xeon, 2 threads)", "cpu (AMD EPYC, 2 threads)"
    segments = [
        {"epoch": 0, "step": 0, "device": xeon, "precision": "bf16", "compiled": True},
        {"epoch": 2, "step": 0, "device": xeon, "precision": "bf16", "compiled": True},  # resumed on the same CPU
        {"epoch": 2, "step": 144, "device": epyc, "precision": "none", "compiled": True},
        {"epoch": 4, "step": 10, "device": epyc, "precision": "none", "compiled": True},  # stopped before saving
        {"epoch": 4, "step": 10, "device": epyc, "precision": "none", "compiled": True},
    ]
    options = {"model": "nin", "epochs": 5, "compile": True, "fast_data_resolved": "on", "segments": segments}
    (run / "args.json").write_text(json.dumps(options))
    assert run_cli("reproduce", recipe, "--output", run.parent, "--table-only")[0] == 0
    (row,) = json.loads((run.parent / "results.json").read_text())
    assert row["device"] == f"{xeon} (epochs 1-3); {epyc} (epochs 3-5)"
    assert row["precision"] == "bf16 (epochs 1-3); fp32 (epochs 3-5)" and row["compiled"] == "compiled"
    assert f"| {row['device']} | {row['precision']}, fast path, compiled |" in (run.parent / "results.md").read_text()

    del options["segments"]
    (run / "args.json").write_text(json.dumps({**options, "device_resolved": epyc, "amp_resolved": "none"}))
    assert run_cli("reproduce", recipe, "--output", run.parent, "--table-only")[0] == 0
    (row,) = json.loads((run.parent / "results.json").read_text())
    assert (row["device"], row["precision"], row["compiled"]) == (epyc, "fp32", "compiled")


def _fake_run(run, top1s: list[float], planned: int) -> None:
    """A run folder as training leaves it: a log with a test top-1 every epoch, and its options."""
    run.mkdir(parents=True)
    header = "epoch,lr,train_loss,train_top1,aux_loss,eval_loss,eval_top1,eval_top5,best_top1,epoch_time_s"
    rows = [f"{e},0.1,1.0,50.0,,1.0,{t},90.0,{max(top1s[:e])},10.0" for e, t in enumerate(top1s, 1)]
    (run / "log.csv").write_text("\n".join([header, *rows]) + "\n")
    (run / "args.json").write_text(json.dumps({"model": "nin", "epochs": planned, "fast_data_resolved": "on"}))


def test_compare_puts_each_row_beside_its_run_in_another_folder(run_cli, tmp_path, monkeypatch):
    """The evidence of a miss: a row twice as long beside the same row's shorter run, in a column of the table and
    as a second test curve in its curves; a row the other folder lacks says so; a missing folder is one line."""
    axes = pytest.importorskip("matplotlib.axes")
    recipe, other = tmp_path / "tiny.toml", tmp_path / "other.toml"
    recipe.write_text(TINY_RECIPE)
    other.write_text(TINY_RECIPE)
    longer, shorter = tmp_path / "longer", tmp_path / "runs"
    _fake_run(longer / "tiny", [40.0, 50.0, 60.0, 70.0], planned=4)
    _fake_run(longer / "other", [30.0, 35.0], planned=2)
    _fake_run(shorter / "tiny", [45.0, 55.5], planned=2)
    plotted = []
    plot = axes.Axes.plot
    monkeypatch.setattr(
        axes.Axes, "plot", lambda ax, *a, **k: plotted.append((k.get("label"), *a[:2])) or plot(ax, *a, **k)
    )

    status, _, _ = run_cli("reproduce", recipe, other, "--output", longer, "--table-only", "--compare", shorter)
    assert status == 0
    results = {r["row"]: r for r in json.loads((longer / "results.json").read_text())}
    assert results["tiny"]["compared"] == {
        "output": str(shorter / "tiny"), "last_top1": 55.5, "best_top1": 55.5, "epochs_run": 2,
    }  # fmt: skip
    assert "compared" not in results["other"]
    table = (longer / "results.md").read_text().splitlines()
    assert table[0].endswith(f"| the same row in {shorter}: last top-1 (epochs run) |")
    assert table[2].startswith("| tiny | nin |") and table[2].endswith("| 55.50 (2) |")
    assert "| 4 / 4 (recipe 1; nin_cifar10: 200) |" in table[2]  # the run's own length, then its recipe's
    assert table[3].startswith("| other | nin |") and table[3].endswith("| not run |")
    assert all(line.count("|") == table[0].count("|") for line in table)
    curves = {label: (list(x), list(y)) for label, x, y in plotted}
    assert curves["test, 4 epochs"] == ([1, 2, 3, 4], [40.0, 50.0, 60.0, 70.0])
    assert curves["test, 2 epochs (runs)"] == ([1, 2], [45.0, 55.5])
    assert "test" in curves  # the other row, with no run to compare, draws its own curve alone

    status, _, err = run_cli("reproduce", recipe, "--output", longer, "--table-only", "--compare", tmp_path / "none")
    assert status == 2 and err.strip() == f"compactnets reproduce: error: --compare {tmp_path / 'none'}: no such folder"


def test_a_stop_signal_saves_the_running_row_and_stops_the_table(tmp_path):
    """Ctrl-C (SIGINT to reproduce alone: the row trains in a session of its own, so one signal reaches it, passed
    on) lets the row save inside its epoch; reproduce writes the table, exits 130 and starts no later row."""
    recipe, later = tmp_path / "tiny.toml", tmp_path / "later.toml"
    long = TINY_RECIPE.replace("train_limit = 100", "train_limit = 2000").replace("batch_size = 50", "batch_size = 20")
    recipe.write_text(long + "checkpoint_interval = 0.001\n")  # saves after every step or so
    later.write_text(TINY_RECIPE)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "compactnets", "reproduce", str(recipe), str(later), "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "tiny" / "last.pth").exists() and time.monotonic() < deadline:  # inside its first epoch
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; saved at step" in err and "tiny saved where it stopped; the same command resumes it" in err
    assert "Traceback" not in err and not (out / "later").exists()
    assert load_file(out / "tiny" / "last.pth")["step_in_epoch"] >= 1
    assert "| tiny | nin |" in (out / "results.md").read_text()
