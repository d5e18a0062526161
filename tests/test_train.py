"""Training engine: schedules, weight-decay groups, learning on real images, exact resume, run files."""

import argparse
import contextlib
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import compactnets
from compactnets.checkpoint import load_file, save_atomic
from compactnets.engine.optim import lr_factor_fn, param_groups
from compactnets.engine.train import add_train_args
from compactnets.models import Checkpoint

NARROW = ["--model-kwargs", "channels=[96,80,48,96,96,96,96,96]"]
TINY = ["--model-kwargs", "channels=[16,16,16,16,16,16,16,16]"]


def _args(*argv):
    return add_train_args(argparse.ArgumentParser()).parse_args(list(argv))


def _read_log(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _lr_by_epoch(argv, iters=3):
    args = _args(*argv)
    factor = lr_factor_fn(args, iters)
    return [args.lr * factor(e * iters) for e in range(args.epochs)]


def test_mcts_multistep_drops_one_epoch_after_each_milestone():
    # xnor-net.md section 4: E = 200 -> drops at 0-based epochs 101 and 151; E = 150 -> 76 and 114
    base = ["--sched", "multistep", "--lr", "0.1", "--lr-milestone-fractions", "0.5", "0.75", "--lr-milestone-lag", "1"]
    lrs = _lr_by_epoch(base + ["--epochs", "200"])
    assert lrs[100] == pytest.approx(0.1) and lrs[101] == pytest.approx(0.01)
    assert lrs[150] == pytest.approx(0.01) and lrs[151] == pytest.approx(0.001)
    lrs = _lr_by_epoch(base + ["--epochs", "150"])
    assert lrs[75] == pytest.approx(0.1) and lrs[76] == pytest.approx(0.01)
    assert lrs[113] == pytest.approx(0.01) and lrs[114] == pytest.approx(0.001)
    # torch's usual semantics (lag 0): the drop lands on the milestone epoch
    lrs = _lr_by_epoch(["--sched", "multistep", "--lr", "0.1", "--lr-milestones", "150", "225", "--epochs", "300"])
    assert lrs[149] == pytest.approx(0.1) and lrs[150] == pytest.approx(0.01) and lrs[225] == pytest.approx(0.001)


def test_cosine_warmup_and_linear_per_iteration():
    args = _args("--sched", "cosine", "--epochs", "10", "--warmup-epochs", "2", "--lr", "1")
    f = lr_factor_fn(args, 100)
    assert f(0) == 0 and f(100) == pytest.approx(0.5)  # warm-up: step / warmup_steps
    assert f(200) == pytest.approx(1.0) and f(600) == pytest.approx(0.5) and f(1000) == pytest.approx(0.0)
    assert f(400) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    g = lr_factor_fn(_args("--sched", "linear", "--epochs", "4"), 250)
    assert g(0) == 1 and g(500) == pytest.approx(0.5) and g(1000) == 0


def test_weight_decay_groups():
    model = compactnets.create_model("nin")
    decay, no_decay = param_groups(model, 4e-5, "kernels")
    assert all(p.ndim == 4 for p in decay["params"]) and len(decay["params"]) == 9
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0
    (everything,) = param_groups(model, 1e-4, "all")
    assert len(everything["params"]) == len(list(model.parameters()))


@pytest.mark.slow
def test_short_run_learns_real_images(run_cli, tmp_path):
    """A narrow NIN on 2,000 real CIFAR-10 images (embedded subset) beats chance (10 %) clearly in 4 epochs."""
    out = tmp_path / "run"
    status, stdout, _ = run_cli(
        "train", *NARROW, "--train-limit", "2000", "--epochs", "4", "--lr", "0.1", "--output", out, "--no-progress"
    )
    assert status == 0
    rows = _read_log(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["eval_top1"]) > 25.0, rows[-1]
    assert "best top-1" in stdout
    args = json.loads((out / "args.json").read_text())
    assert args["model"] == "nin" and args["epochs"] == 4 and args["model_kwargs"] == NARROW[1:]

    # the checkpoint evaluates to the logged number and predicts real images
    status, stdout, _ = run_cli("eval", "--checkpoint", out / "last.pth", "--json")
    assert json.loads(stdout)["top1"] == pytest.approx(float(rows[-1]["eval_top1"]))


@contextlib.contextmanager
def _ctrl_c_after_epoch_1(monkeypatch):
    """Ctrl-C right after epoch 1 and its evaluation are safely on disk."""
    save = Checkpoint.save

    def save_then_stop(checkpoint, path):
        save(checkpoint, path)
        state = checkpoint.training
        if state["epoch"] == 1 and path.name == "last.pth" and state["metrics"]["eval_top1"] is not None:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_stop)
    yield
    monkeypatch.setattr(Checkpoint, "save", save)


