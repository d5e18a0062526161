"""Short-schedule levers of `compactnets train` and `eval` (issue 16): batch-norm re-estimation, model EMA,
distillation, flip TTA, the linear-to-zero schedule and lr scaling, bf16 by default, mid-epoch checkpoints,
SIGTERM, and resuming a run stopped during its evaluation."""

import argparse
import csv
import importlib.util
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compactnets
import compactnets.engine.train as engine
from compactnets.checkpoint import load_file, save_atomic
from compactnets.engine.batchnorm import reestimate_bn
from compactnets.engine.distill import OpenVinoTeacher, distillation_loss, load_teacher
from compactnets.engine.evaluate import build_eval_loader, evaluate
from compactnets.engine.optim import lr_factor_fn
from compactnets.engine.run_folder import VIEWS_FILE, views_by_epoch
from compactnets.engine.train import EpochClock, add_train_args
from compactnets.models import Checkpoint, get_model_cfg

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
TINY = ["--model-kwargs", "channels=[16,16,16,16,16,16,16,16]"]
SMALL_RUN = [*TINY, "--train-limit", "300", "--eval-limit", "100", "--batch-size", "50", "--no-progress"]


def _read_log(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _as_if_from_before(run, option: str) -> None:
    """Make ``run`` look like a run started before ``option`` existed: its checkpoint's options lack it."""
    ckpt = load_file(run / "last.pth")
    del ckpt["args"][option]
    save_atomic(ckpt, run / "last.pth")


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- batch-norm re-estimation -----------------------------------------------------------------------------


def test_reestimate_bn_gives_the_exact_statistics_of_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model[1].running_mean.fill_(5.0)  # stale statistics, as a binary net's lag behind its weights
    batches = [(torch.randn(8, 3, 6, 6) * 2 + 1, None) for _ in range(3)]
    model.train()
    assert reestimate_bn(model, batches, torch.device("cpu")) == 24
    features = torch.cat([model[0](x) for x, _ in batches])  # what the batch norm saw, every batch equal in size
    assert torch.allclose(model[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([model[0](x).var(dim=(0, 2, 3), unbiased=True) for x, _ in batches])
    assert torch.allclose(model[1].running_var, per_batch_var.mean(0), atol=1e-5)  # cumulative average per batch
    assert model.training and model[1].momentum == 0.1  # modes and momentum restored
    assert reestimate_bn(nn.Linear(2, 2), batches, torch.device("cpu")) == 0  # nothing to re-estimate


@pytest.mark.parametrize("fast_data", ["on", "off"])
def test_bn_images_are_one_fixed_draw_of_the_training_augmentation(fast_data):
    """--bn-augment train: the run's N images cropped and flipped as training does, the same draw before every
    evaluation; none: the images as evaluation sees them. The same N images either way."""
    from compactnets.engine.distributed import DistInfo
    from compactnets.engine.loaders import build_training_data

    def bn_batches(augment):
        args = add_train_args(argparse.ArgumentParser()).parse_args(
            ["--bn-reestimate", "60", "--batch-size", "25", "--fast-data", fast_data, "--bn-augment", augment]
        )
        data = build_training_data(args, get_model_cfg("nin"), "embedded", "cifar", DistInfo(), torch.device("cpu"),
                                   print)  # fmt: skip
        return data.bn_batches

    def images(batches):
        pairs = [(x, y) for xs, ys in batches for x, y in zip(xs, ys, strict=True)]
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])

    augmented, plain = bn_batches("train"), bn_batches("none")
    (first, labels), (again, _), (clean, clean_labels) = images(augmented), images(augmented), images(plain)
    assert len(first) == len(clean) == 60 and torch.equal(first, again)  # one fixed draw
    assert sorted(labels.tolist()) == sorted(clean_labels.tolist())  # the same sample (the order may differ)
    assert not torch.equal(first.sort(0).values, clean.sort(0).values)  # not the clean images in another order
    # each is a 32 x 32 crop of one of the clean images of its class, or of its mirror image, padded by 4 black pixels
    cfg = get_model_cfg("nin")
    black = (-torch.tensor(cfg["mean"]) / torch.tensor(cfg["std"]))[:, None, None]
    for image, label in zip(first, labels, strict=True):
        crops = []
        for candidate in clean[clean_labels == label]:
            for view in (candidate, candidate.flip(-1)):
                padded = black.expand(3, 40, 40).clone()
                padded[:, 4:36, 4:36] = view
                crops += [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert min((crop - image).abs().max().item() for crop in crops) < 1e-5


def test_a_run_from_before_bn_augment_resumes_with_un_augmented_statistics(run_cli, tmp_path):
    out = tmp_path / "run"
    status, stdout, err = run_cli("train", *SMALL_RUN, "--epochs", "1", "--bn-reestimate", "50", "--output", out)
    assert status == 0 and "re-estimated on 50 training images (augmented as in training)" in stdout, err
    assert json.loads((out / "args.json").read_text())["bn_augment"] == "train"
    _as_if_from_before(out, "bn_augment")
    status, stdout, err = run_cli("train", "--resume", out, "--epochs", "2")
    assert status == 0 and "re-estimated on 50 training images (un-augmented)" in stdout, err
    assert json.loads((out / "args.json").read_text())["bn_augment"] == "none"


# --- distillation ---------------------------------------------------------------------------------------------


def test_distillation_loss_is_the_tempered_kl_divergence():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 10), torch.randn(5, 10)
    for t in (1.0, 4.0):
        p = (teacher / t).softmax(1)
        reference = (p * (p.log() - (student / t).log_softmax(1))).sum(1).mean() * t * t
        assert distillation_loss(student, teacher, t).item() == pytest.approx(reference.item(), rel=1e-5)
    assert distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_trains_from_a_teacher_checkpoint_and_refuses_a_mismatched_one(run_cli, tmp_path):
    teacher = tmp_path / "teacher"
    assert run_cli("train", *SMALL_RUN, "--epochs", "1", "--output", teacher)[0] == 0
    out = {}
    for weight in ("0", "1"):
        out[weight] = tmp_path / f"student{weight}"
        status, stdout, err = run_cli("train", *SMALL_RUN, "--epochs", "1", "--teacher", teacher,
                                      "--distill-weight", weight, "--distill-temperature", "2",
                                      "--output", out[weight], "--deterministic")  # fmt: skip
        assert status == 0, err
        assert f"distilling from {teacher} (weight {weight}, T 2, teacher on " in stdout
    # weight 0: the labels alone, the very run without a teacher; weight 1: a different loss, other weights
    plain = tmp_path / "plain"
    assert run_cli("train", *SMALL_RUN, "--epochs", "1", "--output", plain, "--deterministic")[0] == 0
    sd = {k: load_file(v / "last.pth")["state_dict"] for k, v in {**out, "plain": plain}.items()}
    assert _same_weights(sd["0"], sd["plain"]) and not _same_weights(sd["1"], sd["plain"])

    status, _, err = run_cli("train", *SMALL_RUN, "--teacher", "micronet_m0", "--output", tmp_path / "x")
    assert status == 2 and err.count("\n") == 1 and "--teacher micronet_m0: compactnets bundles no weights" in err
    imagenet = compactnets.create_model("micronet_m0")
    other = tmp_path / "micronet.pth"
    save_atomic({"arch": "micronet_m0", "state_dict": imagenet.state_dict()}, other)
    status, _, err = run_cli("train", *SMALL_RUN, "--teacher", other, "--output", tmp_path / "x")
    assert status == 2 and "expects input_size (3, 224, 224), the student (3, 32, 32)" in err, err
    status, _, err = run_cli("train", *SMALL_RUN, "--teacher", "no_such_thing", "--output", tmp_path / "y")
    assert status == 2 and "neither a checkpoint file nor a model with shipped weights" in err
    status, _, err = run_cli("train", *SMALL_RUN, "--distill-weight", "1.5", "--output", tmp_path / "z")
    assert status == 2 and "--distill-weight must be in [0, 1], not 1.5" in err


def test_the_teacher_runs_with_its_batch_norms_folded():
    student = compactnets.create_model("nin_xnornet")
    teacher, line = load_teacher("nin", student, torch.device("cpu"), channels_last=True)
    assert line == "teacher on torch"
    reference = compactnets.create_model("nin", pretrained=True).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in reference.modules()) == 9
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(teacher(x.contiguous(memory_format=torch.channels_last)), reference(x),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip


@needs_openvino
def test_the_openvino_teacher_gives_the_torch_teachers_logits():
    """In f32 to the float rounding, in bf16 (the run's precision under bf16 autocast) to bf16's, with the same
    predictions on 64 real CIFAR-10 test images; one compiled model per batch shape."""
    student = compactnets.create_model("nin_xnornet")
    reference = compactnets.create_model("nin", pretrained=True).eval()
    images, _ = next(iter(build_eval_loader(get_model_cfg("nin"), None, "embedded", "test", 64, 0, 64)))
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = reference(images)
    for amp, precision, rtol in (("none", "f32", 1e-4), ("bf16", "bf16", 3e-2)):
        teacher, line = load_teacher("nin", student, torch.device("cpu"), True, "openvino", amp)
        assert isinstance(teacher, OpenVinoTeacher) and line == f"teacher on OpenVINO in {precision}"
        logits = teacher(images)
        assert logits.dtype == torch.float32 and logits.shape == expected.shape
        worst = ((logits - expected).abs().max() / expected.abs().max()).item()
        assert worst <= rtol, (amp, worst)
        assert (logits.argmax(1) == expected.argmax(1)).float().mean() >= 0.98
        torch.testing.assert_close(teacher(images[:3]), logits[:3])  # a smaller last batch: its own model
        assert sorted(shape[0] for shape in teacher.compiled.requests) == [3, len(images)]
    auto, line = load_teacher("nin", student, torch.device("cpu"), True, "auto", "bf16")
    assert isinstance(auto, OpenVinoTeacher) and line == "teacher on OpenVINO in bf16"


def test_without_openvino_auto_falls_back_to_torch_and_openvino_is_refused(run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    student = compactnets.create_model("nin_xnornet")
    teacher, line = load_teacher("nin", student, torch.device("cpu"), True, "auto", "bf16")
    assert not isinstance(teacher, OpenVinoTeacher)
    assert line == "teacher on torch (auto: OpenVINO is not installed (pip install 'compactnets[onnx]'))"
    status, _, err = run_cli("train", *SMALL_RUN, "--teacher", "nin", "--teacher-runtime", "openvino",
                             "--output", tmp_path / "x")  # fmt: skip
    assert status == 2 and err.count("\n") == 1, err
    assert "--teacher-runtime openvino: OpenVINO is not installed" in err


@needs_openvino
def test_a_teacher_openvino_cannot_take_stays_in_torch_with_the_reason_on_one_line(run_cli, tmp_path, monkeypatch):
    import openvino

    def convert_model(*args, **kwargs):  # OpenVINO's own messages run over several lines
        raise RuntimeError("Exception from src/frontends/pytorch/src/frontend.cpp:123:\n\nunsupported op: aten::odd\n")

    monkeypatch.setattr(openvino, "convert_model", convert_model)
    student = compactnets.create_model("nin_xnornet")
    teacher, line = load_teacher("nin", student, torch.device("cpu"), True, "auto", "bf16")
    assert not isinstance(teacher, OpenVinoTeacher) and line == "teacher on torch (auto: unsupported op: aten::odd)"
    status, _, err = run_cli("train", *SMALL_RUN, "--teacher", "nin", "--teacher-runtime", "openvino",
                             "--output", tmp_path / "x")  # fmt: skip
    assert status == 2 and err == "compactnets train: error: --teacher-runtime openvino: unsupported op: aten::odd\n"


@needs_openvino
def test_a_distilled_run_from_before_the_openvino_teacher_resumes_with_torch(run_cli, tmp_path):
    """A run whose options lack --teacher-runtime was distilled by torch: resumed, it stays so (an exact
    resume); a newer run keeps the runtime it recorded."""
    out = tmp_path / "run"
    status, stdout, err = run_cli("train", *SMALL_RUN, "--epochs", "1", "--teacher", "nin", "--output", out)
    assert status == 0 and "teacher on OpenVINO in" in stdout, err
    assert json.loads((out / "args.json").read_text())["teacher_runtime"] == "auto"
    status, stdout, err = run_cli("train", "--resume", out, "--epochs", "2")
    assert status == 0 and "teacher on OpenVINO in" in stdout, err
    _as_if_from_before(out, "teacher_runtime")
    status, stdout, err = run_cli("train", "--resume", out, "--epochs", "3")
    assert status == 0 and "T 1, teacher on torch)" in stdout, err
    assert json.loads((out / "args.json").read_text())["teacher_runtime_resolved"] == "teacher on torch"


# --- EMA ------------------------------------------------------------------------------------------------------


def test_model_ema_is_evaluated_saved_and_loaded_by_eval(run_cli, tmp_path):
    out = tmp_path / "ema"
    status, stdout, err = run_cli("train", *SMALL_RUN, "--epochs", "2", "--model-ema", "--model-ema-decay", "0.9",
                                  "--output", out)  # fmt: skip
    assert status == 0, err
    assert "EMA decay 0.9 (evaluated and saved)" in stdout
    ckpt = load_file(out / "last.pth")
    assert not _same_weights(ckpt["state_dict"], ckpt["state_dict_ema"])
    logged = float(_read_log(out)[-1]["eval_top1"])
    status, stdout, _ = run_cli("eval", "--checkpoint", out / "last.pth", "--ema", "--limit", "100", "--json")
    assert status == 0 and json.loads(stdout)["top1"] == pytest.approx(logged)  # the log measures the EMA
    status, _, err = run_cli("eval", "--pretrained", "--model", "nin", "--ema")
    assert status == 2 and "--ema applies to --checkpoint" in err
    plain = tmp_path / "plain"
    assert run_cli("train", *SMALL_RUN, "--epochs", "1", "--output", plain)[0] == 0
    status, _, err = run_cli("eval", "--checkpoint", plain, "--ema")
    assert status == 2 and "holds no EMA weights" in err


def test_ema_and_bn_reestimation_leave_the_training_as_it_was(run_cli, tmp_path):
    """The weights measured each way (views.json) are exactly the runs trained without those levers, at every
    evaluation: the EMA is a shadow copy, and re-estimation and evaluation work on copies with the RNG streams
    restored. The files hold the re-estimated statistics (they give the logged figure), and a resumed run goes on
    from the running ones: stopped after epoch 2 of 3, it ends as the straight run."""
    common = [*SMALL_RUN, "--deterministic", "--sched", "constant"]
    ema, bn = ["--model-ema", "--model-ema-decay", "0.9"], ["--bn-reestimate", "100"]
    runs = {"all": [*ema, *bn, "--views-every-eval"], "no_ema": bn, "no_bn": ema, "none": []}
    for name, levers in runs.items():
        assert run_cli("train", *common, "--epochs", "3", *levers, "--output", tmp_path / name)[0] == 0
    resumed = tmp_path / "resumed"
    assert run_cli("train", *common, "--epochs", "2", *ema, *bn, "--output", resumed)[0] == 0
    assert run_cli("train", "--resume", resumed, "--epochs", "3")[0] == 0

    logs = {name: _read_log(tmp_path / name) for name in runs}
    views = views_by_epoch(tmp_path / "all")
    assert list(views) == [1, 2, 3]
    for epoch, measured in views.items():
        by = {view: (v["top1"], v["loss"]) for view, v in measured.items()}
        logged = {name: (float(log[epoch - 1]["eval_top1"]), float(log[epoch - 1]["eval_loss"]))
                  for name, log in logs.items()}  # fmt: skip
        assert by.keys() == {("ema", "re-estimated"), ("ema", "running"), ("raw", "re-estimated"), ("raw", "running")}
        assert by["ema", "re-estimated"] == logged["all"]  # the evaluation itself
        assert by["raw", "re-estimated"] == logged["no_ema"]
        assert by["ema", "running"] == logged["no_bn"]
        assert by["raw", "running"] == logged["none"]
        assert len({loss for _, loss in by.values()}) == 4  # four different measurements
    assert not (tmp_path / "none" / VIEWS_FILE).exists()
    assert list(views_by_epoch(resumed)) == [2, 3]  # each time the last epoch; after the resume, the new last
    assert views_by_epoch(resumed)[3] == views[3]

    ckpt = {name: load_file(tmp_path / name / "last.pth") for name in [*runs, "resumed"]}
    no_ema = {**ckpt["no_ema"]["state_dict"], **ckpt["no_ema"]["running_buffers"]}  # re-estimated in the file
    assert all(_same_weights(ckpt[name]["state_dict"], no_ema) for name in ("all", "no_bn", "none", "resumed"))
    assert not _same_weights(ckpt["no_ema"]["state_dict"], no_ema)
    assert _same_weights(ckpt["all"]["state_dict_ema"], ckpt["resumed"]["state_dict_ema"])
    assert _same_weights({**ckpt["all"]["state_dict_ema"], **ckpt["all"]["running_buffers"]},
                         ckpt["no_bn"]["state_dict_ema"])  # fmt: skip
    status, stdout, _ = run_cli("eval", "--checkpoint", tmp_path / "all" / "last.pth", "--ema", "--limit", "100",
                                "--json")  # fmt: skip
    assert status == 0 and json.loads(stdout)["top1"] == float(logs["all"][-1]["eval_top1"])

    # DataLoader iterators draw their seeds from torch's global RNG, which a model's dropout also draws from: the
    # evaluations leave it as they found it
    for name, levers in (("loader_all", runs["all"]), ("loader_none", [])):
        run_cli("train", *common, "--epochs", "1", "--fast-data", "off", *levers, "--output", tmp_path / name)
    states = [load_file(tmp_path / name / "last.pth")["rng"]["torch"] for name in ("loader_all", "loader_none")]
    assert torch.equal(*states)


# --- schedule, lr scaling, precision ------------------------------------------------------------------------


def _args(*argv):
    return add_train_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_linear_schedule_decays_to_zero_after_the_warm_up():
    f = lr_factor_fn(_args("--sched", "linear", "--epochs", "10", "--warmup-epochs", "2"), 100)
    assert f(0) == 0 and f(100) == pytest.approx(0.5) and f(200) == pytest.approx(1.0)  # warm-up
    assert f(600) == pytest.approx(0.5) and f(999) == pytest.approx(1 / 800) and f(1000) == 0  # down to zero


def test_lr_scales_with_the_batch_and_bf16_is_the_default_where_fast(run_cli, tmp_path):
    out = tmp_path / "run"
    status, stdout, _ = run_cli("train", *SMALL_RUN, "--epochs", "1", "--lr", "0.1", "--lr-base-batch", "200",
                                "--sched", "constant", "--output", out)  # fmt: skip
    assert status == 0 and "lr 0.1 x 0.25 = 0.025 (batch 50)" in stdout
    assert float(_read_log(out)[0]["lr"]) == pytest.approx(0.025)
    args = json.loads((out / "args.json").read_text())
    assert args["amp"] == "auto" and args["lr"] == 0.1  # the option as given; resuming scales it once again
    fast = {"amx_bf16", "avx512_bf16"} & compactnets.engine.precision.cpu_flags()
    assert args["amp_resolved"] == ("bf16" if fast else "none")
    # the reason printed either way (a CPU without bf16 "has neither amx_bf16 nor avx512_bf16")
    assert "(auto: the CPU has " in stdout and ("the CPU has neither" in stdout) != bool(fast)
    assert "as requested" not in stdout


# --- TTA ------------------------------------------------------------------------------------------------------


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))  # sees left from right
    images, targets = torch.randn(6, 3, 32, 32), torch.arange(6)
    single = evaluate(model, [(images, targets)], torch.device("cpu"))
    flipped = evaluate(model, [(images, targets)], torch.device("cpu"), tta="flip")
    with torch.no_grad():
        logits = (model(images) + model(images.flip(3))) / 2
    assert flipped["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    assert abs(flipped["loss"] - single["loss"]) > 1e-3


def test_eval_reports_tta_and_bn_reestimation_apart(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", *SMALL_RUN, "--epochs", "1", "--output", out)[0] == 0
    status, stdout, _ = run_cli("eval", "--checkpoint", out, "--limit", "100", "--json")
    plain = json.loads(stdout)
    status, stdout, _ = run_cli("eval", "--checkpoint", out, "--limit", "100", "--tta", "flip", "--json")
    tta = json.loads(stdout)
    assert plain["tta"] == "none" and tta["tta"] == "flip"  # the averaging itself: the test above
    status, stdout, err = run_cli("eval", "--checkpoint", out, "--limit", "100", "--bn-reestimate", "200")
    assert status == 0 and "Acc@1" in stdout
    assert "re-estimated on 200 training images (cifar augmentation, seed 0)" in err


def test_eval_bn_seed_picks_the_sample_and_the_runs_seed_gives_its_statistics(run_cli, tmp_path):
    """The checkpoint of an evaluated epoch holds the statistics the run re-estimated on --bn-reestimate images
    drawn with its --seed; eval with that seed (and batch size) recomputes them, another seed other ones."""
    out = tmp_path / "run"
    common = ["--bn-reestimate", "100", "--bn-augment", "none", "--batch-size", "50", "--json"]
    run = [*TINY, "--steps", "5", "--eval-limit", "100", "--no-progress", "--seed", "3"]  # every training image
    assert run_cli("train", *run, *common[:-1], "--output", out)[0] == 0
    rows = {}
    for seed in (None, 3, 4):
        bn = ["--bn-seed", str(seed), *common] if seed is not None else ["--json"]
        status, stdout, err = run_cli("eval", "--checkpoint", out, "--data", "embedded", "--limit", "100", *bn)
        assert status == 0, err
        rows[seed] = json.loads(stdout)
    assert rows[3]["bn_seed"] == 3 and "bn_seed" not in rows[None]
    assert rows[3]["loss"] == pytest.approx(rows[None]["loss"], abs=1e-5)  # the run's own statistics
    assert abs(rows[4]["loss"] - rows[None]["loss"]) > 1e-4  # another sample, other statistics
    # with the training augmentation (eval's default) the same images give other statistics, and say so
    augmented = [arg for arg in common if arg not in ("--bn-augment", "none")]
    status, stdout, err = run_cli("eval", "--checkpoint", out, "--data", "embedded", "--limit", "100", "--bn-seed",
                                  "3", *augmented)  # fmt: skip
    row = json.loads(stdout)
    assert status == 0 and row["bn_augment"] == "train" and rows[3]["bn_augment"] == "none"
    assert abs(row["loss"] - rows[3]["loss"]) > 1e-4 and "cifar augmentation" in err


# --- stopping and resuming --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast_data", ["on", "off"])
def test_sigterm_inside_an_epoch_saves_and_the_resumed_run_equals_the_straight_one(
    run_cli, tmp_path, monkeypatch, fast_data
):
    """SIGTERM arriving at step 3 of epoch 2 (of 6 steps): the step ends, a checkpoint is written, exit 143; the
    resumed run then equals the run that was never stopped, on the fast path and the DataLoader path."""
    common = [*SMALL_RUN, "--epochs", "2", "--deterministic", "--fast-data", fast_data]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli("train", *common, "--output", straight)[0] == 0

    asked = []
    due = engine.StepCheckpoints.due

    def signal_at_step_9(self):  # the 9th step of the run: step 3 of epoch 2
        asked.append(1)
        if len(asked) == 9:  # the handler as the OS would call it (a real kill: the subprocess test below)
            self.signals._handle(signal.SIGTERM, None)
        return due(self)

    monkeypatch.setattr(engine.StepCheckpoints, "due", signal_at_step_9)
    status, _, err = run_cli("train", *common, "--output", stopped)
    monkeypatch.setattr(engine.StepCheckpoints, "due", due)
    assert status == 143, err
    assert "saved at step 3/6 of epoch 2" in err and f"resume with `compactnets train --resume {stopped}`" in err
    ckpt = load_file(stopped / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 3 and ckpt["scheduler"]["last_epoch"] == 9

    status, stdout, _ = run_cli("train", "--resume", stopped)
    assert status == 0 and "at step 3/6 of epoch 2" in stdout
    a, b = _read_log(straight), _read_log(stopped)
    assert 0 < ckpt["elapsed_cpu_s"] <= float(b[1]["epoch_cpu_s"])  # the epoch's CPU time spans the stop
    keys = ("epoch", "lr", "train_loss", "train_top1", "eval_loss", "eval_top1", "best_top1")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    weights = [load_file(run / "last.pth")["state_dict"] for run in (straight, stopped)]
    assert _same_weights(*weights)


def test_the_epoch_clock_counts_cpu_time_not_waiting():
    clock = EpochClock()
    busy = time.process_time()
    while time.process_time() - busy < 0.1:
        pass
    time.sleep(1.0)  # a paused or waiting run: wall time only (idle OpenMP threads may spin a little)
    assert clock.wall() >= 1.1 and 0.1 <= clock.cpu() < 0.6
    resumed = EpochClock(100.0, 40.0)  # resumed inside an epoch: the saved times carry on
    assert resumed.wall() >= 100 and 40 <= resumed.cpu() < 41
    assert EpochClock(100.0, None).cpu() is None  # a checkpoint from before CPU time was kept


def test_periodic_checkpoints_inside_an_epoch(run_cli, tmp_path, monkeypatch):
    saved = []
    save = Checkpoint.save

    def record(checkpoint, path):
        saved.append(checkpoint.training.get("step_in_epoch"))
        save(checkpoint, path)

    monkeypatch.setattr(Checkpoint, "save", record)
    out = tmp_path / "run"
    # every step is due after 1e-9 minutes; then the epoch's own checkpoints (before and after its evaluation)
    assert run_cli("train", *SMALL_RUN, "--epochs", "1", "--checkpoint-interval", "1e-9", "--output", out)[0] == 0
    assert saved == [1, 2, 3, 4, 5, 6, None, None, None]  # 6 steps; last.pth pending, best.pth, last.pth
    assert "step_in_epoch" not in load_file(out / "last.pth")
    status, _, err = run_cli("train", *SMALL_RUN, "--checkpoint-interval", "-1", "--output", tmp_path / "x")
    assert status == 2 and "--checkpoint-interval must be a finite number >= 0, not -1.0" in err


def test_a_run_stopped_during_its_evaluation_evaluates_that_epoch_on_resume(run_cli, tmp_path, monkeypatch):
    common = [*SMALL_RUN, "--epochs", "2", "--deterministic", "--model-ema", "--bn-reestimate", "100"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli("train", *common, "--output", straight)[0] == 0

    calls = []
    real = engine.evaluate

    def interrupted_first_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", interrupted_first_time)
    status, _, err = run_cli("train", *common, "--output", stopped)
    assert status == 130 and "resume with" in err
    assert not (stopped / "log.csv").exists()
    assert load_file(stopped / "last.pth")["pending_eval"] is True
    status, stdout, _ = run_cli("train", "--resume", stopped)
    assert status == 0 and "epoch 1/2" in stdout  # the pending epoch's line, evaluated now
    a, b = _read_log(straight), _read_log(stopped)
    keys = ("epoch", "lr", "train_loss", "train_top1", "eval_loss", "eval_top1", "best_top1")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    ca, cb = load_file(straight / "best.pth"), load_file(stopped / "best.pth")
    assert ca["best_epoch"] == cb["best_epoch"] and _same_weights(ca["state_dict_ema"], cb["state_dict_ema"])


@pytest.mark.parametrize(
    "teacher", [[], pytest.param(["--teacher", "nin", "--teacher-runtime", "openvino"], marks=needs_openvino)],
    ids=["", "openvino-teacher"],
)  # fmt: skip
def test_sigterm_from_outside_stops_a_real_process_cleanly(tmp_path, teacher):
    """Also with a teacher compiled by OpenVINO, whose CPU plugin gives the compiling thread an alternate signal
    stack of its own (see tests/conftest.py)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "compactnets", "train", *TINY, "--train-limit", "2000", "--eval-limit", "100",
           "--batch-size", "20", "--epochs", "1", "--log-interval", "1", "--output", str(out), *teacher]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the first training step's progress line
        line = proc.stderr.readline()
        if "epoch 1/1: 2/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted; saved at step" in err and "resume with" in err and "Traceback" not in err
    assert load_file(out / "last.pth")["step_in_epoch"] >= 2
