"""timm's model contract (huggingface/pytorch-image-models ``tests/test_models.py``) for every registered model.

The same assertions as timm's ``test_model_forward``, ``test_model_backward``, ``test_model_default_cfgs``,
``test_model_forward_features``, ``test_model_forward_intermediates(_features)``,
``test_model_forward_torchscript``, ``test_model_forward_fx``, ``test_model_backward_fx``,
``test_model_forward_fx_torchscript`` and ``test_model_forward_torchscript_with_features_fx`` (``features_only``
through each of timm's ``feature_cls``), plus ``torch.export`` with a dynamic batch and pretrained loading from a
local file (``pretrained_cfg_overlay``, ``checkpoint_path``), through ``timm.create_model`` and
``compactnets.create_model``. Stricter than timm where it is cheap: scripted, traced and exported models must
give the eager logits, feature extractors and ``forward_intermediates`` the maps hooks see,
``forward_intermediates`` the ``forward_features`` map, and ``reset_classifier(0)`` the
``forward_head(pre_logits=True)`` values.

Inputs are small (32x32, 64x64 for ImageNet models where a map is checked); ``pool_size`` is checked at the
default input size as timm does.
"""

import copy
import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import compactnets
from compactnets import timm_bridge
from compactnets.checkpoint import CheckpointError, save_atomic
from compactnets.convert import convert_checkpoint
from compactnets.data import eval_transform
from compactnets.errors import UnknownModelError
from compactnets.models import _registry
from compactnets.models.shufflenetv2 import MEGENGINE_MEAN

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

# As timm's tests: the profiling executor's optimisation runs are slow and irrelevant here.
torch._C._jit_set_profiling_executor(True)
torch._C._jit_set_profiling_mode(False)

ALL_MODELS = compactnets.list_models()
# One model per distinct code path (family, block kinds, stems, heads) for the slowest checks.
EXPORT_MODELS = [
    "micronet_m0_cifar",
    "micronet_m3",
    "mobilenetv2_shared",
    "mobilenetv2_shared_cifar100",
    "nin_gc_xnornet",
    "nin_k3",
    "resnet32_s16u1_double_cifar10",
    "resnet34_s32u1",
    "resnext50_32x4d_s64u4_cifar100",
    "densenet121_s16u1_cifar100",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x0_5_wn1x",
]


def _create(name, **kwargs):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's BGR warning (tested on its own)
        return timm.create_model(name, **kwargs)


def _size(model, small=32):
    """(C, H, W) no larger than ``small`` (ImageNet models: 64, so every level keeps a map)."""
    c, h, w = model.pretrained_cfg["input_size"]
    side = small if h <= 32 else 2 * small
    return c, min(h, side), min(w, side)


