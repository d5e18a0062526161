"""MicroNet M0-M3: Dynamic Shift-Max against its formula, exact parameter counts and MAdds, the official
state-dict layout (generated here from micronet.md section 5), conversion, the fused inference form, recipes."""

import argparse
import json
import math

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

import compactnets
from compactnets.engine.optim import lr_factor_fn
from compactnets.engine.recipes import recipe_defaults
from compactnets.engine.train import add_train_args
from compactnets.layers import DynamicShiftMax, MaxGroupPooling, shift_index
from compactnets.models.micronet import MICRONET_ARCHS, MICRONET_ROWS

VARIANTS = ("m0", "m1", "m2", "m3")
# micronet.md sections 4 and 5: params, state-dict keys, of them num_batches_tracked.
OFFICIAL_COUNTS = {
    "m0": (1_019_590, 218, 26),
    "m1": (1_777_587, 218, 26),
    "m2": (2_393_876, 290, 34),
    "m3": (2_622_960, 322, 46),
}
# conv + clsFC + dyFC (FlopCounterMode) and + dyFuse (the "micronet" convention), micronet.md section 4.
MADDS = {
    "m0": (3_448_880, 4_054_128, "4M"),
    "m1": (5_314_080, 6_120_032, "6M"),
    "m2": (10_338_128, 12_743_440, "13M"),
    "m3": (18_236_000, 20_807_520, "21M"),
}
README_MADDS = {"m0": "4M", "m1": "6M", "m2": "12M", "m3": "21M"}


# --- Dynamic Shift-Max -------------------------------------------------------------------------------------


def test_shift_index_pairs_the_next_group_and_channel():
    assert shift_index(8, 2).tolist() == [5, 6, 7, 4, 1, 2, 3, 0]  # micronet.md section 2
    assert shift_index(6, 3).tolist() == [3, 2, 5, 4, 1, 0]
    assert shift_index(4, 1).tolist() == [1, 2, 3, 0]  # one group: roll by one channel
    with pytest.raises(ValueError, match=r"channels \(10\) divisible by its groups \(4\)"):
        shift_index(10, 4)


def _shift_max_by_loops(x, w1, b1, w2, b2, branches, init_a, init_b, groups):
    """Dynamic Shift-Max written out channel by channel from the paper's formula and the official defaults."""
    batch, channels = x.shape[:2]
    per_group = channels // groups
    out = torch.empty_like(x)
    for n in range(batch):
        pooled = x[n].mean((1, 2))
        hidden = torch.clamp(w1 @ pooled + b1, min=0)
        h = torch.clamp(w2 @ hidden + b2 + 3, 0, 6) / 6
        y = (h - 0.5) * 4.0  # act_max 2.0, doubled
        for c in range(channels):
            i, k = divmod(c, per_group)
            partner = ((i + 1) % groups) * per_group + (k + 1) % per_group
            terms = []
            for j in range(branches):  # chunks [a1 | b1 | a2 | b2]
                a = y[(2 * j) * channels + c] + init_a[j]
                b = y[(2 * j + 1) * channels + c] + init_b[j]
                terms.append(a * x[n, c] + b * x[n, partner])
            out[n, c] = terms[0] if branches == 1 else torch.maximum(terms[0], terms[1])
    return out


