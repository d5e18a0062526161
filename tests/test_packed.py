"""Packed binary deployment: bit packing, the xor-popcount kernel on every instruction-set path, the packed format,
and the packed runner against the float XNOR-Net models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, needs_shared_data

from compactnets import create_model
from compactnets.deploy import binary_kernel as bk
from compactnets.deploy.packed_export import export_packed
from compactnets.deploy.packed_format import PackedError
from compactnets.deploy.packed_runtime import load_packed, read_packed
from compactnets.layers import BinaryActivation

needs_kernel = pytest.mark.skipif(not bk.is_available(), reason="the binary kernel is not built")
PATHS = bk.supported_paths() if bk.is_available() else []
BIT_PATHS = [p for p in PATHS if bk.input_format(p) == "bits"]


def _signs(*shape, generator):
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


def _kernel_input(path, x, groups, padding):
    """+-1 floats NCHW as the path reads them: packed bits, or bytes inside a zero border of the conv's padding."""
    if bk.input_format(path) == "int8":
        return bk.pack_signs(x.permute(0, 2, 3, 1), 1, out_format="int8", out_padding=padding)
    return bk.pack_signs(x.permute(0, 2, 3, 1), groups)


def _with_bn_statistics(model, seed=0):
    """Trained-like BN statistics, a quarter of the scales negative (they flip thresholds and pooling to AND/OR)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                sign = torch.where(torch.rand(m.weight.shape, generator=g) < 0.25, -1.0, 1.0)
                m.weight.copy_(sign * (torch.rand(m.weight.shape, generator=g) + 0.5))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def test_sign_bits_round_trip():
    rng = np.random.default_rng(0)
    negative = rng.random((3, 5, 130)) < 0.5
    words = bk.pack_sign_bits(negative)
    assert words.shape == (3, 5, 3) and words.dtype == np.dtype("<u8")
    assert (words[..., 2] >> np.uint64(2)).max() == 0  # bits past channel 130 stay clear
    np.testing.assert_array_equal(bk.unpack_sign_bits(words, 130), negative)
    assert bk.pack_sign_bits(np.eye(1, 64, 5, dtype=bool))[0, 0] == 1 << 5  # channel c -> bit c


@needs_kernel
@pytest.mark.parametrize("path", BIT_PATHS)
def test_pack_signs_matches_reference_layout(path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 200, generator=g)
    x[0, 0, 0, :7] = 0.0  # sign(0) has no bit: it packs as -1
    bits = bk.pack_signs(x, groups=2, path=path)
    assert bits.shape == (2, 3, 4, 4)  # 2 groups x ceil(100 / 64) words
    expected = bk.pack_sign_bits((x <= 0).numpy().reshape(2, 3, 4, 2, 100)).reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(bits.numpy().view("<u8"), expected)


CONV_CASES = [  # (in, out, size, kernel, stride, padding, dilation, groups)
    (96, 192, 9, 3, 1, 1, 1, 1),
    (70, 130, 7, 3, 2, 1, 1, 1),
    (66, 36, 6, 3, 1, 1, 1, 2),
    (200, 48, 6, 5, 1, 2, 1, 4),
    (160, 96, 5, 1, 1, 0, 1, 1),
    (33, 17, 7, 3, 1, 2, 2, 1),
    (256, 32, 4, 3, 1, 1, 1, 16),
]


@needs_kernel
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_kernel_matches_conv2d_on_signs(path, case):
    cin, cout, size, k, stride, pad, dil, groups = case
    g = torch.Generator().manual_seed(sum(case))
    x = _signs(2, cin, size, size + 1, generator=g)
    w = _signs(cout, cin // groups, k, k, generator=g)
    reference = F.conv2d(x, w, stride=stride, padding=pad, dilation=dil, groups=groups)  # zero-padded signs
    weights = bk.prepare_weights((w < 0).permute(0, 2, 3, 1).numpy(), groups)
    bits = _kernel_input(path, x, groups, (pad, pad))
    geometry = ((k, k), (stride, stride), (pad, pad), (dil, dil))

    alpha, bias = torch.rand(cout, generator=g) + 0.1, torch.randn(cout, generator=g)
    out = bk.binary_conv(bits, weights, *geometry, alpha=alpha, bias=bias, relu=True, path=path, threads=3)
    expected = torch.relu(alpha[:, None, None] * reference + bias[:, None, None])  # same two float roundings
    assert torch.equal(out.permute(0, 3, 1, 2), expected)

    # Bits for the next layer, with thresholds of both directions and a channel order (a shuffle).
    threshold = torch.randint(-k * k * cin // groups, k * k * cin // groups, (cout,), generator=g).int()
    threshold_sign = torch.where(torch.rand(cout, generator=g) < 0.5, 1, -1).to(torch.int8)
    order = torch.randperm(cout, generator=g).int()
    next_groups = 2 if cout % 2 == 0 else 1
    out_bits = bk.binary_conv(bits, weights, *geometry, threshold=threshold, threshold_sign=threshold_sign,
                              out_order=order, out_groups=next_groups, path=path, threads=1)  # fmt: skip
    negative = threshold_sign[:, None, None] * reference[:, order.long()] < threshold[:, None, None]
    expected_bits = bk.pack_sign_bits(
        negative.permute(0, 2, 3, 1).numpy().reshape(*out_bits.shape[:3], next_groups, -1)
    )
    np.testing.assert_array_equal(out_bits.numpy().view("<u8"), expected_bits.reshape(out_bits.shape))

    # The same signs as +-1 bytes inside a zero border (the input of an AMX layer), written by every path.
    out_bytes = bk.binary_conv(bits, weights, *geometry, threshold=threshold, threshold_sign=threshold_sign,
                               out_order=order, out_format="int8", out_padding=(1, 2), path=path)  # fmt: skip
    assert torch.equal(out_bytes[:, 1:-1, 2:-2], torch.where(negative, -1, 1).to(torch.int8).permute(0, 2, 3, 1))
    border = out_bytes.clone()
    border[:, 1:-1, 2:-2] = 0
    assert not border.any()  # the zero padding of the next conv


@needs_kernel
def test_every_path_gives_the_same_bits():
    g = torch.Generator().manual_seed(5)
    x, w = _signs(1, 150, 8, 8, generator=g), _signs(64, 150, 3, 3, generator=g)
    weights = bk.prepare_weights((w < 0).permute(0, 2, 3, 1).numpy(), 1)
    ones, zeros = torch.ones(64), torch.zeros(64)
    if len(PATHS) < 2:
        pytest.skip("this CPU runs only the portable path")
    outs = [bk.binary_conv(_kernel_input(p, x, 1, (1, 1)), weights, (3, 3), padding=(1, 1), alpha=ones, bias=zeros,
                           path=p) for p in PATHS]  # fmt: skip
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@needs_kernel
@pytest.mark.parametrize("path", PATHS)
def test_bit_max_pool_is_max_pool_of_the_values(path, monkeypatch):
    g = torch.Generator().manual_seed(2)
    negative = torch.rand(2, 70, 9, 9, generator=g) < 0.5
    and_mask = torch.rand(70, generator=g) < 0.5
    bits = bk.pack_signs(torch.where(negative, -1.0, 1.0).permute(0, 2, 3, 1), 1)
    mask_words = torch.from_numpy(bk.pack_sign_bits(and_mask.numpy()[None]).reshape(-1).view(np.int64).copy())
    out = bk.bit_max_pool(bits, mask_words, (3, 3), (2, 2), (1, 1))
    # AND channels: the -1 bit survives only if every bit in the window is -1 (a min); OR channels: a max.
    neg = negative.float()
    pooled = torch.where(and_mask[None, :, None, None], -F.max_pool2d(-neg, 3, 2, 1), F.max_pool2d(neg, 3, 2, 1))
    expected = bk.pack_sign_bits(pooled.bool().permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(out.numpy().view("<u8"), expected)


def test_kernel_path_can_be_forced(monkeypatch):
    if not bk.is_available():
        pytest.skip("the binary kernel is not built")
    for path in PATHS:
        monkeypatch.setenv(bk.ENV_PATH, path)
        assert bk.forced_path() == path
        assert bk.kernel_path() == (path if path in BIT_PATHS else BIT_PATHS[-1])  # what a bits input runs
    monkeypatch.setenv(bk.ENV_PATH, "sse9")
    with pytest.raises(ValueError, match="unknown binary kernel path 'sse9'"):
        bk.kernel_path()
    monkeypatch.delenv(bk.ENV_PATH)
    bk.set_kernel_path("portable")
    try:
        assert bk.kernel_path() == "portable"
    finally:
        bk.set_kernel_path(None)
    assert bk.kernel_path() == BIT_PATHS[-1] and bk.forced_path() is None


def _sign_inputs(model, x):
    """Each BinaryActivation's input in the float model."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, a, o: seen.append(a[0].clone())) for m in model.modules()
             if isinstance(m, BinaryActivation)]  # fmt: skip
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


