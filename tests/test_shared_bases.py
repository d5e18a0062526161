"""Deeply shared filter bases (Net_RL2): the README's figures, sharing, the regulariser, the official layout and
its conversion. Official facts are from shared-bases.md (Net_RL2 @ f98cd9d)."""

import argparse
import copy
import csv

import pytest
import torch
import torch.nn.functional as F

import compactnets
from compactnets.checkpoint import CheckpointError
from compactnets.engine.evaluate import load_model
from compactnets.engine.optim import lr_factor_fn
from compactnets.engine.recipes import recipe_defaults
from compactnets.engine.train import add_train_args
from compactnets.layers import SharedBasisConv2d, basis_similarity, refer_to
from compactnets.models.shared_bases import checkpoint_filter_fn
from compactnets.models.shared_bases.resnet import BasisBlock
from compactnets.profiler import profile_model

# Section 4: parameters and ptflops (<= 0.6.3) MACs of the official models; the README prints 2 x MACs as FLOPs.
OFFICIAL_COUNTS = {
    "resnet32_s8u1_cifar10": (150_666, 48_497_280),
    "resnet32_s16u1_cifar10": (197_258, 80_183_936),
    "resnet32_s16u1_double_cifar10": (245_642, 80_183_936),
    "resnet56_s8u1_cifar10": (201_850, 84_603_520),
    "resnet56_s16u1_cifar10": (270_842, 147_976_832),
    "resnet56_s16u1_double_cifar10": (319_226, 147_976_832),
    "resnet34_s8u1_cifar100": (5_865_428, 397_277_184),
    "resnet34_s16u1_cifar100": (6_485_844, 523_270_144),
    "resnet34_s32u1_cifar100": (7_726_676, 775_256_064),
    "densenet121_s16u1_cifar100": (5_084_504, 714_556_928),
    "resnext50_32x4d_s64u4_cifar100": (19_333_380, 1_188_233_216),
    "mobilenetv2_shared_cifar100": (2_163_812, 69_324_036),
    "resnet34_s32u1": (8_196_056, 2_489_178_880),
    "resnet34_s48u1": (9_436_888, 3_260_885_760),
    "resnet34_s32u1_double": (9_762_776, 2_489_178_880),
    "resnet34_s48u1_double": (11_786_968, 3_260_885_760),
    "mobilenetv2_shared": (3_243_080, 328_706_624),
}
# README rows whose printed parameters the code does not give: (as printed, the true count printed alike).
README_ERRATA = {
    "resnet56_s16u1_cifar10": ("0.22M", "0.27M"),  # typo (0.22M is S10U1)
    "resnet32_s16u1_double_cifar10": ("0.24M", "0.25M"),  # 245,642: inconsistent rounding of the "*" rows
    "resnet56_s16u1_double_cifar10": ("0.31M", "0.32M"),  # 319,226
}
# Section 3: the regulariser's normaliser (sum of the selected entry counts).
NORMALISERS = {
    "resnet32_s8u1_cifar10": 2_856,
    "resnet32_s16u1_cifar10": 8_232,
    "resnet32_s16u1_double_cifar10": 27_048,
    "resnet56_s8u1_cifar10": 4_368,
    "resnet56_s16u1_cifar10": 11_088,
    "resnet56_s16u1_double_cifar10": 32_592,
    "resnet34_s16u1_cifar100": 21_760,
    "resnet34_s32u1_double": 348_160,
    "resnet34_s32u1": 87_040,
    "mobilenetv2_shared": 192**2 + 384**2 + 576**2 + 960**2,
}


def test_every_readme_row_is_registered():
    assert compactnets.list_models(family="shared-bases") == sorted(OFFICIAL_COUNTS)


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_params_and_flops_are_the_official_counts(name):
    profile = profile_model(name)
    params, macs = OFFICIAL_COUNTS[name]
    assert profile.convention == "ptflops_x2"
    assert (profile.params, profile.convention_macs) == (params, 2 * macs)
    row = profile.as_dict()
    assert row["macs_as_published"] == row["published_macs"]
    published, measured = README_ERRATA.get(name, (row["published_params"],) * 2)
    assert (row["published_params"], row["params_as_published"]) == (published, measured)


