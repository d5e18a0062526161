"""The one checkpoint type (compactnets.models.Checkpoint): what it writes is what it reads, in both file formats,
and every way to a model goes through it."""

from __future__ import annotations

import json

import pytest
import torch

import compactnets
from compactnets.checkpoint import CheckpointError, load_file
from compactnets.data.classes import CIFAR10_CLASSES
from compactnets.engine.evaluate import load_model
from compactnets.models import Checkpoint


def _model(name="nin", **kwargs):
    torch.manual_seed(0)
    model = compactnets.create_model(name, **kwargs).eval()
    model.class_names = list(CIFAR10_CLASSES)
    return model


def _same_outputs(a, b):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_a_saved_checkpoint_reads_back_and_builds_the_same_model(tmp_path):
    model = _model("nin_gc", channels=[64, 64, 64, 128, 128, 128, 256, 256])
    saved = Checkpoint.of_model(model, model_kwargs={"channels": [64, 64, 64, 128, 128, 128, 256, 256]},
                                training={"epoch": 3, "args": {"seed": 1}})  # fmt: skip
    saved.save(tmp_path / "c.pth")
    raw = load_file(tmp_path / "c.pth")  # the one dict layout, readable with weights_only=True
    assert raw["arch"] == "nin_gc" and raw["epoch"] == 3 and raw["version"] == 1 and "state_dict_ema" not in raw
    assert raw["pretrained_cfg"]["input_size"] == [3, 32, 32]  # plain lists in the file

    read = Checkpoint.read(tmp_path / "c.pth")
    assert read.arch == "nin_gc" and read.training == {"epoch": 3, "args": {"seed": 1}}
    assert read.model_kwargs == saved.model_kwargs and read.class_names == list(CIFAR10_CLASSES)
    built = read.build_model()
    assert _same_outputs(built, model) and built.class_names == list(CIFAR10_CLASSES)
    assert built.pretrained_cfg["input_size"] == (3, 32, 32)  # tuples again once applied
    assert _same_outputs(load_model(tmp_path / "c.pth"), model)


def test_safetensors_checkpoints_carry_their_model_and_class_names(tmp_path, run_cli):
    model = _model("nin_xnornet")
    Checkpoint.of_model(model).save(tmp_path / "w.safetensors", metadata={"tag": "test"})
    read = Checkpoint.read(tmp_path / "w.safetensors")
    assert read.arch == "nin_xnornet" and read.class_names == list(CIFAR10_CLASSES) and read.model_kwargs == {}
    assert _same_outputs(read.build_model(), model)
    # eval takes the file without --model: it names its model
    status, out, _ = run_cli("eval", "--checkpoint", tmp_path / "w.safetensors", "--limit", 20, "--json")
    assert status == 0 and json.loads(out)["count"] == 20
    # create_model(pretrained=...) loads the same file as timm adapts weights: a new head keeps its own
    five = compactnets.create_model("nin_xnornet", pretrained=tmp_path / "w.safetensors", num_classes=5)
    assert five.num_classes == 5


def test_broken_metadata_and_missing_ema_are_one_line_errors(tmp_path, run_cli):
    model = _model()
    Checkpoint.of_model(model).save(tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    broken = data.replace(b'"class_names":"[', b'"class_names":"{', 1)
    assert broken != data
    (tmp_path / "b.safetensors").write_bytes(broken)
    with pytest.raises(CheckpointError, match="its metadata class_names is not JSON"):
        Checkpoint.read(tmp_path / "b.safetensors")
    status, _, err = run_cli("eval", "--checkpoint", tmp_path / "b.safetensors")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "is not JSON" in err

    Checkpoint.of_model(model).save(tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        Checkpoint.read(tmp_path / "c.pth").ema()


def test_ema_weights_are_their_own_model(tmp_path):
    model, average = _model(), _model()
    with torch.no_grad():
        for p in average.parameters():
            p.mul_(0.5)
    Checkpoint.of_model(model, average).save(tmp_path / "c.pth")
    read = Checkpoint.read(tmp_path / "c.pth")
    assert _same_outputs(read.build_model(), model) and _same_outputs(read.ema().build_model(), average)
    assert not _same_outputs(read.ema().build_model(), model)
    assert _same_outputs(load_model(tmp_path / "c.pth", ema=True), average)


def test_a_bare_state_dict_is_a_checkpoint_without_training_state(tmp_path):
    model = _model()
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    read = Checkpoint.read(tmp_path / "bare.pth")
    assert read.training == {} and read.arch is None and set(read.state_dict) == set(model.state_dict())
    assert _same_outputs(read.build_model("nin"), model)