def _assert_same_as_float(model, runner, x):
    logits, pre_signs = _sign_inputs(model, x)
    out, packed_signs = runner.run_with_signs(x)
    assert len(packed_signs) == len(pre_signs) == 7
    for pre, got in zip(pre_signs, packed_signs, strict=True):
        differ = torch.where(pre > 0, 1.0, -1.0) != got
        # Only a pre-sign value within float rounding of zero may come out on the other side.
        assert differ.sum() == 0 or pre[differ].abs().max() < 1e-4
    assert torch.equal(runner(x), out)
    assert out.shape == logits.shape
    torch.testing.assert_close(out, logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(out.argmax(1), logits.argmax(1))


@pytest.fixture(scope="module")
def nin_packed(tmp_path_factory):
    """A nin_xnornet with trained-like BN statistics and its packed file (exported once for the tests below)."""
    torch.manual_seed(0)
    model = _with_bn_statistics(create_model("nin_xnornet"))
    path = tmp_path_factory.mktemp("packed") / "nin_xnornet.packed.safetensors"
    info = export_packed(model, path, class_names=[f"c{i}" for i in range(10)], check=bk.is_available())
    return model, path, info


def _check_runner(model, path, info, arch):
    assert info["binary_convs"] == 7 and info["check_error"] < 1e-5
    runner = load_packed(path)
    assert runner.pretrained_cfg["architecture"] == arch and runner.pretrained_cfg["input_size"] == (3, 32, 32)
    assert runner.pretrained_cfg["mean"] == model.pretrained_cfg["mean"] and runner.class_names[3] == "c3"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _assert_same_as_float(model, runner, x)
    return runner, x


@needs_kernel
def test_packed_nin_xnornet_matches_float_model(nin_packed):
    model, path, info = nin_packed
    runner, x = _check_runner(model, path, info, "nin_xnornet")
    runner.threads = 3  # threads and a forced path change nothing
    for path_name in PATHS:
        bk.set_kernel_path(path_name)
        try:
            torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=1e-4)
        finally:
            bk.set_kernel_path(None)


