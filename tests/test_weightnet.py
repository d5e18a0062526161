"""ShuffleNetV2 + WeightNet: the layers against plain per-sample convolutions, exact figures of the README tables,
the official initialisation, MegEngine checkpoints (restricted unpickling, conversion, refusal), the BGR pipeline,
ONNX export with a dynamic batch, torch.hub and the recipe."""

import argparse
import io
import json
import math
import os
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, needs_shared_data
from PIL import Image
from torch import nn

import compactnets
from compactnets.checkpoint import load_file
from compactnets.convert import convert_checkpoint
from compactnets.data import class_names, eval_transform
from compactnets.engine.evaluate import load_model
from compactnets.engine.optim import param_groups
from compactnets.engine.recipes import recipe_defaults
from compactnets.engine.train import add_train_args
from compactnets.layers import WeightNet, WeightNetDW, per_sample_conv2d, set_per_sample_impl
from compactnets.models.shufflenetv2 import WeightNetShuffleV2Block, split_even_odd
from compactnets.profiler import profile_model

REPO = Path(__file__).resolve().parents[1]
IMPLS = ("grouped", "matmul")

# weightnet.md section 2: exact params and MACs (every conv and linear at 224, generators included).
FIGURES = {
    "shufflenet_v2_x0_5_wnbase": (1_367_840, 40_476_448),
    "shufflenet_v2_x1_0_wnbase": (2_213_024, 137_610_912),
    "shufflenet_v2_x1_5_wnbase": (3_508_768, 298_970_656),
    "shufflenet_v2_x2_0_wnbase": (5_505_040, 557_269_648),
    "shufflenet_v2_x0_5_wn1x": (1_463_928, 40_704_040),
    "shufflenet_v2_x1_0_wn1x": (2_435_832, 138_534_120),
    "shufflenet_v2_x1_5_wn1x": (3_915_344, 301_097_064),
    "shufflenet_v2_x2_0_wn1x": (6_198_068, 561_367_920),
    "shufflenet_v2_x0_5_wn8x": (2_736_216, 41_957_728),
    "shufflenet_v2_x1_0_wn4x": (5_143_896, 141_208_512),
    "shufflenet_v2_x1_5_wn4x": (9_624_336, 306_780_992),
    "shufflenet_v2_x2_0_wn4x": (18_268_604, 573_363_984),
    # MegEngine/Models standard widths (bias-free; 1.0x and 2.0x measured in the spec)
    "shufflenet_v2_x0_5": (1_365_792, 40_476_448),
    "shufflenet_v2_x1_0": (2_278_760, 145_814_296),
    "shufflenet_v2_x1_5": (3_506_720, 298_970_656),
    "shufflenet_v2_x2_0": (7_402_600, 590_783_000),
}
# Rows whose measured figure, printed like the published one, differs from it (documented in the configs).
MISPRINTED = {
    "shufflenet_v2_x0_5_wnbase": ("1.4M", "40M"),  # 41M is the ShuffleNetV2 paper's figure
    "shufflenet_v2_x0_5": ("1.4M", "40M"),
    "shufflenet_v2_x2_0_wn1x": ("6.2M", "561M"),  # the README row matches no configuration of the code
    "shufflenet_v2_x2_0_wn4x": ("18.3M", "573M"),  # no (M, G) of ratio 4 gives 18.1M
}


# --- layers -----------------------------------------------------------------------------------------------


