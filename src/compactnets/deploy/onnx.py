"""ONNX export of any registered model (inference form, dynamic batch, preprocessing in the metadata) and an
``nn.Module`` runner over onnxruntime.

The graph is the :func:`~compactnets.deploy.inference_form` of the model (BN folded, MicroNet fused, WeightNet
as static mixtures: plain convs, so the batch stays dynamic). ``metadata_props`` holds, JSON-encoded, every
preprocessing key of ``checkpoint.PREPROCESSING_KEYS`` plus ``architecture``, ``num_classes`` and
``class_names``, so :func:`load_onnx` needs nothing but the file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..checkpoint import PREPROCESSING_KEYS
from . import DeployError, example_input, inference_form

INPUT_NAME, OUTPUT_NAME = "input", "logits"
META_KEYS = (*PREPROCESSING_KEYS, "architecture", "num_classes", "class_names")
# onnxruntime vs PyTorch: max |diff| <= CHECK_RTOL * max |logit|
CHECK_RTOL = 1e-4
CHECK_BATCHES = (1, 3)


def _metadata(model: nn.Module, class_names) -> dict[str, str]:
    cfg = dict(model.pretrained_cfg)
    cfg.setdefault("num_classes", getattr(model, "num_classes", None))
    cfg["class_names"] = list(class_names) if class_names else None
    meta = {key: json.dumps(cfg.get(key)) for key in META_KEYS}
    meta["param_count"] = json.dumps(sum(p.numel() for p in model.parameters()))  # of the model, not the form
    return meta


def _session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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


class OnnxModel(nn.Module):
    """An exported model run by onnxruntime, usable where a model is: ``forward`` takes a preprocessed float NCHW
    batch and returns the logits; ``pretrained_cfg`` and ``class_names`` come from the file's metadata.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (default: ``torch.get_num_threads()`` at load time).
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        self.path = str(path)
        self.session = _session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            values = {key: json.loads(meta[key]) for key in META_KEYS if key in meta}
        except json.JSONDecodeError as e:
            raise DeployError(f"{path}: unreadable compactnets metadata ({e})") from e
        missing = [key for key in ("input_size", "mean", "std", "architecture") if values.get(key) is None]
        if missing:
            raise DeployError(f"{path} has no {', '.join(missing)} in its metadata: not exported by compactnets")
        self.class_names = values.pop("class_names", None)
        self.param_count = json.loads(meta.get("param_count", "null"))
        self.pretrained_cfg = values
        self.num_classes = values.get("num_classes")
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def extra_repr(self) -> str:
        return f"{self.path!r}, architecture={self.pretrained_cfg['architecture']!r}"


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """The runner of an ONNX file written by :func:`export_onnx`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such ONNX file: {path}")
    try:
        return OnnxModel(path, threads)
    except DeployError:
        raise
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types for unreadable files
        if type(e).__module__.startswith("onnxruntime"):
            raise DeployError(f"{path} is not a model onnxruntime can run: {str(e).splitlines()[0]}") from e
        raise
