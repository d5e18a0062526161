"""An ONNX file is untrusted input: its compactnets metadata is checked as a checkpoint's ``pretrained_cfg`` is
(a crafted ``input_size`` of 3x40000x40000 once made ``predict --onnx`` grow to 22 GB; a one-element ``mean`` was
broadcast to three channels)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from PIL import Image

from compactnets import create_model
from compactnets.deploy import DeployError
from compactnets.deploy.onnx import export_onnx, load_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "nin.onnx"
    export_onnx(create_model("nin").eval(), path, check=False)
    return path


def _with_metadata(source, out, key: str, value: str | None):
    """A copy of ``source`` whose metadata ``key`` holds ``value`` (raw text; None: removed)."""
    proto = onnx.load(str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    if value is None:
        del props[key]
    else:
        props[key] = value
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(out))
    return out


CRAFTED = [
    ("input_size", "[3, 40000, 40000]", "input_size = [3, 40000, 40000] should be (channels 1-4, height, width)"),
    ("mean", "[0.5]", "mean = [0.5] should be 3 numbers, one per input channel"),
    ("mean", "[0.5, 0.5", "unreadable compactnets metadata (JSONDecodeError"),
    ("std", "[0.2, NaN, 0.2]", "std = [0.2, nan, 0.2] should be 3 numbers"),
    ("std", "[0.2, 0, 0.2]", "std = [0.2, 0, 0.2] should be positive"),
    ("input_size", '"3x32x32"', "input_size = '3x32x32' should be"),
    (
        "input_size",
        "[3, 64, 64]",
        "the graph takes input ['batch', 3, 32, 32], its metadata says input_size [3, 64, 64]",
    ),
    ("crop_pct", "0", "crop_pct = 0 should be a number in (0, 1]"),
    ("interpolation", '"cubic"', "interpolation = 'cubic' should be one of"),
    ("num_classes", '"10"', "num_classes = '10' should be a positive integer"),
    ("class_names", '["a", "b"]', "2 class names for a classifier of 10 classes"),
    ("architecture", "42", "architecture = 42 should be a model name"),
    ("param_count", "-1", "param_count = -1 should be a non-negative integer"),
    ("std", None, "has no std in its metadata"),
]


@pytest.mark.parametrize(("key", "value", "message"), CRAFTED, ids=[f"{k}={v}" for k, v, _ in CRAFTED])
def test_crafted_metadata_is_one_clear_error(exported, tmp_path, key, value, message):
    bad = _with_metadata(exported, tmp_path / "bad.onnx", key, value)
    with pytest.raises(DeployError, match=re.escape(message)) as error:
        load_onnx(bad)
    assert "\n" not in str(error.value)


def test_exported_metadata_is_accepted(exported):
    runner = load_onnx(exported)
    assert runner.pretrained_cfg["input_size"] == [3, 32, 32] and len(runner.pretrained_cfg["mean"]) == 3


def test_cli_refuses_crafted_metadata_before_reading_images(exported, tmp_path, run_cli):
    huge = _with_metadata(exported, tmp_path / "huge.onnx", "input_size", "[3, 40000, 40000]")
    one_mean = _with_metadata(exported, tmp_path / "mean.onnx", "mean", "[0.5]")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    for args, message in (
        (("predict", "--onnx", huge, image), "input_size = [3, 40000, 40000] should be"),
        (("eval", "--onnx", one_mean, "--limit", "4"), "mean = [0.5] should be 3 numbers"),
    ):
        status, out, err = run_cli(*args)
        assert status == 2 and out == "" and err.count("\n") == 1 and message in err, err