@pytest.mark.parametrize("fast_data", ["on", "off"])
def test_resume_is_exact(run_cli, tmp_path, monkeypatch, fast_data):
    """A run stopped after epoch 1 and resumed == the same run uninterrupted (losses, weights, schedule), on
    the in-memory fast path and the DataLoader path."""
    common = [*TINY, "--train-limit", "300", "--eval-limit", "100", "--batch-size", "50", "--deterministic",
              "--epochs", "2", "--no-progress", "--fast-data", fast_data]  # fmt: skip
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli("train", *common, "--output", straight)[0] == 0

    with _ctrl_c_after_epoch_1(monkeypatch):
        status, _, err = run_cli("train", *common, "--output", stopped)
    assert status == 130 and "resume with" in err
    assert len(_read_log(stopped)) == 1
    status, stdout, _ = run_cli("train", "--resume", stopped)
    assert status == 0 and "resuming" in stdout and "after epoch 1/2" in stdout

    a, b = _read_log(straight), _read_log(stopped)
    keys = ("epoch", "lr", "train_loss", "train_top1", "eval_loss", "eval_top1", "best_top1")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    ca, cb = load_file(straight / "last.pth"), load_file(stopped / "last.pth")
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    assert ca["epoch"] == cb["epoch"] == 2 and ca["best_top1"] == cb["best_top1"]
    assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"] == 12
    assert ca["optimizer"]["state"][0]["momentum_buffer"].equal(cb["optimizer"]["state"][0]["momentum_buffer"])


