"""The command line: help, eval/predict/convert round trips, and bad input with clear messages."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

import compactnets
from compactnets.checkpoint import save_atomic
from compactnets.engine.recipes import list_recipes, read_recipe, recipe_defaults
from compactnets.engine.train import add_train_args

COMMANDS = ("train", "eval", "predict", "profile", "list", "convert")


def test_python_dash_m_and_every_help():
    result = subprocess.run([sys.executable, "-m", "compactnets", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and all(c in result.stdout for c in COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            compactnets.cli.main([command, "--help"])
        assert exit_info.value.code == 0


def test_list_models_and_recipes(run_cli):
    status, out, _ = run_cli("list", "nin*")
    assert status == 0 and "nin_xnornet" in out and "17.26 MMac" in out
    status, out, _ = run_cli("list", "--recipes", "--json")
    assert {r["recipe"] for r in json.loads(out)} >= {"nin_xnornet_cifar10", "nin_gc_xnornet_cifar10"}


@pytest.fixture
def trained_checkpoint(tmp_path_factory):
    """A compactnets checkpoint of nin_xnornet with its training metadata (random weights)."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    model = compactnets.create_model("nin_xnornet")
    save_atomic(
        {"arch": "nin_xnornet", "state_dict": model.state_dict(), "pretrained_cfg": model.pretrained_cfg,
         "class_names": list(compactnets.data.class_names("cifar10"))},
        path,
    )  # fmt: skip
    return path


def test_eval_json_on_generated_pickles(run_cli, trained_checkpoint, cifar10_pickles):
    status, out, _ = run_cli("eval", "--checkpoint", trained_checkpoint, "--data", cifar10_pickles, "--json")
    row = json.loads(out)
    assert status == 0 and row["model"] == "nin_xnornet" and row["count"] == 4
    assert 0 <= row["top1"] <= 100 and row["top5"] >= row["top1"] and row["param_count"] == 674_910


def test_predict_prints_topk_names(run_cli, trained_checkpoint, image_folder):
    images = sorted((image_folder / "val" / "cat").iterdir())
    status, out, _ = run_cli("predict", "--checkpoint", trained_checkpoint, *images, "--topk", "3")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == str(images[0]) and len(lines) == 4 * len(images)
    assert lines[1].startswith("0: class = ") and lines[1].endswith(" %")
    status, out, _ = run_cli("predict", "--checkpoint", trained_checkpoint, images[0], "--json")
    top = json.loads(out)[0]["top"]
    assert len(top) == 5 and top[0]["label"] in compactnets.data.class_names("cifar10")
    assert sum(t["probability"] for t in top) <= 1.0 + 1e-6


@needs_shared_data
def test_predict_real_cifar_images(run_cli, trained_checkpoint):
    images = sorted((SHARED_DATA / "cifar10" / "test" / "ship").iterdir())[:2]
    status, out, _ = run_cli("predict", "--checkpoint", trained_checkpoint, *images)
    assert status == 0 and out.count("with probability") == 10


