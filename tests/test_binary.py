"""XNOR-Net block semantics against direct formulas (xnor-net.md section 2), and the official layout.

The official code (onion-rain/MCTS @497eebd) is not a dependency; these tests pin the same semantics with an
independent functional formulation: forward in train and eval mode, and the gradients of every input.
"""

import pytest
import torch
import torch.nn.functional as F

import compactnets
from compactnets.layers import BinaryConv2d, binarize_activation, channel_shuffle, xnor_weight
from compactnets.models.nin import BinaryConvBlock


@pytest.fixture(autouse=True)
def _float64():
    """Exact comparisons in double precision."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_activation_sign_and_straight_through_gradient():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = binarize_activation(x)
    assert y.tolist() == [-1, -1, -1, 0, 1, 1, 1]  # torch.sign: sign(0) = 0
    g = torch.arange(1.0, 8.0)
    (y * g).sum().backward()
    # gradient passes only where |x| < 1 (the official code zeroes x >= 1 and x <= -1)
    assert x.grad.tolist() == [0, 0, 3, 4, 5, 0, 0]


@pytest.mark.parametrize("clip", [True, False])
def test_straight_through_function_equals_the_scriptable_formulation(clip):
    """Training uses an autograd Function (one pass each way), TorchScript the detach formulation: same values and
    bit-identical gradients, the boundaries |x| = 1 and x = 0 included, in float32 as in training."""
    from compactnets.layers.binary import _sign_straight_through, binary_sign

    torch.manual_seed(2)
    base = torch.cat([torch.randn(4000, dtype=torch.float32) * 1.5, torch.tensor([-1.0, 1.0, 0.0, -0.0])])
    g = torch.randn_like(base)
    grads, values = [], []
    for fn in (binary_sign, _sign_straight_through):
        x = base.clone().requires_grad_()
        y = fn(x, clip)
        (y * g).sum().backward()
        values.append(y.detach())
        grads.append(x.grad)
    assert torch.equal(values[0], values[1]) and torch.equal(values[0], torch.sign(base))
    assert torch.equal(grads[0], grads[1])
    assert torch.equal(grads[0], g * (base.abs() < 1) if clip else g)


def test_scripted_model_trains_with_the_same_gradients():
    torch.manual_seed(3)
    block = BinaryConvBlock(4, 6, 3).float()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float32)
    grads = []
    for module in (block, torch.jit.script(block)):
        block.zero_grad()
        module(x).square().sum().backward()
        grads.append([p.grad.clone() for p in block.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def _reference_weight(w):
    centred = w - w.mean(dim=1, keepdim=True)
    wc = centred.clamp(-1, 1)
    alpha = wc.abs().flatten(1).mean(dim=1).view(-1, 1, 1, 1)
    return wc, alpha, torch.sign(wc) * alpha


def test_xnor_weight_forward_formula():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3) * 0.8
    _, _, expected = _reference_weight(w)
    assert torch.equal(xnor_weight(w), expected)
    # every output channel is +-alpha (or 0)
    out = xnor_weight(w)
    for o in range(6):
        assert set(out[o].abs().unique().tolist()) <= {0.0, out[o].abs().max().item()}


def test_xnor_weight_gradient_formula():
    """dL/dW = P^T[1{|W - mean| <= 1} * (alpha*G + sign(Wc) * mean(sign(Wc)*G))], P^T removing the dim-1 mean."""
    torch.manual_seed(1)
    w = (torch.randn(5, 4, 3, 3) * 0.9).requires_grad_()
    g = torch.randn(5, 4, 3, 3)
    (xnor_weight(w) * g).sum().backward()

    with torch.no_grad():
        wc, alpha, _ = _reference_weight(w)
        centred = w - w.mean(dim=1, keepdim=True)
        s = torch.sign(wc)
        inner = alpha * g + s * (s * g).flatten(1).mean(dim=1).view(-1, 1, 1, 1)
        masked = inner * (centred.abs() <= 1)
        expected = masked - masked.mean(dim=1, keepdim=True)
    assert torch.allclose(w.grad, expected, atol=1e-12)


def test_uncentred_variant():
    w = torch.randn(3, 2, 1, 1)
    conv = BinaryConv2d(2, 3, 1, center=False)
    conv.weight.data.copy_(w)
    assert torch.equal(conv.binary_weight(), torch.sign(w) * w.abs().mean(dim=(1, 2, 3), keepdim=True))


def _ste(value, x, mask=None):
    """``value`` forward; gradient 1 (or ``mask``) w.r.t. ``x`` backward: the detach formulation of an STE."""
    passed = x if mask is None else torch.where(mask, x, x.detach())
    return passed + (value - passed).detach()


def _reference_block(x, p, training, groups, shuffle_groups, padding):
    """[shuffle] -> BN(in) -> sign -> conv(sign(Wc)*alpha) + bias -> ReLU, written with functionals."""
    if shuffle_groups > 1:
        b, c, h, w = x.shape
        x = x.view(b, shuffle_groups, c // shuffle_groups, h, w).transpose(1, 2).reshape(b, c, h, w)
    x = F.batch_norm(x, p["rm"], p["rv"], p["gamma"], p["beta"], training=training, momentum=0.1, eps=1e-5)
    x = _ste(torch.sign(x), x, mask=x.abs() < 1)
    wc, alpha, _ = _reference_weight(p["w"])
    wb = _ste(torch.sign(wc), wc) * alpha
    return F.relu(F.conv2d(x, wb, p["bias"], padding=padding, groups=groups))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("groups,shuffle_groups,kernel", [(1, 1, 3), (4, 2, 1), (2, 4, 3)])
def test_binary_block_matches_reference(training, groups, shuffle_groups, kernel):
    torch.manual_seed(2)
    block = BinaryConvBlock(8, 12, kernel, groups=groups, shuffle_groups=shuffle_groups).train(training)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.2, 0.2)
        block.norm.running_mean.uniform_(-0.1, 0.1)
        block.norm.running_var.uniform_(0.5, 2.0)
    p = {
        "w": block.conv.weight.detach().clone().requires_grad_(),
        "bias": block.conv.bias.detach().clone(),
        "gamma": block.norm.weight.detach().clone(),
        "beta": block.norm.bias.detach().clone(),
        "rm": block.norm.running_mean.clone(),
        "rv": block.norm.running_var.clone(),
    }
    x = torch.randn(3, 8, 6, 6, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    expected = _reference_block(x_ref, p, training, groups, shuffle_groups, kernel // 2)
    out = block(x)
    assert torch.allclose(out, expected, atol=1e-12)
    # running statistics move the same way in train mode
    assert torch.allclose(block.norm.running_mean, p["rm"], atol=1e-12)
    # gradient of the latent weight
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    assert torch.allclose(block.conv.weight.grad, p["w"].grad, atol=1e-10)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-10)
    assert x.grad.abs().sum() > 0


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


# Official state-dict layout of nin_xnornet at 497eebd (xnor-net.md section 1): binary blocks register norm before
# conv and the pools (3, 7) have no keys.
_OFFICIAL_NIN_XNORNET = [
    ("sequential.0.conv", (192, 3, 5, 5), "conv"), ("sequential.0.norm", 192, "bn"),
    ("sequential.1.norm", 192, "bn"), ("sequential.1.conv", (160, 192, 1, 1), "conv"),
    ("sequential.2.norm", 160, "bn"), ("sequential.2.conv", (96, 160, 1, 1), "conv"),
    ("sequential.4.norm", 96, "bn"), ("sequential.4.conv", (192, 96, 3, 3), "conv"),
    ("sequential.5.norm", 192, "bn"), ("sequential.5.conv", (192, 192, 1, 1), "conv"),
    ("sequential.6.norm", 192, "bn"), ("sequential.6.conv", (192, 192, 1, 1), "conv"),
    ("sequential.8.norm", 192, "bn"), ("sequential.8.conv", (192, 192, 3, 3), "conv"),
    ("sequential.9.norm", 192, "bn"), ("sequential.9.conv", (192, 192, 1, 1), "conv"),
    ("sequential.10.conv", (10, 192, 1, 1), "conv"), ("sequential.10.norm", 10, "bn"),
]  # fmt: skip


def _official_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape, kind in _OFFICIAL_NIN_XNORNET:
        if kind == "conv":
            sd[f"{name}.weight"] = torch.randn(shape, generator=g) * 0.2
            sd[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.1
        else:
            sd[f"{name}.weight"] = torch.rand(shape, generator=g) + 0.5
            sd[f"{name}.bias"] = torch.randn(shape, generator=g) * 0.1
            sd[f"{name}.running_mean"] = torch.randn(shape, generator=g) * 0.1
            sd[f"{name}.running_var"] = torch.rand(shape, generator=g) + 0.5
            sd[f"{name}.num_batches_tracked"] = torch.tensor(100)
    return sd


def _reference_nin_xnornet_eval(x, sd):
    def bn(x, n):
        return F.batch_norm(x, sd[f"{n}.running_mean"], sd[f"{n}.running_var"], sd[f"{n}.weight"], sd[f"{n}.bias"])

    def fp(x, i, pad):
        n = f"sequential.{i}"
        return F.relu(bn(F.conv2d(x, sd[f"{n}.conv.weight"], sd[f"{n}.conv.bias"], padding=pad), f"{n}.norm"))

    def binary(x, i, pad):
        n = f"sequential.{i}"
        _, _, wb = _reference_weight(sd[f"{n}.conv.weight"])
        return F.relu(F.conv2d(torch.sign(bn(x, f"{n}.norm")), wb, sd[f"{n}.conv.bias"], padding=pad))

    x = binary(binary(fp(x, 0, 2), 1, 0), 2, 0)
    x = F.max_pool2d(x, 3, 2, 1)
    x = binary(binary(binary(x, 4, 1), 5, 0), 6, 0)
    x = F.avg_pool2d(x, 3, 2, 1)
    x = fp(binary(binary(x, 8, 1), 9, 0), 10, 0)
    return F.avg_pool2d(x, 8).flatten(1)


def test_official_layout_loads_and_matches_reference_forward():
    sd = _official_state_dict()
    model = compactnets.create_model("nin_xnornet").double().eval()
    assert list(model.state_dict()) == list(sd)  # same names, same order
    model.load_state_dict(sd, strict=True)
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(model(x), _reference_nin_xnornet_eval(x, sd), atol=1e-10)
