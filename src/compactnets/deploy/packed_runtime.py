"""Packed runtime: a packed file (``*.packed.safetensors``; the format and its ops: :mod:`.packed_ops`) -> a
runnable model, float layers in torch and binary layers in the bit-packed kernel (:mod:`.binary_kernel`).

:func:`read_packed` reads a file without running anything; :func:`load_packed` checks all of it
(:mod:`.packed_format`: a packed file is untrusted input) and returns a :class:`PackedModel` runner, which plans each
input shape's execution at its first call (:mod:`.packed_plan`). The runner needs the compiled kernel.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import binary_kernel as bk
from .packed_format import FORMAT, PackedError, check_header, check_packed
from .packed_ops import BINARY_CONV2D, node_op
from .packed_plan import ChunkedPlan, Plan, build_batch_plan, resolve_precision


class PackedModel(nn.Module):
    """Runs a packed file: float layers with torch, binary convs with the bit-packed kernel.

    ``forward`` takes a preprocessed float NCHW batch and returns logits. ``threads`` (None: the current
    ``torch.get_num_threads()`` at each call) sets the kernel's thread count. Each input shape and thread count gets
    an execution plan at its first call (:mod:`.packed_plan`): every binary layer's path (popcount or AMX) chosen by
    timing, unless ``kernel_path`` (or ``COMPACTNETS_BINARY_KERNEL``) forces one, and the float layers' precision
    (``precision``: ``"exact"``, float32 in torch; ``"fast"``, the first conv fused with its packing, in float32 or
    in bf16x3 with float32's signs, where faster; ``"bf16"``, the bf16x3 one untimed; None:
    ``COMPACTNETS_PACKED_PRECISION``, else fast). :meth:`plan` shows what was
    chosen.
    """

    def __init__(
        self,
        header: dict,
        tensors: dict[str, torch.Tensor],
        threads: int | None = None,
        precision: str | None = None,
        kernel_path: str | None = None,
    ):
        super().__init__()
        bk.library()  # fail here, with the reason, when the kernel is missing
        node_tensors = check_packed(header, tensors)  # untrusted input: all of it, before anything is built
        # JSON has no tuples; model configs hold them (as timm's do).
        self.pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in header["pretrained_cfg"].items()}
        self.class_names = header.get("class_names")
        self.num_classes = self.pretrained_cfg.get("num_classes")
        self.param_count = header.get("param_count")  # of the float model it was exported from
        self.threads = threads
        self.precision, self.kernel_path = precision, kernel_path
        self._plans: dict[tuple, Plan | ChunkedPlan] = {}
        self._node_tensors = node_tensors
        self.nodes = header["nodes"]
        self._steps = []
        for node, t in zip(self.nodes, node_tensors, strict=True):
            op = node_op(node)
            self._steps.append((op.name, op.run(node, t), op.binary))

    def _run(self, x: torch.Tensor, collect: list | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4:
            raise ValueError(f"the packed runner takes a CPU batch (N, C, H, W), not {x.device} {tuple(x.shape)}")
        # no copy into channels-last where the first op reads any strides: a torch op here left torch's OpenMP
        # threads spinning on the cores the kernel's threads then needed (at batch 64 on 2 threads: 17.6 vs 14.2 ms)
        return self.plan(tuple(x.shape)).run(x, collect)

    def plan(self, shape: tuple, threads: int | None = None) -> Plan | ChunkedPlan:
        """The execution plan for float inputs of ``shape`` (N, C, H, W), built (and its choices timed) at first use;
        its ``report`` lists each layer's candidates and the path taken. A few shapes are kept."""
        threads = max(1, threads or self.threads or torch.get_num_threads())
        path, precision = self.kernel_path or bk.forced_path(), resolve_precision(self.precision)
        key = (tuple(shape), threads, path, precision)
        if key not in self._plans:
            if len(self._plans) >= 4:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = build_batch_plan(self, tuple(shape), threads, path, precision)
        return self._plans[key]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)

    @torch.no_grad()
    def run_with_signs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the +-1 input of every binary conv (NCHW floats), to compare with the float model's signs."""
        collect = []
        return self._run(x, collect), collect

    def extra_repr(self) -> str:
        ops = [node["op"] for node in self.nodes]
        return f"{self.pretrained_cfg['architecture']}, {ops.count(BINARY_CONV2D.name)} binary convs, {len(ops)} nodes"


def read_packed(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Header and tensors of a packed file (no code runs: safetensors + JSON)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise PackedError(f"packed file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as e:
        raise PackedError(f"{path} is not a safetensors file: {e}") from e
    if FORMAT not in metadata:
        raise PackedError(f"{path} is a safetensors file but not a compactnets packed model (no {FORMAT} header)")
    try:
        header = json.loads(metadata[FORMAT])
        check_header(header)
    except (json.JSONDecodeError, RecursionError) as e:
        raise PackedError(f"{path}: the {FORMAT} header is not readable JSON ({type(e).__name__})") from None
    except PackedError as e:
        raise PackedError(f"{path}: {e}") from None
    return header, tensors


def load_packed(path: str | Path, threads: int | None = None, **options) -> PackedModel:
    """The runner of a packed file (an ``nn.Module`` with ``pretrained_cfg`` and ``class_names``); ``options``:
    ``precision`` and ``kernel_path`` of :class:`PackedModel`."""
    header, tensors = read_packed(path)
    try:
        return PackedModel(header, tensors, threads=threads, **options).eval()
    except PackedError as e:
        raise PackedError(f"{path}: {e}") from None