def test_run_folder_contents(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", *TINY, "--train-limit", "100", "--eval-limit", "50", "--epochs", "1",
                   "--output", out, "--no-progress")[0] == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "best.pth", "last.pth", "log.csv"]
    ckpt = load_file(out / "last.pth")  # weights_only=True
    assert {"state_dict", "optimizer", "scheduler", "rng", "epoch", "best_top1", "args", "class_names"} <= set(ckpt)
    assert ckpt["class_names"][0] == "airplane" and ckpt["pretrained_cfg"]["architecture"] == "nin"


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pth"
    save_atomic({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_file(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary left behind


def test_diverging_loss_stops_with_advice(run_cli, tmp_path):
    status, _, err = run_cli("train", *TINY, "--train-limit", "100", "--batch-size", "10", "--lr", "1e12",
                             "--epochs", "1", "--output", tmp_path, "--no-progress", "--eval-every", "0")  # fmt: skip
    assert status == 2 and "lower --lr or set --clip-grad" in err


@pytest.mark.slow
def test_torchrun_data_parallel_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "compactnets", "train", *TINY, "--train-limit", "200", "--eval-limit", "101", "--epochs", "1",
           "--output", str(out), "--no-progress"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("epoch 1/1") == 1  # rank 0 prints
    ckpt = load_file(out / "last.pth")
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert ckpt["metrics"]["eval_top1"] is not None


PHASED = """
description = "three phases"
[train]
sched = "constant"
[[phases]]
epochs = 1
lr = 0.1
[[phases]]
epochs = 1
lr = 0.01
restart_from_best = true
[[phases]]
epochs = 1
lr = 0.001
momentum = 0.5
restart_from_best = true
"""


def test_phases_restart_from_best_and_resume_across_a_boundary(run_cli, tmp_path, monkeypatch):
    recipe = tmp_path / "phased.toml"
    recipe.write_text(PHASED)
    common = [
        "--recipe",
        recipe,
        *TINY,
        "--train-limit",
        "200",
        "--eval-limit",
        "100",
        "--deterministic",
        "--no-progress",
    ]
    restored = []
    load = Checkpoint.load_exact
    monkeypatch.setattr(Checkpoint, "load_exact", lambda c, model: (restored.append(c.source), load(c, model)))

    straight = tmp_path / "straight"
    status, stdout, _ = run_cli("train", *common, "--output", straight)
    assert status == 0 and stdout.count("restarting from best.pth") == 2
    assert restored == [f"checkpoint {straight}/best.pth"] * 2
    rows = _read_log(straight)
    assert [float(r["lr"]) for r in rows] == [0.1, 0.01, 0.001]
    ckpt = load_file(straight / "last.pth")
    assert ckpt["phase"] == 2 and ckpt["optimizer"]["param_groups"][0]["momentum"] == 0.5

    # stop at the end of phase 1, resume: phase 2 starts as in the straight run
    stopped = tmp_path / "stopped"
    with _ctrl_c_after_epoch_1(monkeypatch):
        assert run_cli("train", *common, "--output", stopped)[0] == 130
    assert run_cli("train", "--resume", stopped)[0] == 0
    keys = ("epoch", "lr", "train_loss", "eval_loss", "eval_top1")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in _read_log(stopped)]

    status, _, err = run_cli("train", *common, "--epochs", "5", "--output", tmp_path / "x")
    assert status == 2 and "trains in phases of 1 + 1 + 1 epochs" in err


def test_auxiliary_loss_hook_is_weighted_and_logged(run_cli, tmp_path, monkeypatch):
    """A model's auxiliary_loss() joins the loss with --aux-loss-weight; its plain value is logged."""
    from compactnets.models.nin import NIN

    def auxiliary_loss(self):  # pull every conv weight towards zero: a visible effect on the weights
        return sum(m.weight.pow(2).sum() for m in self.modules() if isinstance(m, torch.nn.Conv2d))

    monkeypatch.setattr(NIN, "auxiliary_loss", auxiliary_loss, raising=False)
    common = [*TINY, "--train-limit", "100", "--epochs", "1", "--eval-every", "0", "--no-progress", "--deterministic"]
    norms = {}
    for weight in ("0", "5"):
        out = tmp_path / weight
        assert run_cli("train", *common, "--aux-loss-weight", weight, "--output", out)[0] == 0
        row = _read_log(out)[0]
        assert float(row["aux_loss"]) > 0
        sd = load_file(out / "last.pth")["state_dict"]
        norms[weight] = sum(v.pow(2).sum().item() for k, v in sd.items() if k.endswith("conv.weight"))
    assert norms["5"] < 0.5 * norms["0"]


def test_deterministic_kernels_warn_where_torch_has_none_instead_of_stopping_the_run():
    """--deterministic turns torch's deterministic kernels on, and one that torch lacks (on a GPU: the backward of
    adaptive average pooling, which every classifier head here uses) is named in a warning, not an error that would
    stop a paper recipe (they set deterministic) at its first step."""
    from compactnets.engine.train import seed_everything

    seed_everything(0, True)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize(
    "amp",
    ["bf16", pytest.param("fp16", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="refused on CPUs"))],
)
def test_mixed_precision_and_clipping_train(run_cli, tmp_path, amp):
    out = tmp_path / amp
    status, _, err = run_cli("train", *TINY, "--train-limit", "100", "--eval-limit", "50", "--epochs", "1",
                             "--amp", amp, "--clip-grad", "1.0", "--output", out, "--no-progress")  # fmt: skip
    assert status == 0, err
    ckpt = load_file(out / "last.pth")
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["state_dict"].values())  # fp32 master weights
    assert (ckpt["scaler"] is not None) == (amp == "fp16")  # a GradScaler only for fp16, saved for --resume
    assert math.isfinite(float(_read_log(out)[0]["train_loss"]))