@pytest.mark.parametrize(
    "channels,groups,branches,init_a,init_b",
    [(8, 2, 2, (1.0, 1.0), (0.0, 0.0)), (12, 3, 2, (1.0, 0.5), (0.0, 0.5)), (12, 4, 1, (1.0, 0.0), (0.0, 0.0))],
)
def test_shift_max_matches_the_formula(channels, groups, branches, init_a, init_b):
    torch.manual_seed(0)
    layer = DynamicShiftMax(channels, reduction=2, branches=branches, init_a=init_a, init_b=init_b, groups=groups)
    with torch.no_grad():  # coefficients far from their starting values, some hard sigmoids saturated
        for linear in (layer.fc[0], layer.fc[2]):
            linear.weight.normal_(0, 2.0)
            linear.bias.normal_(0, 1.0)
    x = torch.randn(2, channels, 3, 4)
    fc1, fc2 = layer.fc[0], layer.fc[2]
    expected = _shift_max_by_loops(
        x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, branches, init_a, init_b, groups
    ).detach()
    assert torch.allclose(layer(x), expected, atol=1e-6)
    # the fused form, with a channel order in and a shuffle out folded into its gather
    in_perm, out_perm = torch.randperm(channels), torch.randperm(channels)
    fused = layer.fuse(in_perm, out_perm)
    shuffled_input = torch.empty_like(x)
    shuffled_input[:, in_perm] = x  # the fused layer sees x[:, in_perm] as its true input
    assert torch.allclose(fused(shuffled_input), expected[:, out_perm], atol=1e-6)


def test_shift_max_starts_at_its_initial_values_and_stores_no_index():
    layer = DynamicShiftMax(16, reduction=4, branches=2, init_a=(1.0, 0.5), init_b=(0.0, 0.5), groups=4)
    with torch.no_grad():
        for linear in (layer.fc[0], layer.fc[2]):
            linear.weight.zero_()
            linear.bias.zero_()
    x = torch.randn(1, 16, 5, 5)
    shifted = x[:, shift_index(16, 4)]
    assert torch.allclose(layer(x), torch.maximum(x, 0.5 * x + 0.5 * shifted))  # M3's max(x, x/2 + x2/2)
    assert sorted(layer.state_dict()) == ["fc.0.bias", "fc.0.weight", "fc.2.bias", "fc.2.weight"]
    assert layer.fc[0].out_features == 4  # max(4, make_divisible(16 // 4, 4))
    assert DynamicShiftMax(384, 24, 1).fc[0].out_features == 16  # 384 // 24 = 16
    assert DynamicShiftMax(96, 8, 1).fc[0].out_features == 12


def test_max_group_pooling():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert MaxGroupPooling(2)(x).flatten().tolist() == [1.0, 3.0, 5.0, 7.0]
    assert torch.equal(MaxGroupPooling(1)(x), x)


# --- the official layout -----------------------------------------------------------------------------------


