"""Registry and the timm model contract, for every registered model."""

import pytest
import torch

import compactnets
from compactnets.checkpoint import CheckpointError, save_atomic
from compactnets.errors import ModelArgumentError, UnknownModelError

ALL_MODELS = compactnets.list_models()
REQUIRED_CFG = ("dataset", "num_classes", "input_size", "mean", "std", "channel_order", "pixel_range",
                "crop_pct", "interpolation", "first_conv", "classifier", "reference", "paper")  # fmt: skip


def _input(model, batch=2):
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


def test_registry_lists_the_xnor_family():
    assert set(compactnets.list_models(family="xnor-net")) >= {"nin", "nin_gc", "nin_xnornet", "nin_gc_xnornet"}
    assert compactnets.list_models("nin_gc*") == ["nin_gc", "nin_gc_k3", "nin_gc_xnornet"]
    assert "xnor-net" in compactnets.list_families()


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match=r"unknown model 'nin_xnornt'.*did you mean 'nin_xnornet'"):
        compactnets.create_model("nin_xnornt")


def test_bad_constructor_argument_is_named():
    with pytest.raises(ModelArgumentError, match="nin: .*unexpected keyword argument 'widht'"):
        compactnets.create_model("nin", widht=2)


def test_pretrained_true_without_bundled_weights_explains():
    with pytest.raises(ValueError, match="bundles no weights for 'nin_gc'"):
        compactnets.create_model("nin_gc", pretrained=True)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_config_is_complete(name):
    cfg = compactnets.get_model_cfg(name)
    for key in REQUIRED_CFG:
        assert key in cfg, key
    assert cfg["channel_order"] in ("RGB", "BGR") and cfg["pixel_range"] in (1.0, 255.0)
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_contract(name):
    torch.manual_seed(0)
    model = compactnets.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    x = _input(model)
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state

    # forward == forward_head(forward_features); pre-logits width
    model.eval()
    features = model.forward_features(x)
    assert features.ndim == 4 and features.shape[1] == model.num_features
    assert torch.allclose(model.forward_head(features), model(x))
    assert model(x).shape == (2, cfg["num_classes"]) == (2, model.num_classes)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.get_classifier() is not None

    # every parameter receives a gradient
    model.train()
    model(x).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing

    # feature_info names real modules with the advertised widths and reductions
    outputs = {}
    hooks = [
        model.get_submodule(info["module"]).register_forward_hook(
            lambda m, i, o, k=info["module"]: outputs.update({k: o})
        )
        for info in model.feature_info
    ]
    model.eval()(x)
    for h in hooks:
        h.remove()
    for info in model.feature_info:
        out = outputs[info["module"]]
        assert out.shape[1] == info["num_chs"]
        assert x.shape[-1] // info["reduction"] <= out.shape[-1] <= x.shape[-1] // info["reduction"] + 1

    # classifier reset: pooled features, unpooled map, new width
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size)
    model.reset_classifier(0, "")
    assert model(x).shape == features.shape
    model.reset_classifier(7, "avg")
    assert model(x).shape == (2, 7)
    assert compactnets.create_model(name, num_classes=0, global_pool="")(x).shape == features.shape


def test_pretrained_path_loads_and_adapts_the_classifier(tmp_path):
    model = compactnets.create_model("nin_xnornet")
    save_atomic({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    same = compactnets.create_model("nin_xnornet", pretrained=tmp_path / "w.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True))
    # fine-tuning to 100 classes keeps every weight but the classifier's
    tuned = compactnets.create_model("nin_xnornet", pretrained=tmp_path / "w.pth", num_classes=100)
    assert torch.equal(tuned.sequential[0].conv.weight, model.sequential[0].conv.weight)
    assert tuned.sequential[10].conv.weight.shape[0] == 100


def test_pretrained_that_does_not_fit_names_the_key(tmp_path):
    save_atomic({"state_dict": compactnets.create_model("nin").state_dict()}, tmp_path / "nin.pth")
    with pytest.raises(CheckpointError, match=r"does not fit nin_xnornet: 'sequential.1.norm.weight' has shape"):
        compactnets.create_model("nin_xnornet", pretrained=tmp_path / "nin.pth")
