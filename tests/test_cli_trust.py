"""The command line never loses a run and answers every mistake with one line (exit 2, no traceback)."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

import compactnets
import compactnets.engine.train as engine
from compactnets.checkpoint import CheckpointError, load_file, save_atomic
from compactnets.data.classes import CIFAR10_CLASSES
from compactnets.errors import ModelArgumentError
from compactnets.models import parse_model_kwargs

TINY = ["--model-kwargs", "channels=[16,16,16,16,16,16,16,16]"]
RUN = [*TINY, "--batch-size", "10", "--epochs", "1", "--no-progress"]  # with --data: generated CIFAR pickles
NARROW_KWARGS = {"channels": [16] * 8}


def _fails(run_cli, *argv, message):
    status, out, err = run_cli(*argv)
    assert status == 2, (argv, out, err)
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "nin.pth"
    model = compactnets.create_model("nin", **NARROW_KWARGS)
    save_atomic({"arch": "nin", "model_kwargs": NARROW_KWARGS, "state_dict": model.state_dict(),
                 "pretrained_cfg": model.pretrained_cfg, "class_names": list(CIFAR10_CLASSES)}, path)  # fmt: skip
    return path


def _crafted(tmp_path, checkpoint, **changes):
    ckpt = load_file(checkpoint)
    cfg = changes.pop("pretrained_cfg", {})
    ckpt["pretrained_cfg"] = {**ckpt["pretrained_cfg"], **cfg}
    ckpt.update(changes)
    path = tmp_path / "crafted.pth"
    save_atomic(ckpt, path)
    return path


# --- run folders ------------------------------------------------------------------------------------------


def test_a_finished_run_is_never_overwritten(run_cli, tmp_path, cifar10_pickles):
    out = tmp_path / "run"
    assert run_cli("train", *RUN, "--data", cifar10_pickles, "--output", out)[0] == 0
    before = load_file(out / "last.pth")["state_dict"]
    _fails(
        run_cli,
        "train",
        *RUN,
        "--data",
        cifar10_pickles,
        "--seed",
        "1",
        "--output",
        out,
        message=f"--output {out} holds a run",
    )
    assert all(torch.equal(before[k], v) for k, v in load_file(out / "last.pth")["state_dict"].items())
    # continuing it is allowed, and so is starting over when asked
    status, stdout, _ = run_cli("train", "--resume", out, "--epochs", "2")
    assert status == 0 and "after epoch 1/2" in stdout
    assert run_cli("train", *RUN, "--data", cifar10_pickles, "--seed", "1", "--output", out, "--overwrite")[0] == 0
    assert load_file(out / "last.pth")["epoch"] == 1 and load_file(out / "last.pth")["args"]["seed"] == 1
    _fails(run_cli, "train", "--resume", out, "--overwrite", message="choose one")


def test_a_lock_file_names_the_holder_and_a_stale_one_is_taken_over(run_cli, tmp_path, cifar10_pickles):
    out = tmp_path / "run"
    out.mkdir()
    host = os.uname().nodename
    (out / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": host, "started": "2026-12-01T10:00"}))
    _fails(
        run_cli,
        "train",
        *RUN,
        "--data",
        cifar10_pickles,
        "--output",
        out,
        message=f"in use: run of pid {os.getppid()} on {host}",
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": host, "started": "2026-12-01T10:00"}))
    (out / ".last.pth.4242.tmp").write_bytes(b"half a checkpoint")  # a run killed while saving
    assert run_cli("train", *RUN, "--data", cifar10_pickles, "--output", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "best.pth", "last.pth", "log.csv"]


def test_the_epoch_is_saved_before_its_evaluation(run_cli, tmp_path, monkeypatch, cifar10_pickles):
    def failing_evaluate(*args, **kwargs):
        raise FloatingPointError("evaluation failed")

    monkeypatch.setattr(engine, "evaluate", failing_evaluate)
    out = tmp_path / "run"
    _fails(run_cli, "train", *RUN, "--data", cifar10_pickles, "--output", out, message="evaluation failed")
    ckpt = load_file(out / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["metrics"]["eval_top1"] is None and "rng" in ckpt


def test_a_nan_loss_stops_naming_the_step(run_cli, tmp_path, cifar10_pickles):
    out = tmp_path / "run"
    _fails(run_cli, "train", *RUN, "--data", cifar10_pickles, "--batch-size", "4", "--lr", "1e30", "--epochs", "2",
           "--output", out, message="at step")  # fmt: skip
    assert not (out / "last.pth").exists()  # no NaN weights saved


def test_output_that_cannot_be_a_run_folder(run_cli, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _fails(run_cli, "train", *RUN, "--output", a_file, message="is a file, not a folder")
    _fails(run_cli, "train", *RUN, "--output", a_file / "run", message="cannot be created")


def test_a_run_stopped_before_writing_removes_only_the_folder_it_created(run_cli, tmp_path):
    out = tmp_path / "new"
    _fails(run_cli, "train", "--model", "nin_xnornt", "--output", out, message="unknown model 'nin_xnornt'")
    assert not out.exists()
    out.mkdir()
    _fails(run_cli, "train", "--model", "nin_xnornt", "--output", out, message="unknown model 'nin_xnornt'")
    assert out.is_dir() and not any(out.iterdir())  # there before: kept, and the lock is gone


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output(run_cli, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    _fails(run_cli, "train", *RUN, "--output", ro, message="is not writable")


# --- checkpoints ------------------------------------------------------------------------------------------


def test_bad_checkpoint_files(run_cli, tmp_path, checkpoint):
    empty, text = tmp_path / "empty.pth", tmp_path / "notes.pth"
    empty.write_bytes(b"")
    text.write_text("hello, I am not a checkpoint\n")
    _fails(run_cli, "eval", "--checkpoint", empty, message="is empty (0 bytes)")
    _fails(run_cli, "eval", "--checkpoint", text, message="is a text file, not a torch checkpoint")
    _fails(run_cli, "train", "--resume", checkpoint, message=f"use --pretrained {checkpoint}")


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_atomic({"epoch": 1}, path)

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=f"no space left on device writing {path}; the previous file is kept"):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_file(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_convert_destination_and_family_inference(run_cli, tmp_path, checkpoint):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    official = tmp_path / "official.pth"
    torch.save({"model_state_dict": compactnets.create_model("nin_gc_xnornet").state_dict()}, official)
    _fails(run_cli, "convert", "--model", "nin_gc_xnornet", official, a_file / "x.pth", message="is not a folder")
    status, out, _ = run_cli("convert", "--model", "nin_gc_xnornet", official, tmp_path / "c.pth")  # no --family
    assert (
        status == 0 and "converted" in out and load_file(tmp_path / "c.pth")["converted_from"]["family"] == "xnor-net"
    )


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"pretrained_cfg": {"input_size": [3, 30000, 30000]}}, "input_size = [3, 30000, 30000] should be"),
        ({"pretrained_cfg": {"crop_pct": 0.0}}, "crop_pct = 0.0 should be a number in (0, 1]"),
        ({"pretrained_cfg": {"crop_pct": 0.001}}, "crop_pct = 0.001 should be large enough"),
        ({"pretrained_cfg": {"mean": [0.5, 0.5]}}, "mean = [0.5, 0.5] should be 3 numbers"),
        ({"pretrained_cfg": {"std": [0.0, 1.0, 1.0]}}, "std = [0.0, 1.0, 1.0] should be positive"),
        ({"pretrained_cfg": {"interpolation": "magic"}}, "interpolation = 'magic' should be one of"),
        ({"class_names": ["cat"] * 9}, "9 class names for a classifier of 10 classes"),
        ({"class_names": ["\x1b[31mred"] + ["x"] * 9}, "class name '\\x1b[31mred' is not printable"),
        ({"model_kwargs": "channels"}, "model_kwargs should be a dict"),
    ],
)
def test_checkpoint_metadata_is_validated(run_cli, tmp_path, checkpoint, changes, message):
    crafted = _crafted(tmp_path, checkpoint, **changes)
    _fails(run_cli, "predict", "--checkpoint", crafted, tmp_path / "any.png", message=message)


def test_a_crafted_num_classes_does_not_size_the_head(tmp_path, checkpoint):
    crafted = _crafted(tmp_path, checkpoint, pretrained_cfg={"num_classes": 10**9}, class_names=None)
    model = compactnets.engine.load_model(crafted)
    assert model.num_classes == 10  # read from the classifier's weights


def test_eval_takes_a_run_folder(run_cli, tmp_path, cifar10_pickles):
    out = tmp_path / "run"
    assert run_cli("train", *RUN, "--data", cifar10_pickles, "--output", out)[0] == 0
    status, stdout, _ = run_cli("eval", "--checkpoint", out, "--data", cifar10_pickles, "--json")
    assert status == 0 and json.loads(stdout)["checkpoint"] == str(out / "best.pth")


# --- options ----------------------------------------------------------------------------------------------


def test_model_kwargs_are_typed():
    kwargs = parse_model_kwargs(["binary=false", "shuffle=True", "channels=[8, 8, 8, 8, 8, 8, 8, 8]"], "nin")
    assert kwargs == {"binary": False, "shuffle": True, "channels": [8] * 8}
    model = compactnets.create_model("nin", **kwargs)
    assert not any(isinstance(m, compactnets.layers.BinaryConv2d) for m in model.modules())
    with pytest.raises(ModelArgumentError, match="binary='yes': nin expects bool for binary"):
        parse_model_kwargs(["binary=yes"], "nin")
    with pytest.raises(ModelArgumentError, match="conv4_kernel=2.5: nin expects int"):
        parse_model_kwargs(["conv4_kernel=2.5"], "nin")
    with pytest.raises(ModelArgumentError, match="nin takes no argument 'widht'"):
        parse_model_kwargs(["widht=2"], "nin")


@pytest.mark.parametrize(
    "argv,message",
    [
        (("train", "--epochs", "0"), "--epochs must be a positive integer, not 0"),
        (("train", "--batch-size", "0"), "--batch-size must be a positive integer, not 0"),
        (("train", "--steps", "-3"), "--steps must be a positive integer, not -3"),
        (("train", "--train-limit", "-5"), "--train-limit must be a positive integer, not -5"),
        (("train", "--lr", "nan"), "--lr must be a finite number >= 0, not nan"),
        (("train", "--lr", "-0.1"), "--lr must be a finite number >= 0, not -0.1"),
        (("train", "--amp", "fp16", "--device", "cpu"), "use --amp bf16"),
        (("train", "--model-kwargs", "binary=maybe"), "nin expects bool for binary"),
        (("eval", "--checkpoint", "x.pth", "--limit", "-5"), "--limit must be at least 1, not -5"),
        (("predict", "--checkpoint", "x.pth", "a.png", "--topk", "0"), "--topk must be at least 1, not 0"),
        (("profile", "nin", "--all"), "name models, or use --all or --family, not both"),
        (("list", "--recipes", "--family", "micronet"), "cannot be combined with --recipes"),
    ],
)
def test_bad_options_are_refused_in_one_line(run_cli, tmp_path, argv, message):
    extra = ("--output", tmp_path / "run") if argv[0] == "train" else ()
    _fails(run_cli, *argv, *extra, message=message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu(run_cli, checkpoint):
    _fails(run_cli, "eval", "--checkpoint", checkpoint, "--device", "cuda", message="this machine has no GPU")


# --- predict, list, profile -------------------------------------------------------------------------------


def test_predict_folders_lists_batches_and_skips_unreadable_files(run_cli, checkpoint, image_folder, tmp_path):
    folder = image_folder / "val" / "cat"
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG not an image")
    listing = tmp_path / "images.txt"
    listing.write_text(f"{folder / 'rgb.jpeg'}\n")
    status, out, err = run_cli("predict", "--checkpoint", checkpoint, folder, "--image-list", listing,
                               "--batch-size", "2", "--json", "--topk", "2")  # fmt: skip
    results = json.loads(out)
    assert status == 0 and f"skipped: cannot read image {broken}" in err
    assert [r["image"] for r in results] == sorted(str(p) for p in folder.iterdir() if p != broken) + [
        str(folder / "rgb.jpeg")
    ]
    # batching does not change a figure: one image at a time gives the same probabilities
    status, out1, _ = run_cli("predict", "--checkpoint", checkpoint, folder, "--image-list", listing,
                              "--batch-size", "1", "--json", "--topk", "2")  # fmt: skip
    for a, b in zip(results, json.loads(out1), strict=True):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-6)
    status, out, _ = run_cli("predict", "--checkpoint", checkpoint, folder / "rgb.jpeg", "--csv", "--topk", "2")
    lines = out.strip().splitlines()
    assert status == 0 and lines[0] == "image,rank,label,index,probability" and len(lines) == 3


def test_list_and_profile_json_numbers(run_cli):
    status, out, _ = run_cli("list", "nin*", "--json")
    rows = {r["model"]: r for r in json.loads(out)}
    assert rows["nin_xnornet"]["params"] == 674_910 and rows["nin_xnornet"]["macs"] == pytest.approx(17.26e6)
    assert rows["nin_xnornet"]["macs_convention"] == "ptflops" and rows["nin_xnornet"]["top1"] == 82.75
    assert rows["nin_gc_k3"]["params"] is None and rows["nin_gc_k3"]["top1"] is None
    status, out, _ = run_cli("list", "nin*")
    assert "macs_convention" in out.splitlines()[0]
    status, out, _ = run_cli("list", "--recipes", "nin_x*", "--json")
    assert [r["recipe"] for r in json.loads(out)] == [
        "nin_xnornet_cifar10",
        "nin_xnornet_cifar10_cpu",
        "nin_xnornet_cifar10_short",
    ]
    status, out, _ = run_cli("profile", "nin_xnornet", "--json")
    row = json.loads(out)[0]
    assert row["published_params"] == 674_910 and row["published_params_text"] == "674.91 k"
    assert row["params"] == 674_910 and row["published_macs"] == pytest.approx(17.26e6)


# --- start-up ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,absent", [(["--version"], "torch"), (["--help"], "torch"), (["list", "nin*"], "torchvision")]
)
def test_start_up_imports(argv, absent):
    code = (
        "import sys\nfrom compactnets.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print({absent!r} in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_train_help_shows_defaults_and_print_config_resolves_a_recipe(run_cli, capsys):
    with pytest.raises(SystemExit):
        compactnets.cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR default: 0.05" in help_text and "--opt {sgd,adam,adamw} default: sgd" in help_text
    status, out, _ = run_cli("train", "--recipe", "nin_xnornet_cifar10", "--epochs", "4", "--print-config")
    options = json.loads(out)
    assert status == 0 and options["lr"] == 0.1 and options["epochs"] == 4 and options["model"] == "nin_xnornet"


def test_progress_off_a_terminal_is_one_line_every_n_batches():
    import io

    from compactnets.engine.progress import Progress

    stream = io.StringIO()
    progress = Progress(True, "epoch 1/1", interval=4, stream=stream)
    for i in progress(list(range(10))):
        progress.postfix(loss=float(i))
    assert stream.getvalue().splitlines() == [
        "epoch 1/1: 4/10  loss 3.000",
        "epoch 1/1: 8/10  loss 7.000",
        "epoch 1/1: 10/10  loss 9.000",
    ]
    assert list(Progress(False, "off", stream=stream)(range(3))) == [0, 1, 2]
