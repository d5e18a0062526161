"""ONNX export of any registered model (inference form, dynamic batch, preprocessing in the metadata) and an
``nn.Module`` runner over onnxruntime or OpenVINO.

The graph is the :func:`~compactnets.deploy.inference_form` of the model (BN folded, MicroNet fused, WeightNet
as static mixtures: plain convs, so the batch stays dynamic). ``metadata_props`` holds, JSON-encoded, every
preprocessing key of ``checkpoint.PREPROCESSING_KEYS`` plus ``architecture``, ``num_classes`` and
``class_names``, so :func:`load_onnx` needs nothing but the file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..checkpoint import PREPROCESSING_KEYS, check_class_names, check_preprocessing
from ..errors import CheckpointError
from ..openvino_cpu import StaticShapeModel, failure_reason
from . import DeployError, example_input, inference_form

INPUT_NAME, OUTPUT_NAME = "input", "logits"
META_KEYS = (*PREPROCESSING_KEYS, "architecture", "num_classes", "class_names")
# onnxruntime vs PyTorch: max |diff| <= CHECK_RTOL * max |logit|
CHECK_RTOL = 1e-4
CHECK_BATCHES = (1, 3)
# runtime name (``--runtime``, bench backend) -> (runtime, OpenVINO's INFERENCE_PRECISION_HINT; None: the plugin's
# default for the CPU: bf16 on a Xeon with AMX, f32 where the CPU lacks native bf16)
RUNTIMES = {"onnxruntime": ("onnxruntime", None), "openvino": ("openvino", None), "openvino_f32": ("openvino", "f32")}


def _metadata(model: nn.Module, class_names) -> dict[str, str]:
    cfg = dict(model.pretrained_cfg)
    cfg.setdefault("num_classes", getattr(model, "num_classes", None))
    cfg["class_names"] = list(class_names) if class_names else None
    meta = {key: json.dumps(cfg.get(key)) for key in META_KEYS}
    meta["param_count"] = json.dumps(sum(p.numel() for p in model.parameters()))  # of the model, not the form
    return meta


def _session(path: str | Path, threads: int | None = None, runtime: str = "onnxruntime"):
    """A session of ``runtime`` (a key of :data:`RUNTIMES`) over the file: onnxruntime's ``InferenceSession``, or
    an :class:`OpenVinoSession`, which answers the same calls."""
    if runtime not in RUNTIMES:
        raise DeployError(f"unknown ONNX runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    engine, precision = RUNTIMES[runtime]
    if engine == "openvino":
        return OpenVinoSession(path, threads, precision)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OpenVinoSession:
    """The file compiled by OpenVINO for the CPU, with the calls of onnxruntime's ``InferenceSession`` that
    :class:`OnnxModel` makes (``run``, ``get_inputs``, ``get_modelmeta``).

    One static-shape model is compiled per input shape seen (:class:`~compactnets.openvino_cpu.StaticShapeModel`).

    Args:
        path: the ``.onnx`` file.
        threads: ``INFERENCE_NUM_THREADS`` (default: ``torch.get_num_threads()``).
        precision: ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``, ``"f16"``); None: the CPU's default.
    """

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = None):
        try:
            import openvino as ov
            from openvino.frontend import FrontEndManager
        except ImportError as e:
            raise DeployError("the openvino runtime is not installed: pip install 'compactnets[onnx]'") from e
        # the ONNX frontend directly: Core.read_model tries every frontend and logs TensorFlow's parse errors
        frontend = FrontEndManager().load_by_framework("onnx")
        self.model = frontend.convert(frontend.load(str(path)))
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = StaticShapeModel(core, self.model, config)
        compiled = core.compile_model(self.model, "CPU", config)  # the precision the CPU plugin chose
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        framework = self.model.get_rt_info()
        framework = framework["framework"] if "framework" in framework else {}  # the ONNX metadata_props
        self.metadata = {key: framework[key].astype(str) for key in framework}

    def run(self, output_names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        (array,) = feed.values()
        return [self.compiled.infer(array)]

    def get_inputs(self):
        return [SimpleNamespace(name=self.model.inputs[0].get_any_name())]

    def get_modelmeta(self):
        return SimpleNamespace(custom_metadata_map=self.metadata)


def check_onnx(path: str | Path, model: nn.Module, batches=CHECK_BATCHES, input_size=None) -> float:
    """The largest ``max |diff| / max |logit|`` of onnxruntime vs ``model`` (eval mode) over random batches
    of each size in ``batches``; raises :class:`DeployError` above :data:`CHECK_RTOL`."""
    session = _session(path)
    worst = 0.0
    for batch in batches:
        x = example_input(model, batch, input_size)
        with torch.no_grad():
            expected = model.eval()(x).float()
        got = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
        if got.shape != expected.shape:
            raise DeployError(f"{path}: onnxruntime gives logits of shape {tuple(got.shape)} at batch {batch}, "
                              f"PyTorch {tuple(expected.shape)}")  # fmt: skip
        scale = expected.abs().max().item() or 1.0
        error = (got - expected).abs().max().item() / scale
        if not error <= CHECK_RTOL:
            raise DeployError(
                f"{path}: onnxruntime differs from PyTorch at batch {batch}: max |diff| = {error:.2e} x max |logit| "
                f"(limit {CHECK_RTOL:g}); export with --no-check to keep the file anyway"
            )
        worst = max(worst, error)
    return worst


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    opset: int | None = None,
    batch_size: int | None = None,
    check: bool = True,
    class_names=None,
    input_size=None,
) -> dict:
    """Write the inference form of ``model`` to ``out`` as one ONNX file and check it with onnxruntime.

    Args:
        model: a compactnets model (``pretrained_cfg`` gives the input size and the preprocessing).
        out: the ``.onnx`` file to write.
        opset: ONNX opset (default: the exporter's).
        batch_size: a fixed batch size; None (default) exports a dynamic batch dimension.
        check: compare onnxruntime with PyTorch at batch 1 and 3 (or at ``batch_size``) on random input.
        class_names: class names to record in the metadata.
        input_size: (C, H, W) to export at instead of the model's (a smaller test input, for instance).

    Returns a summary: the path, opset, batch, input size and the check's relative error (None if skipped).
    """
    out = Path(out)
    size = tuple(input_size or model.pretrained_cfg["input_size"])
    model = model.eval()
    # Traced at batch 2: batch 1 would let the exporter specialise size-1 dimensions.
    example = example_input(model, batch_size or 2, size)
    form = inference_form(model, example)
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=False, do_constant_folding=True)
    if opset is not None:
        kwargs["opset_version"] = opset
    if batch_size is None:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on tracing, printed for every model
        torch.onnx.export(form, (example,), str(out), **kwargs)

    import onnx

    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    for key, value in _metadata(model, class_names).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "compactnets", __version__
    onnx.save(proto, str(out))  # one file: these models are far below protobuf's 2 GB
    error = check_onnx(out, model, (batch_size,) if batch_size else CHECK_BATCHES, size) if check else None
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"output": str(out), "opset": opset_used, "batch": batch_size or "dynamic", "input_size": list(size),
            "check_error": error}  # fmt: skip


def _checked_metadata(meta, path) -> tuple[dict, int | None]:
    """The compactnets metadata of an ONNX file (``metadata_props``, JSON values), checked as a checkpoint's
    ``pretrained_cfg`` is: an untrusted file must not make ``predict`` allocate gigabytes for a crafted input size
    or broadcast a one-channel mean. Returns the values by key and the parameter count."""
    try:
        values = {key: json.loads(meta[key]) for key in META_KEYS if key in meta}
        param_count = json.loads(meta.get("param_count", "null"))
    except (json.JSONDecodeError, RecursionError) as e:
        raise DeployError(f"{path}: unreadable compactnets metadata ({type(e).__name__}: {e})") from None
    missing = [key for key in ("input_size", "mean", "std", "architecture") if values.get(key) is None]
    if missing:
        raise DeployError(f"{path} has no {', '.join(missing)} in its metadata: not exported by compactnets")
    architecture, classes = values["architecture"], values.get("num_classes")
    if not (isinstance(architecture, str) and 0 < len(architecture) <= 200 and architecture.isprintable()):
        raise DeployError(f"{path} metadata: architecture = {architecture!r:.80} should be a model name")
    if classes is not None and not (type(classes) is int and classes >= 1):
        raise DeployError(f"{path} metadata: num_classes = {classes!r:.80} should be a positive integer")
    if param_count is not None and not (type(param_count) is int and param_count >= 0):
        raise DeployError(f"{path} metadata: param_count = {param_count!r:.80} should be a non-negative integer")
    try:
        check_preprocessing(values, f"{path} metadata")
        if classes is not None or values.get("class_names") is not None:
            check_class_names(values.get("class_names"), classes, f"{path} metadata")
    except CheckpointError as e:
        raise DeployError(str(e)) from None
    return values, param_count


class OnnxModel(nn.Module):
    """An exported model run by onnxruntime or OpenVINO, usable where a model is: ``forward`` takes a preprocessed
    float NCHW batch and returns the logits; ``pretrained_cfg`` and ``class_names`` come from the file's metadata.

    Args:
        path: the ``.onnx`` file.
        threads: the runtime's threads (default: ``torch.get_num_threads()`` at load time).
        runtime: a key of :data:`RUNTIMES`; ``precision`` says what it computes in (onnxruntime: f32).
    """

    def __init__(self, path: str | Path, threads: int | None = None, runtime: str = "onnxruntime"):
        super().__init__()
        self.path = str(path)
        self.runtime = runtime
        self.session = _session(path, threads, runtime)
        self.precision = getattr(self.session, "precision", "f32")
        values, self.param_count = _checked_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.class_names = values.pop("class_names", None)
        self.pretrained_cfg = values
        self.num_classes = values.get("num_classes")
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        shape = getattr(graph_input, "shape", None)  # onnxruntime's; dims are ints or names (the dynamic batch)
        if shape is not None and (
            len(shape) != 4
            or any(isinstance(d, int) and d != v for d, v in zip(shape[1:], values["input_size"], strict=True))
        ):
            raise DeployError(f"{path}: the graph takes input {list(shape)}, its metadata says input_size "
                              f"{list(values['input_size'])}")  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def extra_repr(self) -> str:
        return f"{self.path!r}, architecture={self.pretrained_cfg['architecture']!r}"


def load_onnx(path: str | Path, threads: int | None = None, runtime: str = "onnxruntime") -> OnnxModel:
    """The runner of an ONNX file written by :func:`export_onnx`, on ``runtime`` (a key of :data:`RUNTIMES`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such ONNX file: {path}")
    try:
        return OnnxModel(path, threads, runtime)
    except DeployError:
        raise
    except Exception as e:  # the runtimes raise their own Fail/InvalidProtobuf/GeneralFailure types
        if type(e).__module__.startswith("onnxruntime"):
            raise DeployError(f"{path} is not a model onnxruntime can run: {str(e).splitlines()[0]}") from e
        if type(e).__module__.startswith("openvino"):
            raise DeployError(f"{path} is not a model openvino can run: {failure_reason(e)}") from e
        raise