def test_convert_official_mcts_checkpoint(run_cli, tmp_path):
    """An MCTS training checkpoint: weights under model_state_dict, DataParallel prefixes, extra entries."""
    reference = compactnets.create_model("nin_gc_xnornet").eval()
    official = {
        "arch": "nin_gc_xnornet",
        "epoch": 149,
        "model_state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
        "best_acc1": torch.tensor(75.76),
        "optimizer_state_dict": {"state": {}, "param_groups": []},
    }
    src, dst = tmp_path / "cifar10_nin_gc_xnornet_checkpoint.pth.tar", tmp_path / "converted.pth"
    torch.save(official, src)
    status, out, _ = run_cli("convert", "--family", "xnor-net", "--model", "nin_gc_xnornet", src, dst)
    assert status == 0 and "converted" in out
    model = compactnets.create_model("nin_gc_xnornet", pretrained=dst).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), reference(x))
    # constructor arguments: recorded in the converted checkpoint, so eval rebuilds the same model
    narrow = compactnets.create_model("nin", channels=[8] * 8)
    torch.save({"model_state_dict": narrow.state_dict()}, src.with_name("narrow.pth"))
    kwargs = ("--model-kwargs", "channels=[8,8,8,8,8,8,8,8]")  # after the files: it takes several values
    assert (
        run_cli("convert", "--family", "xnor-net", "--model", "nin", src.with_name("narrow.pth"), dst, *kwargs)[0] == 0
    )
    status, out, _ = run_cli("eval", "--checkpoint", dst, "--limit", "20", "--json")
    assert status == 0 and json.loads(out)["param_count"] == sum(p.numel() for p in narrow.parameters())
    # a checkpoint of another architecture is refused, naming the first key that does not fit
    status, _, err = run_cli("convert", "--family", "xnor-net", "--model", "nin_xnornet", src, dst)
    assert status == 2 and "does not fit nin_xnornet: 'sequential.0.conv.weight' has shape (256, 3, 5, 5)" in err


def test_bad_inputs_are_named(run_cli, tmp_path, trained_checkpoint, image_folder):
    cases = [
        (("train", "--model", "nin_xnornt"), "unknown model 'nin_xnornt'; did you mean 'nin_xnornet'"),
        (("profile", "resnet50"), "unknown model 'resnet50'"),
        (("train", "--data", tmp_path / "missing"), "data path not found"),
        (("eval", "--checkpoint", tmp_path / "none.pth"), "checkpoint not found"),
        (("eval", "--checkpoint", trained_checkpoint, "--model", "nin"),
         "does not fit nin: 'sequential.1.norm.weight' has shape (192,) in the checkpoint but (160,) in the model"),
        (("train", "--recipe", "nin_xnornet_cifar1O"), "unknown recipe 'nin_xnornet_cifar1O'; did you mean"),
        (("train", "--model-kwargs", "channels"), "--model-kwargs takes KEY=VALUE items"),
        (("train", "--resume", tmp_path / "norun"), "checkpoint not found"),
    ]  # fmt: skip
    for argv, message in cases:
        status, _, err = run_cli(*argv)
        assert status == 2, argv
        assert message in err, (argv, err)

    broken = image_folder / "val" / "cat" / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    status, _, err = run_cli("predict", "--checkpoint", trained_checkpoint, broken)
    assert status == 2 and f"cannot read image {broken}" in err


def test_checkpoint_with_code_is_refused(run_cli, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": subprocess.Popen}, path)
    status, _, err = run_cli("eval", "--checkpoint", path, "--model", "nin")
    # the refused global is named; the way around the refusal is not suggested
    assert status == 2 and "refusing to load" in err and "Popen, which is code" in err
    assert "weights_only=False" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "text,message",
    [
        ("[train]\nlrr = 0.1\n", "unknown option 'lrr' (did you mean 'lr'?)"),
        ("[train]\nlr = 'fast'\n", "lr = 'fast' should be a number"),
        ("[train]\nsched = 'exp'\n", "sched = 'exp' should be one of multistep, cosine, linear, constant"),
        ("[train]\nepochs = 2.5\n", "epochs = 2.5 should be a number (int)"),
        ("[train]\nlr_milestones = 30\n", "lr_milestones = 30 should be a list"),
        ("[train\nlr = 1\n", "malformed recipe"),
        ("lr = 0.1\n", "expected a [train] table"),
        ("[train]\n[[phases]]\nepochs = 1\nmodel = 'nin'\n", "unknown option 'model' in phase 1"),
        ("[train]\n[[phases]]\nlr = 0.1\n", "phase 1 needs epochs > 0"),
        ("[train]\nepochs = 9\n[[phases]]\nepochs = 2\n", "epochs = 9 but the phases sum to 2"),
    ],
)
def test_malformed_recipes(run_cli, tmp_path, text, message):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    status, _, err = run_cli("train", "--recipe", path)
    assert status == 2 and message in err, err