@needs_kernel
def test_packed_nin_gc_xnornet_matches_float_model(tmp_path):
    """Grouped binary convs, channel shuffles folded into output orders."""
    model = _with_bn_statistics(create_model("nin_gc_xnornet"), seed=1)
    path = tmp_path / "nin_gc_xnornet.packed.safetensors"
    info = export_packed(model, path, class_names=[f"c{i}" for i in range(10)])
    _check_runner(model, path, info, "nin_gc_xnornet")


@needs_kernel
@needs_shared_data
def test_packed_model_on_real_images(nin_packed):
    from compactnets.data import eval_transform, load_rgb_image

    model, path, _ = nin_packed
    runner = load_packed(path)
    transform = eval_transform(model.pretrained_cfg)
    files = sorted((SHARED_DATA / "cifar10" / "test").glob("*/*"))[::1000][:8]
    x = torch.stack([transform(load_rgb_image(str(f))) for f in files])
    _assert_same_as_float(model, runner, x)


def test_packed_file_layout_and_size(nin_packed):
    model, path, _ = nin_packed
    header, tensors = read_packed(path)
    ops = [n["op"] for n in header["nodes"]]
    assert ops.count("binary_conv2d") == 7 and ops.count("bit_max_pool2d") == 1 and ops.count("pack_signs") == 2
    conv4 = next(n for n in header["nodes"] if n["op"] == "binary_conv2d" and n["kernel_size"] == [3, 3])
    index = header["nodes"].index(conv4)
    assert tensors[f"{index}.weight_bits"].dtype == torch.uint8
    assert tuple(tensors[f"{index}.weight_bits"].shape) == (192, 96 * 9 // 8)  # one bit per weight
    # Unpacking the bits gives back the signs of the model's binary weight.
    w_hat = model.sequential[4].conv.binary_weight().detach()
    bits = np.unpackbits(tensors[f"{index}.weight_bits"].numpy(), axis=-1, bitorder="little").reshape(192, 3, 3, 96)
    assert torch.equal(torch.from_numpy(bits.astype(bool)), (w_hat < 0).permute(0, 2, 3, 1))
    binary_bytes = sum(t.numel() for k, t in tensors.items() if k.endswith("weight_bits"))
    binary_float_bytes = 4 * sum(m.weight.numel() for m in model.modules() if type(m).__name__ == "BinaryConv2d")
    assert binary_float_bytes / binary_bytes == 32
    assert path.stat().st_size < 200_000  # vs 2.7 MB of float32 parameters


def test_export_refuses_models_without_binary_blocks(tmp_path):
    with pytest.raises(PackedError, match="no binary convolution"):
        export_packed(create_model("nin_k3").eval(), tmp_path / "x.packed.safetensors")
    with pytest.raises(PackedError, match="not a compactnets packed model"):
        from safetensors.torch import save_file

        save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
        read_packed(tmp_path / "plain.safetensors")


def test_missing_kernel_is_one_clear_error(nin_packed, tmp_path, monkeypatch):
    model, path, _ = nin_packed
    monkeypatch.setattr(bk, "_library_path", lambda: None)
    bk._load.cache_clear()
    bk._supported_paths.cache_clear()
    try:
        with pytest.raises(bk.BinaryKernelUnavailable, match="binary kernel is not built.*build_ext --inplace"):
            load_packed(path)
        assert not bk.is_available()
        export_packed(model, tmp_path / "again.packed.safetensors")  # export needs no compiled code (no check)
        model(torch.randn(1, 3, 32, 32))  # the float path keeps working
    finally:
        monkeypatch.undo()
        bk._load.cache_clear()
        bk._supported_paths.cache_clear()


def _checkpoint(tmp_path):
    from compactnets.checkpoint import save_atomic

    model = _with_bn_statistics(create_model("nin_xnornet"), seed=4)
    path = tmp_path / "nin_xnornet.pth"
    save_atomic({"version": 1, "arch": "nin_xnornet", "state_dict": model.state_dict(),
                 "pretrained_cfg": dict(model.pretrained_cfg)}, path)  # fmt: skip
    return path


@needs_kernel
def test_cli_export_then_eval_and_predict_packed(run_cli, tmp_path):
    import json

    from PIL import Image

    ckpt, packed = _checkpoint(tmp_path), tmp_path / "m.packed.safetensors"
    status, out, _ = run_cli("export", "--checkpoint", ckpt, "--format", "packed", "--out", packed)
    assert status == 0 and "7 binary convs" in out and packed.is_file()
    results = []
    for source in (("--checkpoint", ckpt), ("--packed", packed)):
        status, out, err = run_cli("eval", *source, "--limit", "40", "--json")
        assert status == 0, err
        results.append(json.loads(out))
    assert results[1]["packed"] == str(packed) and results[1]["count"] == 40
    assert results[0]["top1"] == results[1]["top1"] and abs(results[0]["loss"] - results[1]["loss"]) < 1e-4
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    predictions = []
    for source in (("--checkpoint", ckpt), ("--packed", packed)):
        status, out, err = run_cli("predict", *source, image, "--topk", "3", "--json")
        assert status == 0, err
        predictions.append([t["index"] for t in json.loads(out)[0]["top"]])
    assert predictions[0] == predictions[1]


def test_cli_packed_without_kernel_is_one_line(nin_packed, run_cli, tmp_path, monkeypatch):
    packed = nin_packed[1]
    monkeypatch.setattr(bk, "_library_path", lambda: None)
    bk._load.cache_clear()
    try:
        status, out, err = run_cli("eval", "--packed", packed, "--limit", "4")
        assert status == 2 and out == ""
        assert err.count("\n") == 1 and "binary kernel is not built" in err
    finally:
        monkeypatch.undo()
        bk._load.cache_clear()
    status, _, err = run_cli("export", "nin", "--format", "packed", "--out", tmp_path / "nin.packed")
    assert status == 2 and "no binary convolution" in err
