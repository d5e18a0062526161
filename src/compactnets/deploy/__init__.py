"""Deployment: inference forms, export formats and runners (ONNX, packed binary), benchmarks.

* :func:`inference_form`: an eval-mode copy of a model with its family's inference form applied (a model class
  may define ``inference_form()``, e.g. MicroNet's fused form, WeightNet's static mixture) and then every
  conv -> BN pair folded (:func:`..layers.fold_batch_norms`); binary convs are kept as they are.
* :data:`FORMATS`: the export formats, by name, each an ``export(model, out, ...)`` and a ``load(path)`` that
  returns an ``nn.Module`` runner (logits from a preprocessed NCHW batch; ``pretrained_cfg``, ``class_names``).
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DeployError
from ..layers import fold_batch_norms


def example_input(model: nn.Module, batch: int = 2, input_size=None) -> torch.Tensor:
    """A seeded random batch of the model's input size (``pretrained_cfg['input_size']`` unless given)."""
    size = tuple(input_size or model.pretrained_cfg["input_size"])
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def inference_form(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` for inference, with the same outputs as ``model.eval()``: the model's own
    ``inference_form()`` if it has one, then BN folded into the conv or linear layer before it. ``example``:
    an input to trace the data flow with (default: :func:`example_input`). ``model`` is left unchanged."""
    cfg = getattr(model, "pretrained_cfg", None)
    example = example_input(model) if example is None else example
    form = copy.deepcopy(model).eval()
    family_form = getattr(form, "inference_form", None)
    if callable(family_form):
        form = family_form().eval()
    fold_batch_norms(form, example)
    if cfg is not None:
        form.pretrained_cfg = copy.deepcopy(cfg)
    for p in form.parameters():
        p.requires_grad_(False)
    return form


@dataclass(frozen=True)
class Format:
    """An export format: ``export`` (model, out, **options) and ``load`` (path -> runner), each named as
    ``"module:function"``."""

    export: str
    load: str
    suffix: str
    needs: str | None = None  # the pip extra that provides its runtime

    def function(self, which: str):
        module_name, _, name = getattr(self, which).partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            hint = f": pip install 'compactnets[{self.needs}]'" if self.needs else ""
            raise DeployError(f"{e.name} is not installed{hint}") from e
        return getattr(module, name)


FORMATS: dict[str, Format] = {
    "onnx": Format("compactnets.deploy.onnx:export_onnx", "compactnets.deploy.onnx:load_onnx", ".onnx", "onnx"),
    "packed": Format(
        "compactnets.deploy.packed_export:export_packed",
        "compactnets.deploy.packed_runtime:load_packed",
        ".packed.safetensors",
    ),
}


def load_deployed(fmt: str, path, **options) -> nn.Module:
    """The runner of a deployed file of format ``fmt`` (a key of :data:`FORMATS`); ``options`` go to its loader
    (``runtime=`` for ONNX)."""
    return FORMATS[fmt].function("load")(path, **options)


__all__ = ["FORMATS", "DeployError", "Format", "example_input", "fold_batch_norms", "inference_form", "load_deployed"]