def _loop_reference(layer, x, x_gap, depthwise):
    """The formula with plain nn.Conv2d generators and one F.conv2d per sample."""
    gates = torch.sigmoid(F.conv2d(x_gap, layer.wn_fc1.weight, layer.wn_fc1.bias))
    kernels = F.conv2d(gates, layer.wn_fc2.weight, groups=layer.wn_fc2.groups)
    k, outs = layer.kernel_size, []
    for n in range(len(x)):
        if depthwise:
            w = kernels[n].reshape(layer.chs, 1, k, k)
            outs.append(F.conv2d(x[n : n + 1], w, stride=layer.stride, padding=k // 2, groups=layer.chs))
        else:
            w = kernels[n].reshape(layer.out_chs, layer.in_chs, k, k)
            outs.append(F.conv2d(x[n : n + 1], w, stride=layer.stride, padding=k // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("dense", dict(in_chs=12, out_chs=10, kernel_size=1, stride=1, M=2, G=2)),
        ("dense", dict(in_chs=12, out_chs=6, kernel_size=3, stride=2, M=8, G=2)),
        ("dense", dict(in_chs=8, out_chs=6, kernel_size=1, stride=1, M=4, G=1)),
        ("depthwise", dict(chs=12, kernel_size=3, stride=1, M=2, G=2)),
        ("depthwise", dict(chs=12, kernel_size=3, stride=2, M=8, G=1)),
    ],
)
def test_weightnet_layer_matches_a_loop_of_plain_convs(kind, kwargs, impl):
    torch.manual_seed(0)
    chs = kwargs.get("in_chs", kwargs.get("chs"))
    layer = (WeightNet if kind == "dense" else WeightNetDW)(gate_chs=16, impl=impl, **kwargs)
    for p in layer.parameters():
        nn.init.normal_(p, 0, 0.5)
    x, x_gap = torch.randn(3, chs, 9, 9), torch.randn(3, 16, 1, 1)
    y = layer(x, x_gap)
    assert torch.allclose(y, _loop_reference(layer, x, x_gap, kind == "depthwise"), atol=1e-5, rtol=1e-5)
    assert y.shape[-1] == (9 + 2 * (kwargs["kernel_size"] // 2) - kwargs["kernel_size"]) // kwargs["stride"] + 1


def test_m2g2_kernel_rows_are_gated_static_half_rows():
    """With M = G = 2, kernel row o = [a_2o * V_2o, a_2o+1 * V_2o+1] (weightnet.md 1.3): an SE gate in weight space."""
    torch.manual_seed(1)
    layer = WeightNet(6, 4, 1, gate_chs=16)
    x_gap = torch.randn(2, 16, 1, 1)
    gates = torch.sigmoid(layer.wn_fc1(x_gap)).reshape(2, 8)
    kernels = layer.wn_fc2(gates[..., None, None]).reshape(2, 4, 6)
    halves = layer.wn_fc2.weight.reshape(8, 3)  # group g writes half-row g from gate g
    expected = (gates[:, :, None] * halves).reshape(2, 4, 6)
    assert torch.allclose(kernels, expected, atol=1e-6)


def test_bad_weightnet_arguments_are_named():
    with pytest.raises(ValueError, match=r"G \(3\) to divide M \(2\)"):
        WeightNet(12, 8, 1, M=2, G=3)
    with pytest.raises(ValueError, match="unknown per-sample convolution 'loop'"):
        WeightNetDW(8, 3, impl="loop")
    with pytest.raises(ValueError, match="unknown per-sample convolution"):
        per_sample_conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 1, 1), impl="dense")


def test_even_odd_split_is_the_official_reshape():
    x = torch.randn(2, 8, 3, 3)
    b, c, h, w = x.shape
    official = x.reshape(b * c // 2, 2, h * w).transpose(0, 1).reshape(2, -1, c // 2, h, w)  # shufflenet_v2.py
    proj, branch = split_even_odd(x)
    assert torch.equal(proj, official[0]) and torch.equal(branch, official[1])


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BN statistics of a batch, classifier x10: input-dependent logits of order 1-10 (the official init alone
    gives nearly constant ones)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        model.train()(x)
    model.classifier[0].weight.data *= 10
    return model.eval()


def test_batched_per_image_and_matmul_paths_agree():
    """One folded convolution for the batch == each image alone (the official dense N = 1 path) == matmul."""
    torch.manual_seed(0)
    model = _calibrated(compactnets.create_model("shufflenet_v2_x0_5_wn1x"), torch.rand(8, 3, 96, 96) * 255)
    x = torch.rand(3, 3, 96, 96) * 255
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
        matmul = set_per_sample_impl(model, "matmul")(x)
    assert (batched[0] - batched[1]).abs().max() > 0.1  # a comparison of non-trivial outputs
    assert torch.allclose(batched, alone, atol=1e-4) and torch.allclose(batched, matmul, atol=1e-4)


# --- figures ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_params_and_macs_of_every_row(name):
    row = profile_model(name).as_dict()
    assert (row["params"], row["macs"]) == FIGURES[name]
    assert row["convention"] == "flop_counter"
    printed = (row["params_as_published"], row["macs_as_published"])
    assert printed == MISPRINTED.get(name, (row["published_params"], row["published_macs"]))


def test_generator_macs_of_the_1x_model():
    """weightnet.md section 2, measured on the official 1.0x-1x: the generators' share of the 138,534,120 MACs."""
    per_module = profile_model("shufflenet_v2_x1_0_wn1x").per_module_macs
    total = {part: sum(v for k, v in per_module.items() if k.endswith(part)) for part in ("wn_fc2", "wn_fc1", "reduce")}
    assert total == {"wn_fc2": 711_880, "wn_fc1": 179_584, "reduce": 31_744}


def test_published_figures_are_the_readme_rows():
    ref = compactnets.get_model_cfg("shufflenet_v2_x1_0_wn4x")["reference"]
    assert (ref["params"], ref["macs"], ref["top1"]) == ("5.1M", "141M", 72.4)
    assert compactnets.get_model_cfg("shufflenet_v2_x0_5_wnbase")["reference"]["top1"] == 60.3
    assert "6,198,068" in compactnets.get_model_cfg("shufflenet_v2_x2_0_wn1x")["reference"]["notes"]


# --- initialisation ---------------------------------------------------------------------------------------


def test_official_initialisation_on_megengine_shapes():
    """std = 1 / shape[1] of MegEngine's (groups, out/groups, in/groups, k, k) kernels: wn_fc2 2/inp (not the
    PyTorch-shape 1), depthwise wn_fc2 1/9, wn_fc1 1/r; stem and classifier 0.01; BN 1 / 1e-4."""
    torch.manual_seed(0)
    sd = compactnets.create_model("shufflenet_v2_x1_0_wn1x").state_dict()
    block = "features.5."  # stride 1 in stage 3: branch input 112, mid 112, r = 16
    expected_std = {
        f"{block}wnet1.wn_fc2.weight": 2 / 112,
        f"{block}wnet3.wn_fc2.weight": 2 / 112,
        f"{block}wnet2.wn_fc2.weight": 1 / 9,
        f"{block}wnet1.wn_fc1.weight": 1 / 16,
        f"{block}reduce.weight": 1 / 112,
        "features.12.wnet_proj_2.wn_fc2.weight": 2 / 224,  # stride 2: the whole 224-channel input
        "first_conv.0.weight": 0.01,
        "conv_last.0.weight": 1 / 448,
        "classifier.0.weight": 0.01,
    }
    for key, std in expected_std.items():
        n = sd[key].numel()  # 4 standard errors of the sample std and mean
        assert sd[key].std().item() == pytest.approx(std, rel=4 / math.sqrt(2 * n)), key
        assert abs(sd[key].mean().item()) < 4 * std / math.sqrt(n), key
    assert torch.all(sd[f"{block}bn1.weight"] == 1) and torch.allclose(sd[f"{block}bn1.bias"], torch.tensor(1e-4))
    for key in (f"{block}reduce.bias", f"{block}wnet1.wn_fc1.bias", "first_conv.0.bias", "classifier.0.bias"):
        assert torch.all(sd[key] == 0), key


def test_weight_decay_groups_match_train_py():
    """train.py decays params named *weight* with ndim > 1: 2,406,608 of the 1.0x-1x model (weightnet.md 2)."""
    decay, no_decay = param_groups(compactnets.create_model("shufflenet_v2_x1_0_wn1x"), 4e-5, "kernels")
    assert sum(p.numel() for p in decay["params"]) == 2_406_608
    assert no_decay["weight_decay"] == 0 and all(p.ndim == 1 for p in no_decay["params"])


def test_dropout_only_for_2x():
    assert isinstance(compactnets.create_model("shufflenet_v2_x2_0_wnbase").dropout, nn.Dropout)
    assert isinstance(compactnets.create_model("shufflenet_v2_x1_5_wn1x").dropout, nn.Identity)


# --- MegEngine checkpoints --------------------------------------------------------------------------------


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms and larger logits, so that conversion errors show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    model.classifier[0].weight.data *= 50
    return model.eval()


def _megengine_layout(model: nn.Module, bn_4d: bool = False) -> OrderedDict:
    """What ``megengine.save(model.state_dict())`` holds for the same weights (weightnet.md section 3, shapes
    measured with MegEngine 1.13): grouped kernels 5-D (groups, out/groups, in/groups, kh, kw), conv biases
    (1, C, 1, 1), BN tensors (C,) or, in 0.x files, (1, C, 1, 1); no num_batches_tracked; keys sorted."""
    modules = dict(model.named_modules())
    out = OrderedDict()
    for key, value in sorted(model.state_dict().items()):
        owner, _, name = key.rpartition(".")
        m, v = modules[owner], value.numpy().astype(np.float32)
        if name == "num_batches_tracked":
            continue
        if isinstance(m, nn.Conv2d) and name == "weight" and m.groups > 1:
            v = v.reshape(m.groups, m.out_channels // m.groups, *v.shape[1:])
        elif (isinstance(m, nn.Conv2d) and name == "bias") or (isinstance(m, nn.BatchNorm2d) and bn_4d):
            v = v.reshape(1, -1, 1, 1)
        out[key] = v
    return out


def _write_pickle(obj, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


@pytest.fixture(scope="module")
def official_05x(tmp_path_factory):
    """A 0.5x-1x model and its weights in the official hub-file layout (a pickle of numpy arrays)."""
    torch.manual_seed(0)
    model = _randomise(compactnets.create_model("shufflenet_v2_x0_5_wn1x"))
    state = _megengine_layout(model, bn_4d=True)
    # the shapes MegEngine 1.13 saves for features.0 of the official 0.5x model
    assert state["features.0.wnet1.wn_fc2.weight"].shape == (48, 12, 1, 1, 1)
    assert state["features.0.wnet2.wn_fc2.weight"].shape == (24, 9, 1, 1, 1)
    assert state["features.0.reduce.bias"].shape == (1, 16, 1, 1) and len(state) == 424
    path = _write_pickle(state, tmp_path_factory.mktemp("official") / "snetv2_0.5x_wnet1x_M2G2.model")
    return model, path


def test_convert_official_weightnet_checkpoint(run_cli, official_05x, tmp_path):
    reference, src = official_05x
    dst = tmp_path / "converted.pth"
    status, out, err = run_cli("convert", "--family", "weightnet", "--model", "shufflenet_v2_x0_5_wn1x", src, dst)
    assert status == 0, err
    model = load_model(dst)
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.equal(model(x), reference(x)) and torch.equal(model(x[:1]), reference(x[:1]))
    cfg = model.pretrained_cfg  # raw BGR 0-255, recorded in the checkpoint for eval/predict
    assert (cfg["channel_order"], cfg["pixel_range"], cfg["mean"], cfg["std"]) == ("BGR", 255.0, (0, 0, 0), (1, 1, 1))


def test_convert_megengine_models_training_checkpoint(run_cli, tmp_path):
    """MegEngine/Models' train.py saves {'epoch', 'state_dict'}; its weights expect normalised BGR input."""
    torch.manual_seed(0)
    reference = _randomise(compactnets.create_model("shufflenet_v2_x0_5"))
    src = _write_pickle({"epoch": 240, "state_dict": _megengine_layout(reference)}, tmp_path / "checkpoint.pkl")
    assert run_cli("convert", "--family", "weightnet", "--model", "shufflenet_v2_x0_5", src, tmp_path / "c.pth")[0] == 0
    model = load_model(tmp_path / "c.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert model.pretrained_cfg["mean"] == (103.530, 116.280, 123.675)
    assert model.pretrained_cfg["std"] == (57.375, 57.120, 58.395) and model.pretrained_cfg["channel_order"] == "BGR"


def test_converter_refuses_mismatched_checkpoints(run_cli, official_05x, tmp_path):
    _, src = official_05x
    dst = tmp_path / "x.pth"
    status, _, err = run_cli("convert", "--family", "weightnet", "--model", "shufflenet_v2_x1_0_wn1x", src, dst)
    assert (
        status == 2
        and (
            "does not fit shufflenet_v2_x1_0_wn1x: 'conv_last.0.weight' has shape (1024, 192, 1, 1) in the checkpoint "
            "but (1024, 448, 1, 1) in the model"
        )
        in err
    )
    status, _, err = run_cli("convert", "--family", "weightnet", "--model", "shufflenet_v2_x0_5_wnbase", src, dst)
    assert status == 2 and "does not fit shufflenet_v2_x0_5_wnbase" in err and "unexpected keys" in err
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    status, _, err = run_cli("convert", "--family", "weightnet", "--model", "shufflenet_v2_x0_5_wn1x", garbage, dst)
    assert status == 2 and "is not a MegEngine checkpoint" in err
    assert not dst.exists()


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_a_checkpoint_that_runs_code(run_cli, tmp_path):
    """A MegEngine-style file (numpy arrays) smuggling os.system: refused by name, nothing runs."""
    marker = tmp_path / "pwned"
    state = OrderedDict([("first_conv.0.weight", np.zeros((24, 3, 3, 3), np.float32)), ("payload", _Exploit(marker))])
    src = _write_pickle(state, tmp_path / "evil.model")
    status, _, err = run_cli(
        "convert", "--family", "weightnet", "--model", "shufflenet_v2_x0_5_wn1x", src, tmp_path / "out.pth"
    )
    assert status == 2 and "asks to load posix.system" in err and "refusing to unpickle" in err
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


# --- preprocessing, prediction, export, hub, recipe --------------------------------------------------------


def test_eval_transform_gives_raw_or_normalised_bgr(tmp_path):
    """Resize 256 (here a no-op) + center crop 224 + BGR: raw 0-255 for WeightNet, MegEngine mean/std else."""
    rgb = np.random.default_rng(0).integers(0, 256, (256, 300, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    crop = rgb[16:240, 38:262, ::-1].transpose(2, 0, 1).astype(np.float32)  # offsets round((256-224)/2) etc.
    raw = eval_transform(compactnets.get_model_cfg("shufflenet_v2_x1_0_wn1x"))(image)
    assert torch.equal(raw, torch.from_numpy(crop.copy()))
    normalised = eval_transform(compactnets.get_model_cfg("shufflenet_v2_x1_0"))(image)
    mean, std = np.array([103.530, 116.280, 123.675]), np.array([57.375, 57.120, 58.395])
    expected = (crop - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(normalised.numpy(), expected, atol=1e-4)


@needs_shared_data
def test_predict_and_eval_real_imagenet_photos(run_cli, official_05x):
    """inference.py's output form on real photos (one grayscale) through the raw BGR pipeline."""
    _, src = official_05x
    ckpt = src.with_suffix(".pth")
    assert run_cli("convert", "--family", "weightnet", "--model", "shufflenet_v2_x0_5_wn1x", src, ckpt)[0] == 0
    val = SHARED_DATA / "imagenet-sample" / "val"
    images = [val / "n02096051" / "n02096051_Airedale.JPEG", val / "n01440764" / "n01440764_tench.JPEG"]
    status, out, _ = run_cli("predict", "--checkpoint", ckpt, *images)
    lines = out.splitlines()
    assert status == 0 and len(lines) == 12 and lines[0] == str(images[0])
    assert lines[1].startswith("0: class = ") and lines[1].endswith(" %") and " with probability = " in lines[1]
    names = set(class_names("imagenet"))
    assert all(line.split("class = ")[1].rsplit(" with probability", 1)[0].rstrip() in names for line in lines[1:6])
    status, out, _ = run_cli("eval", "--checkpoint", ckpt, "--data", SHARED_DATA / "imagenet-sample",
                             "--split", "val", "--limit", "24", "--batch-size", "12", "--json")  # fmt: skip
    row = json.loads(out)
    assert status == 0 and row["count"] == 24 and row["model"] == "shufflenet_v2_x0_5_wn1x"


def test_onnx_export_with_a_dynamic_batch():
    """The matmul path exports with a dynamic batch (the grouped one cannot: ONNX's Conv.group is constant)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    blocks = nn.Sequential(
        WeightNetShuffleV2Block(24, 48, 24, stride=2, impl="matmul"),
        WeightNetShuffleV2Block(24, 48, 24, stride=1, impl="matmul"),
    ).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(blocks, (torch.randn(2, 24, 16, 16),), buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    session = onnxruntime.InferenceSession(buffer.getvalue())
    for batch in (1, 3):
        x = torch.randn(batch, 24, 16, 16)
        (y,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            assert np.allclose(y, blocks(x).numpy(), atol=1e-4)
            assert np.allclose(y, set_per_sample_impl(blocks, "grouped")(x).numpy(), atol=1e-4)
        set_per_sample_impl(blocks, "matmul")


def test_torch_hub_entry_points(official_05x, tmp_path):
    _, src = official_05x
    model = torch.hub.load(str(REPO), "shufflenet_v2_x0_5", source="local", trust_repo=True)
    assert model.pretrained_cfg["architecture"] == "shufflenet_v2_x0_5"
    convert_checkpoint("weightnet", "shufflenet_v2_x0_5_wn1x", src, tmp_path / "w.pth")
    loaded = torch.hub.load(str(REPO), "shufflenet_v2_x0_5_wn1x", source="local", pretrained=tmp_path / "w.pth")
    assert torch.equal(loaded.classifier[0].weight, official_05x[0].classifier[0].weight)
    with pytest.raises(ValueError, match=r"bundles no weights.*compactnets convert --family weightnet --model "
                       r"shufflenet_v2_x1_0_wn1x.*snetv2_1.0x_wnet1x_M2G2.model"):  # fmt: skip
        torch.hub.load(str(REPO), "shufflenet_v2_x1_0_wn1x", source="local", pretrained=True)


def test_recipe_is_the_official_train_py():
    values = recipe_defaults(add_train_args(argparse.ArgumentParser()), "weightnet_imagenet")
    assert values == dict(
        model="shufflenet_v2_x0_5_wn1x", steps=300_000, batch_size=128, eval_batch_size=100, opt="sgd", lr=0.5,
        momentum=0.9, weight_decay=4e-5, wd_filter="kernels", sched="linear", label_smoothing=0.1,
        augment="imagenet", color_jitter=0.4, eval_every=40,
    )  # fmt: skip


def test_recipe_trains_a_few_steps_on_images(run_cli, image_folder, tmp_path):
    """The WeightNet recipe end to end on a tiny ImageFolder: raw BGR input, 3 steps over 2 epochs."""
    out = tmp_path / "run"
    status, stdout, err = run_cli("train", "--recipe", "weightnet_imagenet", "--data", image_folder, "--steps", "3",
                                  "--batch-size", "6", "--eval-batch-size", "10", "--lr", "0.01", "--output", out,
                                  "--no-progress", "--workers", "0")  # fmt: skip
    assert status == 0, err
    ckpt = load_file(out / "last.pth")
    assert ckpt["scheduler"]["last_epoch"] == 3 and ckpt["epoch"] == 2
    assert ckpt["pretrained_cfg"]["channel_order"] == "BGR" and ckpt["metrics"]["eval_top1"] is not None