@pytest.mark.parametrize("name", list_recipes())
def test_shipped_recipes_are_valid(name):
    values = recipe_defaults(add_train_args(__import__("argparse").ArgumentParser()), name)
    assert compactnets.models.is_model(values["model"])
    teacher = values.get("teacher")
    if teacher in compactnets.list_models(pretrained=True):  # a teacher named by a recipe is shipped weights...
        assert compactnets.get_model_cfg(teacher)["file"]
    elif teacher:  # ...or those of a CPU table's row that trains before this recipe's row (and ships them)
        rows = next(t for t in compactnets.models.published_tables().values() if name in [r.recipe for r in t])
        earlier = rows[: [r.recipe for r in rows].index(name)]
        assert teacher.partition(".")[0] in [read_recipe(r.recipe)["train"]["model"] for r in earlier]


def test_xnor_recipe_is_the_seed_run():
    import argparse

    values = recipe_defaults(add_train_args(argparse.ArgumentParser()), "nin_xnornet_cifar10")
    assert values == dict(
        model="nin_xnornet", epochs=200, batch_size=100, opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
        wd_filter="all", sched="multistep", lr_milestone_fractions=[0.5, 0.75], lr_milestone_lag=1, lr_gamma=0.1,
        augment="cifar", seed=0, deterministic=True,
    )  # fmt: skip


def test_recipe_values_are_overridden_by_the_command_line(tmp_path, run_cli):
    status, out, _ = run_cli("train", "--recipe", "nin_xnornet_cifar10", "--model-kwargs",
                             "channels=[8,8,8,8,8,8,8,8]", "--epochs", "1", "--train-limit", "50",
                             "--eval-limit", "20", "--output", tmp_path, "--no-progress")  # fmt: skip
    args = json.loads((tmp_path / "args.json").read_text())
    assert status == 0 and args["epochs"] == 1 and args["lr"] == 0.1 and args["lr_milestone_lag"] == 1
    assert args["recipe"] == "nin_xnornet_cifar10" and args["model"] == "nin_xnornet"
    assert "func" not in args  # options only, not the CLI's handler


def test_a_recipes_levers_can_be_turned_off_on_the_command_line(run_cli):
    """For an ablation: the recipe with one lever off (EMA, distillation) and everything else as it is."""
    status, out, _ = run_cli("train", "--recipe", "nin_xnornet_cifar10_cpu", "--print-config")
    recipe = json.loads(out)
    assert status == 0 and recipe["model_ema"] and recipe["model_ema_warmup"] and recipe["teacher"]
    status, out, _ = run_cli("train", "--recipe", "nin_xnornet_cifar10_cpu", "--no-model-ema", "--teacher", "none",
                             "--print-config")  # fmt: skip
    ablated = json.loads(out)
    assert status == 0 and not ablated["model_ema"] and ablated["teacher"] is None
    differ = {k for k in recipe if recipe[k] != ablated[k] and k != "output"}  # output: named by the second
    assert differ == {"model_ema", "teacher"}


def test_eval_reproduces_the_training_log(run_cli, tmp_path):
    """`eval --channels-last` sees the evaluation exactly as the training loop did (same subset, same format)."""
    status, _, _ = run_cli("train", "--model", "nin_xnornet", "--epochs", "1", "--train-limit", "200",
                           "--eval-limit", "100", "--output", tmp_path, "--no-progress")  # fmt: skip
    assert status == 0
    with open(tmp_path / "log.csv", newline="") as f:
        logged = next(csv.DictReader(f))
    status, out, _ = run_cli("eval", "--checkpoint", tmp_path / "last.pth", "--limit", "100", "--channels-last",
                             "--json")  # fmt: skip
    row = json.loads(out)
    assert status == 0 and row["count"] == 100
    assert row["top1"] == float(logged["eval_top1"]) and row["top5"] == float(logged["eval_top5"])
    assert row["loss"] == pytest.approx(float(logged["eval_loss"]), abs=1e-4)  # rounded to 4 decimals in --json