def _squeeze(channels, reduction):
    v = channels // reduction
    rounded = max(4, int(v + 2) // 4 * 4)
    return max(4, rounded + 4 if rounded < 0.9 * v else rounded)


def official_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official key names and shapes, built from micronet.md section 5 and the row
    tables, independently of the compactnets modules. BN statistics are non-trivial."""
    arch = MICRONET_ARCHS[variant]
    generator = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=generator) * scale

    def conv(key, *shape):
        sd[key + ".weight"] = rand(*shape, scale=math.sqrt(2.0 / (shape[0] * shape[2] * shape[3])))

    def bn(key, n):
        sd[key + ".weight"] = 1 + rand(n, scale=0.1)
        sd[key + ".bias"] = rand(n, scale=0.1)
        sd[key + ".running_mean"] = rand(n, scale=0.1)
        sd[key + ".running_var"] = 0.5 + torch.rand(n, generator=generator)
        sd[key + ".num_batches_tracked"] = torch.tensor(1000)

    def linear(key, n_in, n_out):
        sd[key + ".weight"] = rand(n_out, n_in, scale=1 / math.sqrt(n_in))
        sd[key + ".bias"] = rand(n_out, scale=0.2)

    def shift_max(key, channels, branches, reduction):
        squeeze = _squeeze(channels, reduction)
        linear(key + ".fc.0", channels, squeeze)
        linear(key + ".fc.2", squeeze, 2 * branches * channels)

    def conv_bn(key, out_chs, in_per_group, kh=1, kw=1, slot=0):  # conv.{slot}, BN at conv.{slot + 1}
        conv(f"{key}.conv.{slot}", out_chs, in_per_group, kh, kw)
        bn(f"{key}.conv.{slot + 1}", out_chs)

    def separable(key, in_per_group, mid, out, k):  # (k, 1) conv, BN, (1, k) depthwise conv, BN
        conv_bn(key, mid, in_per_group, k, 1)
        conv_bn(key, out, 1, 1, k, slot=2)

    a, b = arch["stem_groups"]
    separable("features.0.stem.0", 3, a, a * b, 3)
    inp = arch["stem_chs"]
    for index, (_, _, c, k, c1, c2, g1, _g2, _, g3, g4, y1, y2, y3, r) in enumerate(MICRONET_ROWS[variant], 1):
        layers, red, hidden = f"features.{index}.layers", 8 * r, inp * c1 * c2
        if g1 == 0:  # A: depthwise, [shift-max], shuffles, pointwise, [shift-max]
            separable(f"{layers}.0", 1, inp * c1, hidden, k)
            if y2:
                shift_max(f"{layers}.1", hidden, y2, red)
            conv_bn(f"{layers}.4", c, hidden // g3)
            if y3:
                shift_max(f"{layers}.5", c, 1, red // 2)
        elif g4 == 0:  # B: pointwise, [shift-max]
            conv_bn(f"{layers}.0", hidden, inp // g1)
            if y3:
                shift_max(f"{layers}.1", hidden, 1, red)
        else:  # C: pointwise, [shift-max], shuffle, depthwise, -, [shift-max], shuffle, pointwise, [shift-max]
            conv_bn(f"{layers}.0", hidden, inp // g1)
            if y1:
                shift_max(f"{layers}.1", hidden, y1, red)
            separable(f"{layers}.3", 1, hidden, hidden, k)
            if y2:
                shift_max(f"{layers}.5", hidden, y2, red)
            conv_bn(f"{layers}.7", c, hidden // g3)
            if y3:
                shift_max(f"{layers}.8", c, 1, red // 2 if c < hidden else red)
        inp = c
    linear("classifier.0.linear.0", inp, arch["head_chs"])
    bn("classifier.0.linear.1", arch["head_chs"])
    linear("classifier.2.linear.0", arch["head_chs"], 1000)
    bn("classifier.2.linear.1", 1000)
    return sd


@pytest.mark.parametrize("variant", VARIANTS)
def test_official_layout_and_exact_parameter_counts(variant):
    params, keys, counters = OFFICIAL_COUNTS[variant]
    official = official_state_dict(variant)
    model = compactnets.create_model(f"micronet_{variant}")
    assert sum(p.numel() for p in model.parameters()) == params
    state = model.state_dict()
    assert (len(state), sum(k.endswith("num_batches_tracked") for k in state)) == (keys, counters)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in official.items()}
    if variant == "m0":  # micronet.md section 5
        assert sum(v.numel() for k, v in official.items() if not k.endswith("num_batches_tracked")) == 1_027_082
        assert official["features.1.layers.5.fc.2.weight"].shape == (16, 4)
        assert official["classifier.2.linear.0.weight"].shape == (1000, 640)


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_convert_official_checkpoints_and_refuse_mismatches(run_cli, tmp_path):
    official = official_state_dict("m2", seed=1)
    reference = compactnets.create_model("micronet_m2")
    reference.load_state_dict(official)
    x = torch.randn(2, 3, 96, 96)
    expected = _logits(reference, x)
    layouts = {
        "bare.pth": official,
        "wrapped.pth": {"state_dict": official},
        "model_best.pth.tar": {  # main.py's training checkpoint: DataParallel prefixes, extra entries
            "epoch": 600, "arch": "MicroNet", "best_prec1": torch.tensor(59.4), "optimizer": {"state": {}},
            "state_dict": {f"module.{k}": v for k, v in official.items()},
        },
    }  # fmt: skip
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        status, out, err = run_cli("convert", "--family", "micronet", "--model", "micronet_m2", tmp_path / name,
                                   tmp_path / f"{name}.converted")  # fmt: skip
        assert status == 0 and "290 tensors" in out, err
        converted = compactnets.create_model("micronet_m2", pretrained=tmp_path / f"{name}.converted")
        assert torch.equal(_logits(converted, x), expected)
        cfg = converted.pretrained_cfg  # the official eval preprocessing: resize 256, center crop 224, bilinear
        assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == ((3, 224, 224), 0.875, "bilinear")
        assert int(224 / cfg["crop_pct"]) == 256 and cfg["mean"] == (0.485, 0.456, 0.406)

    status, _, err = run_cli("convert", "--family", "micronet", "--model", "micronet_m3", tmp_path / "bare.pth",
                             tmp_path / "x.pth")  # fmt: skip
    assert status == 2
    assert "does not fit micronet_m3: 'features.0.stem.0.conv.2.weight' has shape (8, 1, 1, 3)" in err
    del official["features.3.layers.5.fc.0.bias"]
    torch.save(official, tmp_path / "incomplete.pth")
    status, _, err = run_cli("convert", "--family", "micronet", "--model", "micronet_m2", tmp_path / "incomplete.pth",
                             tmp_path / "x.pth")  # fmt: skip
    assert status == 2 and "1 missing keys (first: 'features.3.layers.5.fc.0.bias')" in err


# --- the fused inference form ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_form_computes_the_same_logits(variant):
    model = compactnets.create_model(f"micronet_{variant}")
    model.load_state_dict(official_state_dict(variant, seed=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = model.eval().fuse()
    torch.manual_seed(0)
    for shape in ((1, 3, 224, 224), (3, 3, 97, 131)):  # batch 1 and batched paths; odd, non-square borders
        x = torch.randn(shape)
        expected = _logits(model, x)
        assert expected.std() > 0.05  # not saturated: the comparison means something
        with torch.inference_mode():
            assert (fused(x) - expected).abs().max() < 1e-5
            assert (fused.forward_features(x) - model.forward_features(x)).abs().max() < 1e-4
    # fusing changes nothing in the model, which can still train; the fused copy cannot
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.train()(torch.randn(2, 3, 64, 64)).sum().backward()
    with pytest.raises(RuntimeError, match="inference only"):
        fused.train()
    assert not list(fused.parameters()) and not fused.state_dict()


def test_fused_form_without_classifier():
    model = compactnets.create_model("micronet_m0", num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.fuse()(x), model(x), atol=1e-6)
        model.reset_classifier(0, "")
        assert torch.allclose(model.fuse()(x), model(x), atol=1e-6)
        assert model(x).shape == (1, 384, 2, 2)


def test_fused_form_runs_far_fewer_ops():
    from torch.profiler import profile

    model = compactnets.create_model("micronet_m3").eval()
    fused = model.fuse()
    x = torch.randn(1, 3, 64, 64)
    counts = {}
    with torch.inference_mode():
        for name, m in (("model", model), ("fused", fused)):
            with profile() as prof:
                m(x)
            events = [e for e in prof.events() if e.cpu_parent is None]
            counts[name] = (len(events), sum(e.name == "aten::conv2d" for e in events))
    assert counts["fused"][0] < 0.7 * counts["model"][0]  # 268 vs 399 top-level ops (a shuffle is one)
    assert counts["fused"][1] == 12 and counts["model"][1] == 2 * 12 + 20  # pairs merged, 1x1 as bmm


# --- complexity and recipes -------------------------------------------------------------------------------


def test_profile_reproduces_the_madds_components(run_cli):
    """`compactnets profile --family micronet`: FlopCounterMode MACs (conv + classifier + shift-max FCs), the
    micronet convention (+ shift-max fusion) printed like the README's figure, and the README's figure."""
    status, out, _ = run_cli("profile", "--family", "micronet", "--json")
    rows = {r["model"]: r for r in json.loads(out)}
    assert status == 0 and set(rows) == {f"micronet_{v}" for v in (*VARIANTS, "m0_cifar")}
    assert (rows["micronet_m0_cifar"]["params"], rows["micronet_m0_cifar"]["convention_macs"]) == (383_020, 1_166_640)
    for variant, (flop_counter, madds, as_published) in MADDS.items():
        row = rows[f"micronet_{variant}"]
        assert (row["macs"], row["convention"], row["convention_macs"]) == (flop_counter, "micronet", madds)
        assert (row["published_macs_text"], row["macs_as_published"]) == (README_MADDS[variant], as_published)
        assert row["params"] == OFFICIAL_COUNTS[variant][0]
    assert rows["micronet_m2"]["macs_delta_pct"] == pytest.approx(6.195, abs=1e-3)  # 12.743M vs the README's 12M
    assert rows["micronet_m0"]["params_as_published"] == "1.0M"


def _official_lr(base_lr, it, iters_per_epoch, epochs, warmup_epochs):
    """main.py adjust_learning_rate with --lr-decay cos (and --warmup)."""
    warmup, total = warmup_epochs * iters_per_epoch, epochs * iters_per_epoch
    lr = base_lr * (1 + math.cos(math.pi * (it - warmup) / (total - warmup))) / 2
    return base_lr * it / warmup if it < warmup else lr


@pytest.mark.parametrize("variant,weight_decay,warmup", [("m0", 3e-5, 0), ("m3", 4e-5, 5)])
def test_recipes_are_the_official_scripts(variant, weight_decay, warmup):
    values = recipe_defaults(add_train_args(argparse.ArgumentParser()), f"micronet_{variant}_imagenet")
    assert values == dict(
        model=f"micronet_{variant}", epochs=600, batch_size=128, opt="sgd", lr=0.2, momentum=0.9,
        weight_decay=weight_decay, wd_filter="all", sched="cosine", min_lr=0.0, label_smoothing=0.0,
        augment="imagenet", **({"warmup_epochs": 5.0} if warmup else {}),
    )  # fmt: skip
    args = add_train_args(argparse.ArgumentParser()).parse_args([])
    vars(args).update(values)
    factor = lr_factor_fn(args, iters_per_epoch=10)
    for it in (0, 3, 49, 50, 51, 1234, 5999):
        assert 0.2 * factor(it) == pytest.approx(_official_lr(0.2, it, 10, 600, warmup), abs=1e-12)


@needs_shared_data
def test_eval_on_real_imagenet_photos(run_cli, tmp_path):
    """The ImageNet pipeline (resize 256, crop 224, grayscale photos included) on real photos."""
    torch.manual_seed(0)
    torch.save(compactnets.create_model("micronet_m0").state_dict(), tmp_path / "random.pth")
    status, _, err = run_cli("convert", "--family", "micronet", "--model", "micronet_m0", tmp_path / "random.pth",
                             tmp_path / "m0.pth")  # fmt: skip
    assert status == 0, err
    status, out, err = run_cli("eval", "--checkpoint", tmp_path / "m0.pth", "--data",
                               SHARED_DATA / "imagenet-sample", "--split", "val", "--limit", "48",
                               "--batch-size", "16", "--workers", "0", "--json")  # fmt: skip
    row = json.loads(out)
    assert status == 0 and row["count"] == 48 and row["param_count"] == 1_019_590, err
    assert math.isfinite(row["loss"]) and row["loss"] == pytest.approx(math.log(1000), abs=0.05)


def test_logits_pass_through_bn_and_hswish():
    model = compactnets.create_model("micronet_m1").eval()
    with torch.no_grad():
        logits = model(torch.randn(4, 3, 64, 64))
        hidden = model.forward_head(model.forward_features(torch.randn(4, 3, 64, 64)), pre_logits=True)
    assert logits.min() >= -0.375 - 1e-6  # h_swish(x) >= -3/8
    assert hidden.shape == (4, model.head_hidden_size) == (4, 960)
