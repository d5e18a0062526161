"""``compactnets bench``: every backend runs, and the table, JSON, CSV and plot have the documented structure
(times are measured, never asserted)."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_deploy import randomize_bn

import compactnets
from compactnets.counting import flop_counter_macs
from compactnets.deploy import DeployError, bench, bench_models, bench_report, binary_kernel, example_input
from compactnets.deploy.onnx import CHECK_RTOL
from compactnets.profiler import count_params

ROW_KEYS = {
    "model", "backend", "kernel", "precision", "memory_format", "input_size", "params", "macs", "latency_ms_median",
    "latency_ms_p90", "latency_ms_min", "cpu_ms_median", "batch", "throughput_ips", "gmacs_per_s",
}  # fmt: skip


def test_run_bench_rows_and_environment():
    rows, env = bench.run_bench(
        ["micronet_m0_cifar", "tv:mobilenet_v3_small"], ["eager", "channels_last", "onnxruntime"], threads=1,
        warmup=1, runs=3, batch=2, batch_runs=1, input_size=(3, 32, 32),
    )  # fmt: skip
    backends = ("eager", "channels_last", "onnxruntime")
    models = ("micronet_m0_cifar", "tv:mobilenet_v3_small")
    assert [(r.model, r.backend) for r in rows] == [(m, b) for m in models for b in backends]
    for r in rows:
        assert set(r.as_dict()) == ROW_KEYS and r.input_size == "3x32x32" and r.batch == 2
        assert 0 < r.latency_ms_min <= r.latency_ms_median <= r.latency_ms_p90 and r.throughput_ips > 0
        assert r.gmacs_per_s == pytest.approx(r.macs / (r.latency_ms_median / 1e3) / 1e9)
    assert {r.memory_format for r in rows if r.backend == "channels_last"} == {"NHWC"}
    assert {r.precision for r in rows} == {"f32"}
    model = compactnets.create_model("micronet_m0_cifar").eval()
    assert rows[0].params == count_params(model)  # the profiler's figures, at the benchmarked input size
    assert rows[0].macs == flop_counter_macs(model, torch.zeros(1, 3, 32, 32))[0] > 0
    assert env["threads"] == 1 and env["runs"] == 3 and env["torch"] and env["onnxruntime"] and env["cpu"]
    table = bench_report.format_table(rows)
    assert table.splitlines()[0].split()[:2] == ["model", "backend"] and len(table.splitlines()) == 7
    assert sum(line.rstrip().endswith("*") for line in table.splitlines()) == 2  # one best backend per model


def test_cli_bench_writes_json_csv_and_plot(run_cli, tmp_path):
    json_path, csv_path, png = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    status, out, err = run_cli(
        "bench", "nin_xnornet", "tv:resnet18", "--backend", "eager", "onnxruntime", "--runs", "2", "--warmup", "1",
        "--batch", "1", "--input-size", "3", "32", "32", "--json", json_path, "--csv", csv_path, "--plot", png,
    )  # fmt: skip
    assert status == 0, err
    assert "AMD" in out or "Intel" in out or "thread(s)" in out
    data = json.loads(json_path.read_text())
    assert set(data) == {"environment", "results"} and len(data["results"]) == 4
    assert all(set(r) == ROW_KEYS and r["throughput_ips"] is None for r in data["results"])
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and ROW_KEYS <= set(rows[0]) and rows[0]["threads"] == "1"
    assert [r["model"] for r in rows] == ["nin_xnornet", "nin_xnornet", "tv:resnet18", "tv:resnet18"]
    matplotlib = pytest.importorskip("matplotlib")
    image = matplotlib.image.imread(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[0] > 300 and image.shape[1] > 300


def test_bench_input_errors(run_cli):
    with pytest.raises(DeployError, match="unknown backend"):
        bench.run_bench(["nin"], ["tensorrt"])
    status, _, err = run_cli("bench", "no_such_*", "--runs", "1")
    assert status == 2 and "no registered model matches" in err
    status, _, err = run_cli("bench", "tv:no_such_net", "--runs", "1", "--backend", "eager")
    assert status == 2 and "tv:no_such_net" in err and "Traceback" not in err


@pytest.mark.skipif(not binary_kernel.is_available(), reason="the binary kernel is not built")
def test_packed_backend_runs_binarized_models_and_skips_the_others():
    rows, _ = bench.run_bench(
        ["nin_xnornet", "nin_k3"], ["eager", "packed"], threads=1, warmup=1, runs=2, batch=1, batch_runs=1
    )
    assert [(r.model, r.backend) for r in rows] == [
        ("nin_xnornet", "eager"),
        ("nin_xnornet", "packed"),
        ("nin_k3", "eager"),
    ]
    assert rows[1].kernel.startswith("compactnets binary kernel (") and rows[1].macs == rows[0].macs


needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
# OpenVINO vs PyTorch: max |diff| <= RTOL[precision] * max |logit|. bf16 keeps 8 significant bits (2^-8 = 4e-3 per
# rounding); measured 1e-3 to 7e-3 on nin, micronet_m0_cifar, resnet32_s8u1, mobilenetv2_shared and WeightNet 1x.
RTOL = {"f32": CHECK_RTOL, "bf16": 2e-2, "f16": 2e-2}


def _openvino_default_precision() -> str:
    import openvino

    return openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


@needs_openvino
@pytest.mark.parametrize("name", ["nin", "micronet_m0_cifar"])
def test_openvino_backends_match_pytorch(name, tmp_path):
    model = bench_models.create_bench_model(name)
    randomize_bn(model)
    default = _openvino_default_precision()
    errors = {}
    for backend, precision in (("openvino", default), ("openvino_f32", "f32")):
        runner = bench.BACKENDS[backend](model, example_input(model), tmp_path, 1)
        assert runner.precision == precision and runner.kernel == "OpenVINO CPU (oneDNN)"
        for batch in (1, 3):  # one compiled static shape each
            x = example_input(model, batch)
            with torch.no_grad():
                expected = model(x)
            got = runner.run(runner.prepare(x))
            assert got.shape == expected.shape
            errors[backend, batch] = ((got - expected).abs().max() / expected.abs().max()).item()
            assert errors[backend, batch] <= RTOL[precision], (backend, batch, errors)
    if default == "bf16":  # the precision hint changes what runs
        assert errors["openvino", 1] > 10 * errors["openvino_f32", 1]


@needs_openvino
def test_bench_openvino_rows_say_their_precision(run_cli, tmp_path):
    json_path, csv_path = tmp_path / "b.json", tmp_path / "b.csv"
    status, out, err = run_cli(
        "bench", "micronet_m0_cifar", "--backend", "onnxruntime", "openvino", "openvino_f32", "--runs", "2",
        "--warmup", "1", "--batch", "2", "--batch-runs", "1", "--json", json_path, "--csv", csv_path,
    )  # fmt: skip
    assert status == 0, err
    default = _openvino_default_precision()
    data = json.loads(json_path.read_text())
    results = {r["backend"]: r for r in data["results"]}
    assert list(results) == ["onnxruntime", "openvino", "openvino_f32"]
    assert [results[b]["precision"] for b in results] == ["f32", default, "f32"]
    assert results["openvino"]["kernel"] == "OpenVINO CPU (oneDNN)" and results["openvino"]["throughput_ips"] > 0
    version = importlib.metadata.version("openvino")
    assert data["environment"]["openvino"] == version and f"openvino {version}" in out
    table = {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("micronet_m0_cifar")}
    assert table == {"onnxruntime": "f32", "openvino": default, "openvino_f32": "f32"}  # the precision column
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["backend"], r["precision"], r["openvino"]) for r in rows] == [
        ("onnxruntime", "f32", version), ("openvino", default, version), ("openvino_f32", "f32", version)
    ]  # fmt: skip


def test_missing_openvino_is_one_line(run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    status, _, err = run_cli("bench", "micronet_m0_cifar", "--backend", "openvino", "--runs", "1", "--batch", "1")
    assert status == 2 and "the openvino runtime is not installed" in err and "Traceback" not in err


def test_openvino_is_imported_only_when_used():
    code = "import sys, compactnets.deploy.bench_report, compactnets.deploy.onnx; print('openvino' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_runs_saved_before_the_precision_column_still_load():
    saved = Path(__file__).parents[1] / "benchmarks" / "results" / "bench_cifar_1thread.json"
    rows, env = bench_report.rows_from_json(saved.read_text())
    assert rows and {r.precision for r in rows} == {"f32"} and "openvino" not in env
    assert bench_report.environment_line(env).endswith("openvino -, float32 weights")