def _randomize_bn(model):
    """Non-trivial BN statistics, so eval-mode outputs depend on every layer."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _check_feature_maps(outputs, channels, reductions, size, batch):
    assert len(outputs) == len(channels) == len(reductions)
    for out, chs, r in zip(outputs, channels, reductions, strict=True):
        assert out.shape[:2] == (batch, chs)
        for side, measured in zip(size, out.shape[-2:], strict=True):
            # timm's bound; and not coarser than the advertised stride (the measured stride matches)
            assert side // r <= measured <= math.ceil(side / r) + 1, (r, side, measured)
        assert not torch.isnan(out).any()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_and_default_cfg(name):
    """timm's test_model_forward, test_model_backward and test_model_default_cfgs."""
    model = _create(name).eval()
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg and model.num_classes >= 0 and model.num_features > 0
    assert model.head_hidden_size > 0
    x = torch.randn(1, *_size(model))
    assert model(x).shape == (1, cfg["num_classes"]) and not torch.isnan(model(x)).any()

    # forward_features at the default input size is unpooled, pool_size big; pre-logits are head_hidden_size
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, *cfg["input_size"]))
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    assert features.shape[-2:] == tuple(cfg["pool_size"]) and features.shape[1] == model.num_features
    assert pre_logits.shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        pooled = model(x)
    assert pooled.shape == (1, model.head_hidden_size) and torch.allclose(pooled, pre_logits, atol=1e-6)
    model.reset_classifier(0, "")
    assert model(x).shape[-2:] == model.forward_features(x).shape[-2:]
    with torch.no_grad():
        assert _create(name, num_classes=0, global_pool="").eval()(x).shape == model.forward_features(x).shape
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state
    assert cfg["classifier"] + ".weight" in _create(name).state_dict()

    # backward with a new classifier: every parameter gets a gradient
    model = _create(name, num_classes=42).train()
    out = model(torch.randn(2, *_size(model)))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert model.pretrained_cfg["num_classes"] == 42 and "top1" not in model.pretrained_cfg["reference"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_features_and_intermediates(name):
    """timm's test_model_forward_features, test_model_forward_intermediates(_features); hooks measure the
    strides of feature_info; forward_intermediates' final map is forward_features'."""
    model = _randomize_bn(_create(name)).eval()
    size = _size(model)
    x = torch.randn(1, *size)
    info = timm.models.FeatureInfo(model.feature_info, range(len(model.feature_info)))
    channels, reductions = info.channels(), info.reduction()
    assert len(channels) >= 3

    hooked = {}
    hooks = [
        model.get_submodule(i["module"]).register_forward_hook(lambda m, a, o, k=i["module"]: hooked.setdefault(k, o))
        for i in model.feature_info
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    _check_feature_maps([hooked[i["module"]] for i in model.feature_info], channels, reductions, size[1:], 1)

    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        for got, module in zip(intermediates, (i["module"] for i in model.feature_info), strict=True):
            assert torch.equal(got, hooked[module])
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
        last_two = model.forward_intermediates(x, indices=[-2, -1], stop_early=True, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(last_two, intermediates[-2:], strict=True))
        early, first = model.forward_intermediates(x, indices=[0], stop_early=True)
        assert torch.equal(early, intermediates[0]) and torch.equal(first[0], intermediates[0])

    for features in (
        _create(name, features_only=True),
        _create(name, features_only=True, out_indices=(0, 2), feature_cfg=dict(feature_cls="getter")),
        compactnets.create_model(name, features_only=True, out_indices=(-1,)),
    ):
        features.model.load_state_dict(model.state_dict(), strict=False)  # pruned: fewer keys
        features.eval()
        with torch.no_grad():
            outputs = features(x)
        _check_feature_maps(outputs, features.feature_info.channels(), features.feature_info.reduction(), size[1:], 1)
        taken = features.feature_info.out_indices
        assert all(torch.equal(o, intermediates[i]) for o, i in zip(outputs, taken, strict=True))


# FeatureDictNet/FeatureListNet rebuild a model from its children (two levels with flatten_sequential): only
# these families' forward_features is that chain.
CHAIN_OF_CHILDREN = ("densenet", "micronet", "nin")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_features_only_with_every_feature_cls(name, tmp_path):
    """timm's feature_cfg and feature_cls pass through (as timm's test_model_forward_torchscript_with_features_fx
    uses them): 'fx' (eager and scripted) and 'hook' give forward_intermediates' maps, every level by default,
    with weights from pretrained_cfg_overlay; 'dict' and 'list' give them too or fail, never other maps."""
    source = _randomize_bn(_create(name)).eval()
    path = tmp_path / f"{name}.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    size = _size(source)
    x = torch.randn(1, *size)
    with torch.no_grad():
        expected = source.forward_intermediates(x, intermediates_only=True)

    def features(**kwargs):
        weights = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        return _create(name, features_only=True, **weights, **kwargs).eval()

    extractors = {cls: features(feature_cfg=dict(feature_cls=cls)) for cls in ("fx", "hook")}
    for cls, extractor in extractors.items():
        with torch.no_grad():
            outputs = extractor(x)
        info = extractor.feature_info
        assert info.out_indices == tuple(range(len(expected)))
        _check_feature_maps(outputs, info.channels(), info.reduction(), size[1:], 1)
        assert all(torch.equal(o, e) for o, e in zip(outputs, expected, strict=True)), cls
        # the model's cfg less its head, as timm's feature extractors
        assert extractor.pretrained_cfg == {
            k: v for k, v in source.pretrained_cfg.items() if k not in ("num_classes", "classifier", "global_pool")
        }
    with torch.inference_mode():
        scripted = torch.jit.script(extractors["fx"])(x)
    assert all(torch.allclose(o, e, rtol=1e-5, atol=1e-6) for o, e in zip(scripted, expected, strict=True))

    # feature_cls as a keyword of its own joins feature_cfg, as in timm
    for kwargs in (dict(feature_cfg=dict(feature_cls="dict", flatten_sequential=True)), dict(feature_cls="list")):
        if not ("feature_cfg" in kwargs and name.startswith(CHAIN_OF_CHILDREN)):
            with pytest.raises((AssertionError, RuntimeError)):  # timm finds no such child, or the chain breaks
                features(**kwargs)(x)
            continue
        with torch.no_grad():
            outputs = list(features(**kwargs)(x).values())
        assert all(torch.equal(o, e) for o, e in zip(outputs, expected, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_torchscript_and_fx_give_the_eager_logits(name):
    """timm's test_model_forward_torchscript, test_model_forward_fx, test_model_forward_fx_torchscript and
    test_model_backward_fx, with scripted and traced logits equal to eager ones."""
    model = _randomize_bn(_create(name)).eval()
    x = torch.randn(2, *_size(model))
    with torch.inference_mode():
        expected = model(x)
    scripted = torch.jit.script(model)
    traced = torch.fx.symbolic_trace(model)
    with torch.inference_mode():
        assert torch.allclose(scripted(x), expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(traced(x), expected)
        assert torch.allclose(torch.jit.script(traced)(x), expected, rtol=1e-5, atol=1e-6)

    model = _create(name, num_classes=42).train()
    traced = torch.fx.symbolic_trace(model)
    out = traced(torch.randn(2, *_size(model)))
    out.mean().backward()
    assert out.shape == (2, 42)
    missing = [n for n, p in traced.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORT_MODELS)
def test_torch_export_with_a_dynamic_batch(name):
    model = _randomize_bn(_create(name)).eval()
    x = torch.randn(3, *_size(model))
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)).module()
    with torch.no_grad():
        for n in (1, 3):
            assert torch.allclose(exported(x[:n]), model(x[:n]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_pretrained_from_a_local_file(name, tmp_path):
    """timm's test_model_load_pretrained (in_chans=1, num_classes=5 and 0) from a local safetensors file,
    through timm (pretrained_cfg_overlay, checkpoint_path) and compactnets."""
    source = _randomize_bn(_create(name))
    state = source.state_dict()
    path = tmp_path / f"{name}.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    cfg = source.pretrained_cfg
    head = source.get_classifier()
    head_prefix = next(n for n, m in source.named_modules() if m is head) + "."
    first_conv = cfg["first_conv"] + ".weight"

    same = compactnets.create_model(name, pretrained=path)
    assert all(torch.equal(v, state[k]) for k, v in same.state_dict().items())
    torch_file = tmp_path / f"{name}.pth"
    save_atomic({"state_dict": state}, torch_file)
    assert _equal_state(_create(name, checkpoint_path=str(torch_file)), state)  # timm's load_checkpoint, strict

    headless = _create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0).eval()
    source.eval().reset_classifier(0)
    x = torch.randn(2, *_size(source))
    with torch.no_grad():
        assert torch.allclose(headless(x), source(x), atol=1e-6) and headless(x).shape[1] == source.head_hidden_size

    five = compactnets.create_model(name, pretrained=path, num_classes=5, in_chans=1)
    five_state = five.state_dict()
    assert five.num_classes == 5 and five_state[cfg["classifier"] + ".weight"].shape[0] == 5
    assert torch.allclose(five_state[first_conv], state[first_conv].sum(1, keepdim=True))
    kept = [k for k in five_state if not k.startswith(head_prefix) and k != first_conv]
    assert kept and all(torch.equal(five_state[k], state[k]) for k in kept)
    assert five(torch.randn(2, 1, *_size(five)[1:])).shape == (2, 5)


# --- pretrained tags, converted checkpoints, data config ----------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bundled_tag(tmp_path, monkeypatch):
    """nin_xnornet with a 'cifar10_short' tag (instead of its shipped one) whose weights are a small safetensors
    file, registered in compactnets and timm; returns the weights."""
    torch.manual_seed(3)
    weights = _randomize_bn(compactnets.create_model("nin_xnornet")).state_dict()
    path = tmp_path / "nin_xnornet.cifar10_short.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in weights.items()}, path)
    entry = _registry._models["nin_xnornet"]
    tagged = copy.deepcopy(entry.cfgs[""]) | {
        "tag": "cifar10_short",
        "file": str(path),  # absolute here; bundled files are relative to the package
        "training": dict(recipe="nin_xnornet_cifar10_short", epochs=12, data="CIFAR-10 train", top1=80.0),
    }
    cfgs = _registry._order_tags({"": entry.cfgs[""], "cifar10_short": tagged})  # in place of the shipped tag
    monkeypatch.setitem(_registry._models, "nin_xnornet", dataclasses.replace(entry, cfgs=cfgs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm warns that it overwrites its entry
        timm_bridge.register_all()
    yield weights
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timm_bridge.register_all()


def _equal_state(model, weights):
    state = model.state_dict()
    return state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)


def test_pretrained_tags_load_the_bundled_file(bundled_tag):
    assert compactnets.list_models("nin_xnornet*", pretrained=True) == ["nin_xnornet.cifar10_short"]
    assert compactnets.list_models("nin_x*") == ["nin_xnornet"]
    tagged = compactnets.create_model("nin_xnornet.cifar10_short", pretrained=True)
    assert _equal_state(tagged, bundled_tag)
    assert tagged.pretrained_cfg["tag"] == "cifar10_short" and tagged.pretrained_cfg["training"]["top1"] == 80.0
    # the tag with weights is the default: the architecture alone means it, in Python, timm and torch.hub
    assert _equal_state(compactnets.create_model("nin_xnornet", pretrained=True), bundled_tag)
    assert _equal_state(timm.create_model("nin_xnornet.cifar10_short", pretrained=True), bundled_tag)
    assert _equal_state(timm.create_model("nin_xnornet", pretrained=True), bundled_tag)
    assert "nin_xnornet.cifar10_short" in timm.list_pretrained("nin*")
    hub = torch.hub.load(str(REPO_ROOT), "nin_xnornet", source="local", pretrained=True)
    assert _equal_state(hub, bundled_tag)
    # a new head: the pretrained classifier is dropped, and so are the accuracies of the config
    tuned = compactnets.create_model("nin_xnornet.cifar10_short", pretrained=True, num_classes=100)
    assert "top1" not in tuned.pretrained_cfg["training"] and "top1" not in tuned.pretrained_cfg["reference"]
    assert tuned.pretrained_cfg["num_classes"] == 100
    with pytest.raises(UnknownModelError, match="unknown pretrained tag 'nin_xnornet.cifar100'"):
        compactnets.create_model("nin_xnornet.cifar100")


def test_pretrained_true_without_weights_keeps_its_error(bundled_tag):
    with pytest.raises(ValueError, match="bundles no weights for 'nin_gc'.*convert --family xnor-net"):
        timm.create_model("nin_gc", pretrained=True)


def test_pth_weights_load_without_pickle(tmp_path):
    model = compactnets.create_model("nin")
    path = tmp_path / "nin.pth"
    torch.save(model.state_dict(), path)
    assert _equal_state(compactnets.create_model("nin", pretrained=path), model.state_dict())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        compactnets.create_model("nin", pretrained=bad)


def test_converted_checkpoint_model_kwargs_are_applied(tmp_path):
    """`compactnets convert --model-kwargs center_weights=False` stores them; loading applies them."""
    torch.manual_seed(0)
    official = compactnets.create_model("nin_gc_xnornet", center_weights=False).eval()
    src = tmp_path / "official.pth"
    save_atomic({"model_state_dict": official.state_dict()}, src)
    convert_checkpoint("xnor-net", "nin_gc_xnornet", src, tmp_path / "c.pth", {"center_weights": False})
    x = torch.randn(2, 3, 32, 32)
    shipped = tmp_path / "shipped.safetensors"  # as tools/ship_weights.py writes them
    safetensors_torch.save_file(official.state_dict(), shipped, metadata={"model_kwargs": '{"center_weights": false}'})
    for loaded in (
        compactnets.create_model("nin_gc_xnornet", pretrained=tmp_path / "c.pth"),
        compactnets.create_model("nin_gc_xnornet", pretrained=shipped),
        torch.hub.load(str(REPO_ROOT), "nin_gc_xnornet", source="local", pretrained=str(tmp_path / "c.pth")),
    ):
        assert not loaded.sequential[1].conv.center
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), official(x))


def test_densenet_official_basis_reuse_reproduces_forward_and_regulariser(tmp_path):
    torch.manual_seed(0)
    model = compactnets.create_model("densenet121_s16u1_cifar100", official_basis_reuse=True)
    block4 = model.features.dense_block_layer_3
    assert all(layer.basis_conv2.shared is model.shared_basis_3 for layer in block4)
    assert "shared_basis_4.weight" in model.state_dict()
    # the official regulariser: mean of (B B^T - I)^2 over the four bases, the unused fourth included
    bases = [getattr(model, f"shared_basis_{i}").weight.flatten(1) for i in (1, 2, 3, 4)]
    terms = [(b @ b.T - torch.eye(b.shape[0])).square() for b in bases]
    expected = sum(t.sum() for t in terms) / sum(t.numel() for t in terms)
    assert torch.allclose(model.auxiliary_loss(), expected)

    # conversion uses it: the official shared_basis_4 is kept, block 4 runs basis 3, no warning
    official = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.state_dict().items()}
    for key in [k for k in official if k.endswith(".bn0.weight")]:  # the per-bottleneck copies of the bases
        block = int(key.split("dense_block_layer_")[1][0])
        official[key.replace("bn0.weight", "shared_basis.weight")] = official[
            f"shared_basis_{min(block + 1, 3)}.weight"
        ]
    save_atomic({"net_state_dict": official}, tmp_path / "official.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_checkpoint("shared-bases", "densenet121_s16u1_cifar100", tmp_path / "official.pth", tmp_path / "c.pth")
    converted = compactnets.create_model("densenet121_s16u1_cifar100", pretrained=tmp_path / "c.pth")
    assert converted.official_basis_reuse
    assert torch.equal(converted.shared_basis_4.weight, official["shared_basis_4.weight"])
    bases = [official[f"shared_basis_{i}.weight"].flatten(1) for i in (1, 2, 3, 4)]
    terms = [(b @ b.T - torch.eye(b.shape[0])).square() for b in bases]
    assert torch.allclose(converted.auxiliary_loss(), sum(t.sum() for t in terms) / sum(t.numel() for t in terms))


def test_timm_data_config_is_not_misleading():
    with pytest.warns(UserWarning, match=r"shufflenet_v2_x0_5 expects BGR.*compactnets.data.eval_transform"):
        model = timm.create_model("shufflenet_v2_x0_5")
    config = timm.data.resolve_model_data_config(model)
    assert config["mean"] == pytest.approx(tuple(m / 255 for m in MEGENGINE_MEAN))
    assert "expects BGR" in model.pretrained_cfg["notes"]
    # the compactnets transform of the timm-made config is the same function as of the native one
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 260, 3), dtype=np.uint8))
    native = eval_transform(compactnets.get_model_cfg("shufflenet_v2_x0_5"))(image)
    assert torch.allclose(eval_transform(model.pretrained_cfg)(image), native, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = timm.create_model("micronet_m0")
    assert timm.data.resolve_model_data_config(rgb)["mean"] == pytest.approx((0.485, 0.456, 0.406))
