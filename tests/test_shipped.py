"""The weights shipped in the package: they load offline through every entry point, and `compactnets eval`
reproduces their figures (here on a fixed 500-image subset of the CIFAR-10 test set; the stated figures are the
full 10,000 images, measured with the same command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

import compactnets
from compactnets.checkpoint import read_weights

REPO = Path(__file__).resolve().parents[1]
# name: (top-1, top-5) of `compactnets eval --model NAME --pretrained --data ../shared/data/cifar10 --limit 500`
SUBSET_FIGURES = {
    "nin.cifar10jpeg_3ep": (79.0, 98.4),
    "nin.cifar10jpeg_cpu60": (88.0, 99.6),
    "nin_xnornet.cifar10jpeg_3ep": (49.8, 92.8),
    "nin_xnornet.cifar10jpeg_cpu60": (82.0, 98.6),
    "resnet32_s8u1_cifar10.cifar10jpeg_5ep": (73.0, 98.4),
    "resnet32_s8u1_cifar10.cifar10jpeg_cpu60": (87.4, 99.6),
}


def test_the_default_tag_is_the_best_measured_shipped_weights():
    for arch in {name.partition(".")[0] for name in SUBSET_FIGURES}:
        shipped = {
            n: compactnets.get_model_cfg(n)["training"]["top1"] for n in SUBSET_FIGURES if n.startswith(arch + ".")
        }
        assert f"{arch}.{compactnets.get_model_cfg(arch)['tag']}" == max(shipped, key=shipped.get)


def test_every_shipped_weight_is_listed_with_its_figures():
    assert compactnets.list_models(pretrained=True) == sorted(SUBSET_FIGURES)
    for name in SUBSET_FIGURES:
        training = compactnets.get_model_cfg(name)["training"]
        assert training["top1"] > SUBSET_FIGURES[name][0] - 5 and training["epochs"] >= 1
        assert f"--model {name} --pretrained" in training["eval"] and "JPEG quality 75" in training["data"]


@pytest.mark.parametrize("name", sorted(SUBSET_FIGURES))
def test_pretrained_loads_offline_through_create_model_hub_and_timm(name):
    import timm

    arch, _, tag = name.partition(".")
    expected = read_weights(REPO / "src/compactnets" / compactnets.get_model_cfg(name)["file"])["state_dict"]
    models = {
        "create_model": compactnets.create_model(name, pretrained=True),
        "timm": timm.create_model(name, pretrained=True),
    }
    if compactnets.get_model_cfg(arch)["tag"] == tag:  # the default: the arch's best-measured shipped weights
        models["default tag"] = compactnets.create_model(arch, pretrained=True)
        models["torch.hub"] = torch.hub.load(str(REPO), arch, source="local", pretrained=True)
    for how, model in models.items():
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items()), how


@needs_shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SUBSET_FIGURES))
def test_eval_reproduces_the_figures(run_cli, name):
    status, out, _ = run_cli(
        "eval", "--model", name, "--pretrained", "--data", SHARED_DATA / "cifar10", "--limit", 500, "--json",
        "--no-progress",
    )  # fmt: skip
    assert status == 0
    row = json.loads(out)
    assert (row["top1"], row["top5"], row["count"]) == (*SUBSET_FIGURES[name], 500)


def test_pretrained_needs_a_model(run_cli):
    status, _, err = run_cli("eval", "--pretrained")
    assert status == 2 and "--pretrained needs --model" in err
