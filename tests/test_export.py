"""ONNX export of every registered model (dynamic batch, onnxruntime parity at batch 1 and 3, metadata), the
runner, and ``compactnets export`` / ``eval --onnx`` / ``predict --onnx``."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from test_deploy import every_model, randomize_bn, small_input_size

import compactnets
from compactnets.checkpoint import PREPROCESSING_KEYS, save_atomic
from compactnets.deploy import DeployError
from compactnets.deploy import onnx as deploy_onnx
from compactnets.deploy.onnx import export_onnx, load_onnx


@pytest.mark.parametrize("name", every_model())
def test_every_model_exports_with_a_dynamic_batch_and_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)  # a random binary net can have a pre-sign value within rounding of zero: one fixed draw
    model = compactnets.create_model(name).eval()
    randomize_bn(model)
    size = small_input_size(model)
    path = tmp_path / f"{name}.onnx"
    result = export_onnx(model, path, input_size=size)  # checks onnxruntime vs PyTorch at batch 1 and 3
    assert result["check_error"] <= deploy_onnx.CHECK_RTOL and result["batch"] == "dynamic"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # one file, no external data
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(size)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["architecture"] == name and meta["num_classes"] == model.num_classes
    for key in PREPROCESSING_KEYS:
        expected = model.pretrained_cfg[key]
        assert meta[key] == (list(expected) if isinstance(expected, tuple) else expected)
    ops = Counter(node.op_type for node in proto.graph.node)
    if hasattr(model, "inference_form"):
        # a model's own static inference form computes no shapes at run time (what made MicroNet and WeightNet slow)
        assert not ops.keys() & {"Shape", "Split", "Squeeze", "Unsqueeze", "Transpose"}, ops


def test_fixed_batch_and_a_failed_check(tmp_path, monkeypatch):
    model = compactnets.create_model("nin").eval()
    result = export_onnx(model, tmp_path / "b2.onnx", batch_size=2)
    dims = onnx.load(str(tmp_path / "b2.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert result["batch"] == 2 and dims[0].dim_value == 2
    monkeypatch.setattr(deploy_onnx, "CHECK_RTOL", -1.0)  # no export can pass this: the check must say so
    with pytest.raises(DeployError, match="onnxruntime differs from PyTorch at batch 1"):
        export_onnx(model, tmp_path / "bad.onnx")


def test_runner_is_a_model(tmp_path):
    model = compactnets.create_model("micronet_m0_cifar").eval()
    randomize_bn(model)
    export_onnx(model, tmp_path / "m.onnx", class_names=[f"c{i}" for i in range(10)])
    runner = load_onnx(tmp_path / "m.onnx")
    assert isinstance(runner, torch.nn.Module) and runner.class_names == [f"c{i}" for i in range(10)]
    assert runner.pretrained_cfg["architecture"] == "micronet_m0_cifar" and runner.num_classes == 10
    assert runner.param_count == sum(p.numel() for p in model.parameters())
    x = torch.randn(5, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
    got = runner(x)
    assert isinstance(got, torch.Tensor) and (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.fixture
def checkpoint(tmp_path):
    """A nin checkpoint with non-trivial BN statistics (random weights) and CIFAR-10 class names."""
    model = compactnets.create_model("nin")
    randomize_bn(model)
    path = tmp_path / "nin.pth"
    save_atomic(
        {"arch": "nin", "state_dict": model.state_dict(), "pretrained_cfg": model.pretrained_cfg,
         "class_names": list(compactnets.data.class_names("cifar10"))},
        path,
    )  # fmt: skip
    return path


def test_cli_export_then_eval_and_predict_give_the_pytorch_results(run_cli, tmp_path, checkpoint, image_folder):
    out = tmp_path / "nin.onnx"
    status, stdout, _ = run_cli("export", "--checkpoint", checkpoint, "--out", out)
    assert status == 0 and "checked: max |diff|" in stdout and "batch dynamic" in stdout
    results = {}
    for flag, path in (("--checkpoint", checkpoint), ("--onnx", out)):
        status, stdout, _ = run_cli("eval", flag, path, "--limit", "64", "--json")
        assert status == 0
        results[flag] = json.loads(stdout)
    torch_row, onnx_row = results["--checkpoint"], results["--onnx"]
    assert onnx_row["top1"] == torch_row["top1"] and onnx_row["top5"] == torch_row["top5"]
    assert onnx_row["loss"] == pytest.approx(torch_row["loss"], abs=1e-3)
    assert onnx_row["count"] == 64 and onnx_row["onnx"] == str(out)
    image = next((image_folder / "val" / "cat").iterdir())
    predictions = {}
    for flag, path in (("--checkpoint", checkpoint), ("--onnx", out)):
        status, stdout, _ = run_cli("predict", flag, path, image, "--json", "--topk", "3")
        assert status == 0
        predictions[flag] = json.loads(stdout)[0]["top"]
    assert [t["label"] for t in predictions["--onnx"]] == [t["label"] for t in predictions["--checkpoint"]]
    assert predictions["--onnx"][0]["label"] in compactnets.data.class_names("cifar10")
    np.testing.assert_allclose(
        [t["probability"] for t in predictions["--onnx"]], [t["probability"] for t in predictions["--checkpoint"]],
        atol=1e-5,
    )  # fmt: skip


def test_cli_errors_are_one_line(run_cli, tmp_path, checkpoint):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a protobuf")
    cases = [
        (("eval", "--onnx", tmp_path / "none.onnx"), "no such ONNX file"),
        (("eval", "--onnx", not_onnx), "is not a model onnxruntime can run"),
        (("eval", "--onnx", not_onnx, "--model", "nin"), "--model applies to --checkpoint"),
        (("export", "no_such_model", "--out", tmp_path / "x.onnx"), "no_such_model"),
    ]
    for args, message in cases:
        status, _, err = run_cli(*args)
        assert status == 2 and message in err and "Traceback" not in err, (args, err)
    with pytest.raises(SystemExit) as exit_info:  # argparse: exactly one of --checkpoint / --onnx
        run_cli("eval", "--checkpoint", checkpoint, "--onnx", not_onnx)
    assert exit_info.value.code == 2


def _openvino_default_precision() -> str:
    import openvino

    return openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_eval_and_predict_onnx_on_openvino_agree_with_onnxruntime(run_cli, tmp_path, image_folder):
    """The shipped 3-epoch nin (77 % top-1) on 200 images of the embedded CIFAR-10 subset: OpenVINO in f32 gives
    onnxruntime's figures; in its default precision (bf16 on a CPU with AMX) at most 2 top-1 classes differ."""
    out = tmp_path / "nin.onnx"
    status, _, err = run_cli("export", "nin.cifar10jpeg_3ep", "--pretrained", "--out", out)
    assert status == 0, err
    default = _openvino_default_precision()
    rows = {}
    for runtime in ("onnxruntime", "openvino", "openvino_f32"):
        status, stdout, err = run_cli("eval", "--onnx", out, "--runtime", runtime, "--limit", "200", "--json")
        assert status == 0, err
        rows[runtime] = json.loads(stdout)
    assert [(r["runtime"], r["precision"]) for r in rows.values()] == [
        ("onnxruntime", "f32"), ("openvino", default), ("openvino_f32", "f32")
    ]  # fmt: skip
    reference = rows["onnxruntime"]
    assert reference["count"] == 200 and reference["top1"] > 50  # a trained model: the agreement means something
    f32 = rows["openvino_f32"]
    assert (f32["top1"], f32["top5"]) == (reference["top1"], reference["top5"])
    assert f32["loss"] == pytest.approx(reference["loss"], abs=1e-4)
    tolerance = 0.0 if default == "f32" else 100 * 2 / 200
    assert abs(rows["openvino"]["top1"] - reference["top1"]) <= tolerance
    assert rows["openvino"]["loss"] == pytest.approx(reference["loss"], abs=1e-2)
    status, stdout, _ = run_cli("eval", "--onnx", out, "--runtime", "openvino", "--limit", "20", "--no-progress")
    assert status == 0 and stdout.rstrip().endswith(f"on 20 images (openvino, {default})")

    image = next((image_folder / "val" / "cat").iterdir())
    probabilities = {}
    for runtime in ("onnxruntime", "openvino", "openvino_f32"):
        status, stdout, err = run_cli("predict", "--onnx", out, "--runtime", runtime, image, "--json", "--topk", "10")
        assert status == 0 and f"in {runtime} (" in err
        probabilities[runtime] = {t["label"]: t["probability"] for t in json.loads(stdout)[0]["top"]}
    reference = probabilities["onnxruntime"]
    assert len(reference) == 10
    for runtime, atol in (("openvino_f32", 1e-5), ("openvino", 2e-2)):
        assert probabilities[runtime].keys() == reference.keys()
        np.testing.assert_allclose([probabilities[runtime][k] for k in reference], list(reference.values()), atol=atol)


def test_runtime_errors_are_one_line(run_cli, tmp_path, checkpoint, monkeypatch):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a protobuf")
    cases = [
        (("eval", "--checkpoint", checkpoint, "--runtime", "openvino"), "--runtime applies to --onnx files"),
        (("predict", "--pretrained", "--model", "nin", "x.png", "--runtime", "openvino"), "--runtime applies to"),
    ]
    if importlib.util.find_spec("openvino") is not None:
        cases.append((("eval", "--onnx", not_onnx, "--runtime", "openvino"), "is not a model openvino can run"))
    for args, message in cases:
        status, _, err = run_cli(*args)
        assert status == 2 and message in err and "Traceback" not in err, (args, err)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    export_onnx(compactnets.create_model("micronet_m0_cifar").eval(), tmp_path / "m.onnx", check=False)
    status, _, err = run_cli("eval", "--onnx", tmp_path / "m.onnx", "--runtime", "openvino", "--limit", "1")
    assert status == 2 and "the openvino runtime is not installed: pip install 'compactnets[onnx]'" in err