def test_compiled_forward_gives_the_eager_loss_and_gradients():
    """What --compile trains with: the loss and the gradients of a training step (batch norms in train mode,
    channels-last) equal the eager ones. In float64, where the fused kernels' other summation order cannot hide a
    difference in the maths (in float32 the first layers' gradients differ by up to 0.6 % of the largest)."""
    torch.manual_seed(0)
    model = compactnets.create_model("nin", num_classes=10, channels=[16] * 8).double().train()
    model.to(memory_format=torch.channels_last)
    images = torch.randn(20, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (20,))
    steps = {}
    for name, forward in (("eager", model), ("compiled", torch.compile(model, dynamic=False))):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(images), targets)
        loss.backward()
        steps[name] = loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}
    (eager_loss, eager), (compiled_loss, compiled) = steps["eager"], steps["compiled"]
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-12)
    scale = max(g.abs().max().item() for g in eager.values())
    for key, grad in eager.items():
        assert (compiled[key] - grad).abs().max().item() <= 1e-10 * scale, key


def test_compile_trains_records_itself_and_resumes(run_cli, tmp_path):
    """train --compile: an epoch with a smaller last batch (a graph of its own), args.json records it, a resumed
    run keeps it."""
    out = tmp_path / "run"
    status, stdout, err = run_cli("train", *TINY, "--train-limit", "120", "--batch-size", "50", "--eval-limit", "50",
                                  "--epochs", "1", "--compile", "--output", out, "--no-progress")  # fmt: skip
    assert status == 0 and "forward compiled" in stdout, err
    assert json.loads((out / "args.json").read_text())["compile"] is True
    assert math.isfinite(float(_read_log(out)[0]["train_loss"]))
    status, stdout, err = run_cli("train", "--resume", out, "--epochs", "2")
    assert status == 0 and "forward compiled" in stdout and len(_read_log(out)) == 2, err


def test_compile_without_a_cpp_compiler_is_one_line(run_cli, tmp_path, monkeypatch):
    from torch._inductor import config

    monkeypatch.setattr(config.cpp, "cxx", ("no-such-c++-compiler",))
    status, _, err = run_cli("train", *TINY, "--train-limit", "100", "--epochs", "1", "--compile", "--output",
                             tmp_path / "run", "--no-progress")  # fmt: skip
    assert status == 2 and "--compile on the CPU needs the C++ compiler" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_steps_fix_the_run_length_and_the_schedule(run_cli, tmp_path):
    """--steps 5 at 2 iterations per epoch: 3 epochs, the last cut after one iteration; lr linear over 5 steps."""
    out = tmp_path / "run"
    status, stdout, _ = run_cli("train", *TINY, "--train-limit", "100", "--batch-size", "50", "--steps", "5",
                                "--sched", "linear", "--lr", "0.1", "--eval-every", "0", "--output", out,
                                "--no-progress")  # fmt: skip
    assert status == 0 and "3 epochs x 2 iterations" in stdout
    assert [float(r["lr"]) for r in _read_log(out)] == pytest.approx([0.1, 0.06, 0.02])  # 1 - step / 5
    ckpt = load_file(out / "last.pth")
    assert ckpt["scheduler"]["last_epoch"] == 5 and ckpt["epoch"] == 3 and ckpt["args"]["epochs"] == 3
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0)  # the schedule ended with the run

    status, _, err = run_cli("train", "--steps", "0", "--output", tmp_path / "zero")
    assert status == 2 and "--steps must be a positive integer, not 0" in err
    recipe = tmp_path / "phased.toml"
    recipe.write_text(PHASED)
    status, _, err = run_cli("train", "--recipe", recipe, "--steps", "10", "--output", tmp_path / "phased")
    assert status == 2 and "--steps cannot be combined with [[phases]]" in err