def test_profile_prints_the_true_figure_and_the_readme_notes(run_cli):
    status, out, _ = run_cli("profile", "resnet56_s16u1_cifar10", "densenet121_s16u1_cifar100")
    assert status == 0
    row = next(line for line in out.splitlines() if line.startswith("resnet56_s16u1_cifar10 "))
    assert row.split()[1:4] == ["0.27M", "0.22M", "+23.11%"] and row.count("0.30G") == 2
    assert "note resnet56_s16u1_cifar10: README typo" in out
    assert "note densenet121_s16u1_cifar100: README row labelled 'DenseNet121-S64U4'" in out


# --- the shared-basis convolution -------------------------------------------------------------------------


@pytest.mark.parametrize("unique_groups,shared_groups", [(1, 1), (2, 4)])
def test_shared_basis_conv_is_unique_then_shared(unique_groups, shared_groups):
    torch.manual_seed(0)
    shared = torch.nn.Conv2d(8, 8, 3, padding=1, groups=shared_groups, bias=False)
    layer = SharedBasisConv2d(8, 4, shared, unique_groups=unique_groups)
    assert layer.weight.shape == (4, 8 // unique_groups, 3, 3) and layer.out_channels == 12
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    w_u = layer.weight.detach().clone().requires_grad_()
    w_s = shared.weight.detach().clone().requires_grad_()
    expected = torch.cat(
        [F.conv2d(x, w_u, padding=1, groups=unique_groups), F.conv2d(x, w_s, padding=1, groups=shared_groups)], 1
    )
    out = layer(x)
    assert torch.allclose(out, expected, atol=1e-6)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    assert torch.allclose(layer.weight.grad, w_u.grad, atol=1e-5)
    assert torch.allclose(shared.weight.grad, w_s.grad, atol=1e-5)


def test_shared_basis_conv_refuses_a_basis_it_cannot_share():
    with pytest.raises(ValueError, match="stride 1"):
        SharedBasisConv2d(8, 1, torch.nn.Conv2d(8, 4, 3, stride=2, padding=1, bias=False))
    with pytest.raises(ValueError, match="no bias"):
        SharedBasisConv2d(8, 1, torch.nn.Conv2d(8, 4, 3, padding=1))
    with pytest.raises(ValueError, match="cannot form 4 groups"):
        SharedBasisConv2d(8, 2, torch.nn.Conv2d(8, 4, 3, padding=1, bias=False), unique_groups=4)


def test_a_shared_basis_is_one_tensor_that_every_block_updates():
    torch.manual_seed(0)
    model = compactnets.create_model("resnet32_s16u1_cifar10")
    state = model.state_dict()
    assert [k for k in state if "shared_basis" in k] == [f"shared_basis_{g}.weight" for g in (1, 2, 3)]
    for g in (1, 2, 3):
        basis = getattr(model, f"shared_basis_{g}")
        users = [b for b in getattr(model, f"layer{g}") if isinstance(b, BasisBlock)]
        assert len(users) == 4
        assert all(b.basis_conv1.shared is basis and b.basis_conv2.shared is basis for b in users)
        assert sum(p is basis.weight for p in model.parameters()) == 1

    # Reference: every conv gets a private copy of its basis; the shared tensor's gradient is their sum.
    private = copy.deepcopy(model)
    for m in private.modules():
        if isinstance(m, SharedBasisConv2d):
            refer_to(m, "shared", copy.deepcopy(m.shared))
    x = torch.randn(4, 3, 32, 32)
    model(x).square().mean().backward()
    private(x).square().mean().backward()
    for g in (1, 2, 3):
        grads = [
            m.shared.weight.grad for m in getattr(private, f"layer{g}").modules() if isinstance(m, SharedBasisConv2d)
        ]
        assert len(grads) == 8 and all(gr.abs().sum() > 0 for gr in grads)
        assert torch.allclose(getattr(model, f"shared_basis_{g}").weight.grad, sum(grads), rtol=1e-4, atol=1e-7)
        assert getattr(private, f"shared_basis_{g}").weight.grad is None  # no private copy reaches it


# --- the orthogonality regulariser ------------------------------------------------------------------------


def test_basis_similarity_by_hand():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    # S S^T - I = [[0, 1], [1, 1]]: 3 over 4 entries
    total, count = basis_similarity([s])
    assert (total.item(), count) == (3.0, 4)
    total, count = basis_similarity([s[:1], s[1:]])  # two bases regularised jointly
    assert (total.item(), count) == (3.0, 4)
    # rows [S; U1; U2] with U1 = [2, 0], U2 = [0, 0]: shared rows against all rows
    # [[0, 1, 2, 0], [1, 1, 2, 0]] squared -> 11 over 8, plus each unique basis alone: (4 - 1)^2 + (0 - 1)^2 = 10 over 2
    u1, u2 = torch.tensor([2.0, 0.0]).view(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    total, count = basis_similarity([s], [u1, u2])
    assert (total.item(), count) == (21.0, 10)


def _official_regulariser(model, cifar10):
    """train_cifar10.py / train_cifar100.py / train_ilsvrc.py: rows [shared...; unique of blocks 1..n-1], the shared
    rows against all rows plus each unique basis' own block, averaged over all groups' selected entries."""
    sd = model.state_dict()
    total, count = 0.0, 0
    for g in range(1, model.num_groups + 1):
        shared = [v for k, v in sd.items() if k.startswith(f"shared_basis_{g}")]
        unique = [v for k, v in sd.items() if k.startswith(f"layer{g}.") and ".basis_conv" in k] if cifar10 else []
        rows = torch.cat(shared + unique).flatten(1).double()
        n_shared = sum(s.shape[0] for s in shared)
        d = (rows @ rows.T - torch.eye(len(rows), dtype=rows.dtype)) ** 2
        total, count = total + d[:n_shared].sum(), count + n_shared * len(rows)
        start = n_shared
        for u in unique:
            total, count = total + d[start : start + len(u), start : start + len(u)].sum(), count + len(u) ** 2
            start += len(u)
    return total / count


@pytest.mark.parametrize("name", ["resnet32_s16u1_double_cifar10", "resnet32_s8u1_cifar10", "resnet34_s8u1_cifar100"])
def test_regulariser_matches_the_official_selection(name):
    torch.manual_seed(1)
    model = compactnets.create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    expected = _official_regulariser(model, cifar10=name.endswith("cifar10"))
    assert abs(model.auxiliary_loss().item() - expected.item()) < 1e-5 * expected.item()


@pytest.mark.parametrize("name", sorted(NORMALISERS))
def test_regulariser_normaliser(name):
    assert compactnets.create_model(name).orthogonality_terms()[1] == NORMALISERS[name]


def test_official_init_and_the_regulariser_under_autocast():
    torch.manual_seed(0)
    model = compactnets.create_model("resnet56_s16u1_double_cifar10")
    # Section 3: ~3.3-3.4 at init, nearly all from the kaiming-initialised unique rows
    assert 3.0 < model.auxiliary_loss().item() < 3.8
    model.regularize_unique = False
    assert model.auxiliary_loss().item() < 1e-10  # the two bases of a group are jointly orthonormal
    model.regularize_unique = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision = model.auxiliary_loss()
    assert low_precision.dtype == torch.float32 and low_precision.item() == model.auxiliary_loss().item()


# --- the official state-dict layout and conversion --------------------------------------------------------


def _official_resnet(blocks, widths, shared, unique, double, stem, shortcut, num_classes, seed=0):
    """A state dict in the layout of Net_RL2's ResNet_{Single,Double}Shared.state_dict(): each block registers the
    shared bases it uses, so they appear again (the same tensor) before its own keys."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(key, shape):
        sd[key] = torch.randn(shape, generator=g) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5

    def bn(key, n):
        sd[f"{key}.weight"] = torch.rand(n, generator=g) + 0.5
        sd[f"{key}.bias"] = torch.randn(n, generator=g) * 0.1
        sd[f"{key}.running_mean"] = torch.randn(n, generator=g) * 0.1
        sd[f"{key}.running_var"] = torch.rand(n, generator=g) + 0.5
        sd[f"{key}.num_batches_tracked"] = torch.tensor(100)

    conv("conv1.weight", (widths[0], 3, 7, 7) if stem == "imagenet" else (widths[0], 3, 3, 3))
    bn("bn1", widths[0])
    in_chs = widths[0]
    for group, (n, c) in enumerate(zip(blocks, widths, strict=True), 1):
        s, u = shared * 2 ** (group - 1), unique * 2 ** (group - 1)
        names = [f"shared_basis_{group}_1", f"shared_basis_{group}_2"] if double else [f"shared_basis_{group}"]
        for name in names:
            conv(f"{name}.weight", (s, c, 3, 3))
        p = f"layer{group}.0"
        conv(f"{p}.conv1.weight", (c, in_chs, 3, 3))
        bn(f"{p}.bn1", c)
        conv(f"{p}.conv2.weight", (c, c, 3, 3))
        bn(f"{p}.bn2", c)
        if shortcut == "B" and (group > 1 or in_chs != c):
            conv(f"{p}.shortcut.0.weight", (c, in_chs, 1, 1))
            bn(f"{p}.shortcut.1", c)
        for i in range(1, n):
            p = f"layer{group}.{i}"
            if double:
                sd[f"{p}.shared_basis_1.weight"] = sd[f"{names[0]}.weight"]
                sd[f"{p}.shared_basis_2.weight"] = sd[f"{names[1]}.weight"]
            else:
                sd[f"{p}.shared_basis.weight"] = sd[f"{names[0]}.weight"]
            for j in (1, 2):
                conv(f"{p}.basis_conv{j}.weight", (u, c, 3, 3))
                bn(f"{p}.basis_bn{j}", u + s)
                conv(f"{p}.coeff_conv{j}.weight", (c, u + s, 1, 1))
                bn(f"{p}.bn{j}", c)
        in_chs = c
    sd["fc.weight"] = torch.randn(num_classes, widths[-1], generator=g) * 0.1
    sd["fc.bias"] = torch.randn(num_classes, generator=g) * 0.1
    return sd


def _reference_forward(sd, x, blocks, stem, double):
    """The official ResNet forward written out with functional ops, each block running the bases it holds."""
    sd = {k: v.double() for k, v in sd.items()}

    def bn(h, key):
        w, b, mean, var = (sd[f"{key}.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
        return F.batch_norm(h, mean, var, w, b, training=False, eps=1e-5)

    imagenet = stem == "imagenet"
    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2 if imagenet else 1, padding=3 if imagenet else 1), "bn1"))
    if imagenet:
        x = F.max_pool2d(x, 3, 2, 1)
    for group, n in enumerate(blocks, 1):
        for i in range(n):
            p = f"layer{group}.{i}"
            if i == 0:
                stride = 1 if group == 1 else 2
                out = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
                out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
                if f"{p}.shortcut.0.weight" in sd:
                    shortcut = bn(F.conv2d(x, sd[f"{p}.shortcut.0.weight"], stride=stride), f"{p}.shortcut.1")
                elif out.shape != x.shape:  # option A: subsample and zero-pad planes/4 channels on each side
                    pad = out.shape[1] // 4
                    shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
                else:
                    shortcut = x
            else:
                bases = [f"{p}.shared_basis_1", f"{p}.shared_basis_2"] if double else [f"{p}.shared_basis"] * 2
                out = x
                for j, basis in zip((1, 2), bases, strict=True):
                    unique = F.conv2d(out, sd[f"{p}.basis_conv{j}.weight"], padding=1)
                    out = torch.cat([unique, F.conv2d(out, sd[f"{basis}.weight"], padding=1)], 1)
                    out = bn(F.conv2d(bn(out, f"{p}.basis_bn{j}"), sd[f"{p}.coeff_conv{j}.weight"]), f"{p}.bn{j}")
                    out = F.relu(out) if j == 1 else out
                shortcut = x
            x = F.relu(out + shortcut)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


_CIFAR10 = dict(widths=(16, 32, 64), stem="cifar", shortcut="A", num_classes=10)
_RESNET34 = dict(blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), shortcut="B")
OFFICIAL_RESNETS = {  # registered model -> constructor of the official layout; input size
    "resnet32_s8u1_cifar10": (dict(blocks=(5,) * 3, shared=8, unique=1, double=False, **_CIFAR10), 32),
    "resnet32_s16u1_double_cifar10": (dict(blocks=(5,) * 3, shared=16, unique=1, double=True, **_CIFAR10), 32),
    "resnet34_s8u1_cifar100": (dict(shared=8, unique=1, double=False, stem="cifar", num_classes=100, **_RESNET34), 32),
    "resnet34_s32u1_double": (
        dict(shared=32, unique=1, double=True, stem="imagenet", num_classes=1000, **_RESNET34),
        64,
    ),
}


def test_official_layout_of_resnet56_s16u1_double():
    """Section 5: 674 keys over 317 parameter tensors; the model keeps the official names and order, once each."""
    official = _official_resnet(blocks=(9,) * 3, shared=16, unique=1, double=True, **_CIFAR10)
    assert len(official) == 674
    params = {id(v) for k, v in official.items() if not k.endswith(("running_mean", "running_var", "batches_tracked"))}
    assert len(params) == 317
    assert list(official)[228:230] == ["shared_basis_2_1.weight", "shared_basis_2_2.weight"]
    model = compactnets.create_model("resnet56_s16u1_double_cifar10")
    aliases = model.official_aliases()
    assert len(aliases) == 6 * 8 and aliases["layer3.8.shared_basis_2.weight"] == "shared_basis_3_2.weight"
    assert list(model.state_dict()) == [k for k in official if k not in aliases]


def _save_official(path, state_dict, data_parallel, legacy_format, monkeypatch):
    """As the official scripts save: {'net_state_dict', 'optimizer_state_dict', 'acc' (a CUDA tensor), 'epoch'}."""
    if data_parallel:  # train_ilsvrc.py wraps the model in DataParallel
        state_dict = {f"module.{k}": v for k, v in state_dict.items()}
    checkpoint = {
        "net_state_dict": state_dict,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
        "acc": torch.tensor(93.7),
        "epoch": 212,
    }
    with monkeypatch.context() as m:  # every storage recorded as CUDA, as a GPU run writes them
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", sorted(OFFICIAL_RESNETS))
def test_convert_official_checkpoint_matches_the_official_forward(name, run_cli, tmp_path, monkeypatch):
    arch, size = OFFICIAL_RESNETS[name]
    official = _official_resnet(**arch)
    imagenet = arch["stem"] == "imagenet"
    src, dst = tmp_path / "official.pth", tmp_path / "converted.pth"
    _save_official(src, official, data_parallel=imagenet, legacy_format=imagenet, monkeypatch=monkeypatch)
    status, out, err = run_cli("convert", "--family", "shared-bases", "--model", name, src, dst)
    assert status == 0, err
    model = load_model(dst)
    assert model.pretrained_cfg["architecture"] == name and model.num_classes == arch["num_classes"]
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    expected = _reference_forward(official, x, arch["blocks"], arch["stem"], arch["double"])
    with torch.no_grad():
        logits = model.double()(x)
    assert torch.allclose(logits, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())
    regulariser = _official_regulariser(model, cifar10=arch["shortcut"] == "A")
    assert abs(model.auxiliary_loss().item() - regulariser.item()) < 1e-9 * regulariser.item()


def test_converted_checkpoint_evaluates(run_cli, tmp_path, monkeypatch, cifar10_pickles):
    arch, _ = OFFICIAL_RESNETS["resnet32_s16u1_double_cifar10"]
    _save_official(tmp_path / "o.pth", _official_resnet(**arch), False, False, monkeypatch)
    args = ("--family", "shared-bases", "--model", "resnet32_s16u1_double_cifar10", tmp_path / "o.pth")
    assert run_cli("convert", *args, tmp_path / "c.pth")[0] == 0
    status, out, err = run_cli("eval", "--checkpoint", tmp_path / "c.pth", "--data", cifar10_pickles, "--json")
    assert status == 0, err
    assert '"param_count": 245642' in out and '"count": 4' in out


def _convert_official(run_cli, tmp_path, monkeypatch, official_name, model_name):
    """Convert an official checkpoint in the layout of ``official_name`` into ``model_name``: (status, stderr)."""
    arch, _ = OFFICIAL_RESNETS[official_name]
    _save_official(tmp_path / f"{official_name}.pth", _official_resnet(**arch), False, False, monkeypatch)
    args = ("--family", "shared-bases", "--model", model_name, tmp_path / f"{official_name}.pth", tmp_path / "out")
    status, _, err = run_cli("convert", *args)
    assert not (tmp_path / "out").exists()
    return status, err


def test_convert_refuses_checkpoints_of_other_shapes_with_the_key(run_cli, tmp_path, monkeypatch):
    status, err = _convert_official(run_cli, tmp_path, monkeypatch, "resnet32_s8u1_cifar10", "resnet32_s16u1_cifar10")
    assert status == 2
    assert "'shared_basis_1.weight' has shape (8, 16, 3, 3) in the checkpoint but (16, 16, 3, 3)" in err
    # a DoubleShared checkpoint into a SingleShared model
    official = "resnet32_s16u1_double_cifar10"
    status, err = _convert_official(run_cli, tmp_path, monkeypatch, official, "resnet32_s16u1_cifar10")
    assert status == 2 and "missing keys (first: 'shared_basis_1.weight')" in err
    assert "unexpected keys (first: 'shared_basis_1_1.weight')" in err


def test_convert_refuses_copies_of_a_basis_that_differ():
    arch, _ = OFFICIAL_RESNETS["resnet32_s8u1_cifar10"]
    official = _official_resnet(**arch)
    official["layer2.3.shared_basis.weight"] = official["layer2.3.shared_basis.weight"] + 1e-3
    model = compactnets.create_model("resnet32_s8u1_cifar10")
    with pytest.raises(CheckpointError, match=r"'layer2.3.shared_basis.weight' and 'layer2.1.shared_basis.weight'"):
        checkpoint_filter_fn(official, model)


def test_densenet_block_4_runs_its_own_basis_and_converts_the_official_reuse():
    torch.manual_seed(0)
    model = compactnets.create_model("densenet121_s16u1_cifar100")
    for i, n in enumerate((6, 12, 24, 16)):
        block = model.features.get_submodule(f"dense_block_layer_{i}")
        assert len(block) == n and all(
            layer.basis_conv2.shared is getattr(model, f"shared_basis_{i + 1}") for layer in block
        )
    keys = list(model.state_dict())
    official_names = (
        "features.dense_block_layer_3.bottle_neck_layer_15.coeff_conv2.weight",
        "features.transition_layer_2.down_sample.1.weight",
        "features.bn.weight",
        "shared_basis_4.weight",
        "linear.weight",
    )
    for key in official_names:
        assert key in keys
    assert keys.index("features.bn.weight") < keys.index("shared_basis_1.weight") < keys.index("linear.weight")

    # The official model registers each basis under every bottleneck; its dense block 4 holds shared_basis_3.
    bases = {f"shared_basis_{i}.weight": torch.randn(16, 128, 3, 3) for i in (1, 2, 3, 4)}
    official = {}
    for key, value in model.state_dict().items():
        if key.endswith(".bn0.weight"):
            block = int(key.split("dense_block_layer_")[1][0])
            official[key.replace("bn0.weight", "shared_basis.weight")] = bases[
                f"shared_basis_{min(block + 1, 3)}.weight"
            ]
        official[key] = bases.get(key, torch.randn_like(value.float()).to(value.dtype))
    with pytest.warns(UserWarning, match="official 'shared_basis_4.weight' is not the basis its blocks run"):
        converted = checkpoint_filter_fn(official, model)
    model.load_state_dict(converted)
    assert torch.equal(model.shared_basis_4.weight, bases["shared_basis_3.weight"])
    assert torch.equal(model.shared_basis_3.weight, bases["shared_basis_3.weight"])


def test_resnext_ranks_must_be_multiples_of_four():
    with pytest.raises(ValueError, match="multiples of 4, got 16 and 1"):
        compactnets.create_model("resnext50_32x4d_s64u4_cifar100", shared_rank=16, unique_rank=1)


def test_mobilenetv2_shares_the_expansion_conv_of_later_blocks():
    model = compactnets.create_model("mobilenetv2_shared_cifar100")
    for k, basis in zip((3, 4, 5, 6), (1, 2, 3, 4), strict=True):
        stage, shared = getattr(model, f"stage{k}"), getattr(model, f"shared_basis_{basis}")
        assert stage[0].conv1 is not shared and all(block.conv1 is shared for block in stage[1:])
    assert "stage3.1.shared_basis1.weight" in model.official_aliases()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


# --- training and recipes ---------------------------------------------------------------------------------


def test_training_adds_the_weighted_regulariser_and_logs_it(run_cli, tmp_path):
    common = ["--model", "resnet32_s16u1_double_cifar10", "--train-limit", "64", "--batch-size", "32", "--epochs", "1",
              "--eval-every", "0", "--no-progress", "--deterministic", "--lr", "0.1"]  # fmt: skip
    regularisers = {}
    for weight in ("0", "100"):
        out = tmp_path / weight
        assert run_cli("train", *common, "--aux-loss-weight", weight, "--output", out)[0] == 0
        with open(out / "log.csv", newline="") as f:
            logged = float(next(csv.DictReader(f))["aux_loss"])
        assert 1.0 < logged < 5.0  # the value at the official init, ~3 (plain, not weighted)
        model = load_model(out / "last.pth")
        regularisers[weight] = model.auxiliary_loss().item()
    assert regularisers["100"] < 0.95 * regularisers["0"]


def _recipe(name):
    parser = add_train_args(argparse.ArgumentParser())
    return argparse.Namespace(**{**vars(parser.parse_args([])), **recipe_defaults(parser, name)})


@pytest.mark.parametrize(
    "recipe,epochs,drops",
    [("shared_bases_cifar10", 300, (150, 225)), ("shared_bases_resnet34_imagenet", 150, (60, 100, 140)),
     ("shared_bases_mobilenetv2_imagenet", 300, (150, 225, 285))],
)  # fmt: skip
def test_recipes_drop_the_lr_after_the_official_epochs(recipe, epochs, drops):
    """Net_RL2 sets lr = 0.1 x 0.1^(number of milestones m < epoch) at the start of 1-based epoch `epoch`."""
    args = _recipe(recipe)
    assert args.epochs == epochs and args.aux_loss_weight == 10 and args.momentum == 0.9 and not args.nesterov
    factor = lr_factor_fn(args, iters_per_epoch=1)
    official = [0.1 * 0.1 ** sum(epoch > m for m in drops) for epoch in range(1, epochs + 1)]
    assert [args.lr * factor(e) for e in range(epochs)] == pytest.approx(official, rel=1e-12)


def test_cifar100_recipe_restarts_from_the_best_checkpoint_twice():
    args = _recipe("shared_bases_cifar100")
    assert args.epochs == 300 and args.sched == "constant" and args.aux_loss_weight == 10
    assert [(p["epochs"], p["lr"], p.get("restart_from_best", False)) for p in args.phases] == [
        (150, 0.1, False),
        (75, 0.01, True),
        (75, 0.001, True),
    ]
