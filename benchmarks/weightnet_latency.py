"""WeightNet 1x vs its ShuffleNetV2 baseline (``*_wn1x`` vs ``*_wnbase``, MACs within 1 %) at batch 1, in eager
mode and in onnxruntime, for each formulation of the per-sample convolution, all in one interleaved run.

Formulations of the WeightNet layers (``compactnets.layers.weightnet``):

* ``grouped``: the official one, the batch folded into the groups of one conv (a plain conv with a generated
  weight at batch 1); in ONNX only at a fixed batch (``Conv.group`` is static): exported here at batch 1;
* ``matmul``: unfold + batched matmul, exported with a dynamic batch;
* ``mixture``: the inference form (``compactnets.deploy.inference_form``): static grouped convs mixed per sample
  by the gates, BN folded; exported with a dynamic batch (what ``compactnets export`` writes).

Every model also gets its other BNs folded. Convention (conventions.md section 7): one thread, eval mode under
``torch.inference_mode()``, warm-up, then interleaved timed runs; median (and CPU-time median) reported.

    PYTHONPATH=src python benchmarks/weightnet_latency.py --widths x0_5 x1_0 --runs 100
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from common import environment, randomize_bn, time_interleaved  # benchmarks/common.py

from compactnets import create_model
from compactnets.deploy import example_input, fold_batch_norms, inference_form
from compactnets.deploy.onnx import _session
from compactnets.layers import set_per_sample_impl


def eager_form(model: torch.nn.Module, impl: str) -> torch.nn.Module:
    """``impl`` 'mixture': the inference form; otherwise the model with that per-sample conv, BNs folded."""
    if impl == "mixture":
        return inference_form(model)
    form = set_per_sample_impl(copy.deepcopy(model).eval(), impl)
    fold_batch_norms(form, example_input(form))
    return form


def onnx_session(form: torch.nn.Module, path: Path, dynamic: bool):
    x = example_input(form, 2 if dynamic else 1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            form, (x,), str(path), input_names=["input"], output_names=["logits"], dynamo=False,
            dynamic_axes={"input": {0: "batch"}} if dynamic else None,
        )  # fmt: skip
    session = _session(path, threads=1)
    with torch.no_grad():
        expected = form(x).numpy()
    error = np.abs(session.run(None, {"input": x.numpy()})[0] - expected).max() / np.abs(expected).max()
    return session, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", nargs="+", default=["x0_5", "x1_0"])
    parser.add_argument("--impls", nargs="+", default=["grouped", "matmul", "mixture"])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    functions, notes = {}, {}
    x1 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            base = create_model(f"shufflenet_v2_{width}_wnbase").eval()
            wn = create_model(f"shufflenet_v2_{width}_wn1x").eval()
            randomize_bn(base)
            randomize_bn(wn)
            forms = {("wnbase", "-"): inference_form(base)}
            forms.update({("wn1x", impl): eager_form(wn, impl) for impl in args.impls})
            for (kind, impl), form in forms.items():
                functions[(width, kind, impl, "eager")] = lambda f=form: f(x1)
                dynamic = impl != "grouped"
                session, error = onnx_session(form, Path(tmp) / f"{width}_{kind}_{impl}.onnx", dynamic)
                feed = {"input": x1.numpy()}
                functions[(width, kind, impl, "onnxruntime")] = lambda s=session, feed=feed: s.run(None, feed)
                notes[(width, kind, impl, "onnxruntime")] = f"batch {'dynamic' if dynamic else '1'}, err {error:.0e}"
        with torch.inference_mode():
            times = time_interleaved(functions, args.warmup, args.runs)
    print(environment())
    print(f"batch 1, {args.runs} interleaved rounds after {args.warmup} warm-up; ratio = wn1x / wnbase (same backend)")
    print(f"{'width':6s} {'model':7s} {'per-sample conv':15s} {'backend':12s} {'median ms':>9s} {'cpu ms':>7s} "
          f"{'ratio':>6s} {'cpu ratio':>9s}  note")  # fmt: skip
    for (width, kind, impl, backend), (wall, cpu) in times.items():
        base_wall, base_cpu = times[(width, "wnbase", "-", backend)]
        ratio = statistics.median(wall) / statistics.median(base_wall)
        cpu_ratio = statistics.median(cpu) / statistics.median(base_cpu)
        note = notes.get((width, kind, impl, backend), "")
        print(
            f"{width:6s} {kind:7s} {impl:15s} {backend:12s} {1e3 * statistics.median(wall):9.2f} "
            f"{1e3 * statistics.median(cpu):7.2f} {ratio:6.2f} {cpu_ratio:9.2f}  {note}"
        )


if __name__ == "__main__":
    main()
