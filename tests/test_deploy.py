"""Inference form: BN folding over every registered model, what must not fold, and WeightNet's static forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compactnets
from compactnets.deploy import example_input, fold_batch_norms, inference_form
from compactnets.layers import BinaryConv2d, WeightNet, WeightNetDW
from compactnets.layers.fold import find_conv_bn_pairs
from compactnets.layers.weightnet import GatedPointwise, MixtureConv2d


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms, so that folding is exercised for real."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def small_input_size(model: nn.Module) -> tuple[int, int, int]:
    """ImageNet-size models at 64x64 (every model of the library takes it), CIFAR models as they are."""
    c, h, w = model.pretrained_cfg["input_size"]
    return (c, 64, 64) if h > 64 else (c, h, w)


# The slowest models to trace and export on a 2-core CI machine: marked slow (still run by `make test`).
SLOW_MODELS = {"densenet121_s16u1_cifar100", "resnext50_32x4d_s64u4_cifar100", "resnet34_s48u1_double"}


def every_model():
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in compactnets.list_models()]


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", every_model())
def test_inference_form_equals_the_model_for_every_model(name):
    model = compactnets.create_model(name).eval()
    randomize_bn(model)
    x = example_input(model, 2, small_input_size(model))
    form = inference_form(model, x)
    with torch.no_grad():
        expected, got = model(x), form(x)
    # float rounding only (deep random-weight nets such as ResNet56 reach a few 1e-6): the export check's limit
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert not form.training and form.pretrained_cfg == model.pretrained_cfg
    assert _bn_count(form) < _bn_count(model)  # every model of the library has a conv -> BN pair
    assert find_conv_bn_pairs(form, x) == []  # nothing foldable is left
    assert _bn_count(model) > 0 and not any(p.requires_grad for p in form.parameters())


class _BatchNormReLU(nn.BatchNorm2d):
    """A BN subclass that does more than normalise (as timm's BatchNormAct2d): never folded."""

    def forward(self, x):
        return torch.relu(super().forward(x))


class _Block(nn.Module):
    """conv -> BN (folds); conv -> BN whose conv output also feeds a sum (must not fold); conv -> in-place ReLU
    -> BN (must not fold: the BN reads the same tensor object, changed); binary conv -> BN (kept); conv -> a BN
    subclass (kept); linear -> BN1d (folds)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.conv3, self.bn5 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.binary, self.bn3 = BinaryConv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc, self.bn4 = nn.Linear(4, 5), nn.BatchNorm1d(5)
        self.conv4, self.bn6 = nn.Conv2d(4, 4, 1), _BatchNormReLU(4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        x = self.bn2(y) + y
        x = self.bn5(torch.relu_(self.conv3(x)))
        x = self.bn3(self.binary(torch.sign(x)))
        x = self.bn6(self.conv4(x))
        return self.bn4(self.fc(x.mean((2, 3))))


def test_folding_follows_the_data_flow():
    model = _Block().eval()
    randomize_bn(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    assert fold_batch_norms(model, x) == [("conv1", "bn1"), ("fc", "bn4")]
    assert isinstance(model.bn1, nn.Identity) and isinstance(model.bn4, nn.Identity)
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in (model.bn2, model.bn3, model.bn5, model.bn6))
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_shared_basis_becomes_one_conv_per_layer():
    model = compactnets.create_model("resnet32_s8u1_cifar10").eval()
    randomize_bn(model)
    form = inference_form(model)
    assert not any(type(m).__name__ == "SharedBasisConv2d" for m in form.modules())
    assert any(type(m).__name__ == "SharedBasisConv2d" for m in model.modules())  # the model is left alone


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).eval()
    randomize_bn(bn, seed=channels)
    return bn


@pytest.mark.parametrize(
    "layer, x, form",
    [
        (WeightNet(24, 48, 1, gate_chs=16), (24, 8, 8), GatedPointwise),  # M = G = 2, the released models
        (WeightNet(24, 48, 1, gate_chs=16, M=8, G=2), (24, 8, 8), GatedPointwise),  # 4 gates per part
        (WeightNet(24, 48, 1, gate_chs=16, M=8, G=1), (24, 8, 8), GatedPointwise),
        (WeightNet(12, 20, 3, stride=2, gate_chs=16, M=4, G=2), (12, 9, 9), MixtureConv2d),  # dense k x k
        (WeightNet(24, 48, 1, stride=2, gate_chs=16), (24, 8, 8), MixtureConv2d),
        (WeightNetDW(24, 3, stride=2, gate_chs=16), (24, 8, 8), MixtureConv2d),
        (WeightNetDW(24, 5, gate_chs=16, M=4, G=2), (24, 8, 8), MixtureConv2d),  # 2 terms per channel
    ],
)
def test_weightnet_static_forms_equal_the_per_sample_conv_and_bn(layer, x, form):
    torch.manual_seed(0)
    for p in layer.parameters():
        nn.init.normal_(p)
    bn = _bn(layer.out_chs if isinstance(layer, WeightNet) else layer.chs)
    x, x_gap = torch.randn(3, *x), torch.randn(3, 16, 1, 1)
    static = layer.mixture(bn)
    assert isinstance(static, form)
    with torch.no_grad():
        expected = bn(layer(x, x_gap))
        assert (static(x, x_gap) - expected).abs().max() <= 1e-5 * expected.abs().max()
        assert torch.allclose(layer.mixture()(x, x_gap), layer(x, x_gap), rtol=1e-4, atol=1e-4)


def test_weightnet_inference_form_has_no_per_sample_generators():
    model = compactnets.create_model("shufflenet_v2_x0_5_wn1x").eval()
    form = inference_form(model)
    assert not any(isinstance(m, (WeightNet, WeightNetDW)) for m in form.modules())
    assert any(isinstance(m, (WeightNet, WeightNetDW)) for m in model.modules())


def test_micronet_inference_form_is_the_fused_model():
    form = inference_form(compactnets.create_model("micronet_m0_cifar"))
    assert type(form).__name__ == "FusedMicroNet"
