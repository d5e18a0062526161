"""Packed XNOR-Net speed on this CPU: each binary layer against torch's float conv, and whole networks at batch 1
and 64 against the fastest float execution (binarized weights precomputed), the float simulation as ``compactnets
eval`` runs it, and the full-precision NIN.

    PYTHONPATH=src python benchmarks/binary_inference.py --threads 1

Every timing interleaves the things compared, round by round (whole networks: 8 / batch calls back to back per
round, so each runs with its weights in cache), and reports the median process CPU time (with one thread: the
latency an idle core gives; wall time beside it); the ratios are the figures. Weights are generated
(speed does not depend on their values) unless ``--checkpoint`` is given. Pausing background jobs meanwhile gives
steadier numbers.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compactnets import create_model
from compactnets.deploy import binary_kernel as bk
from compactnets.deploy.packed import export_packed, load_packed
from compactnets.engine.evaluate import load_model
from compactnets.layers import BinaryConv2d
from compactnets.layers.fold import fold_bn

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, randomize_bn, time_interleaved  # noqa: E402


def precomputed_float(model: nn.Module) -> nn.Module:
    """The same network with each binary conv replaced by a float conv holding sign(W) * alpha (no binarization
    per call) and each conv -> BN pair folded: the fastest float form of the XNOR model."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, BinaryConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, child.dilation, child.groups, bias=child.bias is not None)  # fmt: skip
                with torch.no_grad():
                    conv.weight.copy_(child.binary_weight())
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(module, name, conv)
        conv, norm = getattr(module, "conv", None), getattr(module, "norm", None)
        if type(conv) is nn.Conv2d and isinstance(norm, nn.BatchNorm2d) and _norm_follows_conv(module):
            weight, bias = fold_bn(conv.weight, conv.bias, norm)
            folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                               conv.dilation, conv.groups, bias=True)  # fmt: skip
            with torch.no_grad():
                folded.weight.copy_(weight)
                folded.bias.copy_(bias)
            module.conv, module.norm = folded, nn.Identity()
    return model


def _norm_follows_conv(block: nn.Module) -> bool:
    names = [n for n, _ in block.named_children()]
    return names.index("norm") > names.index("conv")  # binary blocks normalise their input: norm comes first


def onnx_session(model: nn.Module, batch: int, tmp: Path, threads: int):
    """An onnxruntime session of ``model`` (or the reason there is none)."""
    try:
        import onnxruntime as ort

        path = tmp / f"float_b{batch}.onnx"
        torch.onnx.export(model, (torch.randn(batch, 3, 32, 32),), str(path), input_names=["x"], dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session
    except Exception as e:  # noqa: BLE001 (a missing baseline is reported, not fatal)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def layer_table(model: nn.Module, runs: int, threads: int) -> list[str]:
    """Each binary conv of the model at its own input size (batch 1): kernel (bits in, bits out: what the packed
    runner runs) vs torch's float conv of the same +-1 input and sign * alpha weight."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, a, o: shapes.append((m, a[0].shape))) for m in model.modules()
             if isinstance(m, BinaryConv2d)]  # fmt: skip
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    paths = bk.supported_paths()
    lines = [
        "| layer | torch NCHW | torch channels-last | "
        + " | ".join(f"kernel {p}" for p in paths)
        + " | best speed-up |",
        "|---" * (4 + len(paths)) + "|",
    ]
    g = torch.Generator().manual_seed(0)
    for conv, shape in shapes:
        x = torch.randint(0, 2, tuple(shape), generator=g).float() * 2 - 1
        w_hat = conv.binary_weight().detach()
        xc, wc = x.contiguous(memory_format=torch.channels_last), w_hat.contiguous(memory_format=torch.channels_last)
        bias = conv.bias.detach()
        weights = bk.prepare_weights((w_hat < 0).permute(0, 2, 3, 1).numpy(), conv.groups)
        bits = bk.pack_signs(x.permute(0, 2, 3, 1), conv.groups)
        k = weights.in_channels_per_group * conv.kernel_size[0] * conv.kernel_size[1]
        threshold = torch.randint(-k, k, (conv.out_channels,), generator=g).int()
        sign = torch.ones(conv.out_channels, dtype=torch.int8)
        geometry = (conv.kernel_size, conv.stride, conv.padding, conv.dilation)
        fns = {
            "nchw": lambda x=x, w=w_hat, b=bias, c=conv: F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups),
            "cl": lambda x=xc, w=wc, b=bias, c=conv: F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups),
        }
        for p in paths:
            fns[p] = lambda p=p, bits=bits, wt=weights, t=threshold, s=sign, geometry=geometry: bk.binary_conv(
                bits, wt, *geometry, threshold=t, threshold_sign=s, threads=threads, path=p
            )
        times = {name: median_ms(t[1]) for name, t in time_interleaved(fns, warmup=5, runs=runs).items()}
        best_float = min(times["nchw"], times["cl"])
        name = f"{conv.in_channels}->{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]} @{shape[-1]}²"
        cells = " | ".join(f"{times[p]:.3f}" for p in paths)
        lines.append(f"| {name} | {times['nchw']:.3f} | {times['cl']:.3f} | {cells} | "
                     f"**{best_float / times[paths[-1]]:.1f}×** ({paths[-1]}) |")  # fmt: skip
    return lines


def network_table(model, runner, batch: int, runs: int, threads: int, tmp: Path) -> list[str]:
    fast = precomputed_float(model)
    fast_cl = copy.deepcopy(fast).to(memory_format=torch.channels_last)
    fp = {name: randomized(create_model(name)) for name in ("nin_k3", "nin")}
    fp_cl = {name: copy.deepcopy(m).to(memory_format=torch.channels_last) for name, m in fp.items()}
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    xc = x.contiguous(memory_format=torch.channels_last)
    fns = {
        "packed": lambda: runner(x),
        "float, weights precomputed, NCHW": lambda: fast(x),
        "float, weights precomputed, channels-last": lambda: fast_cl(xc),
        "float simulation as eval runs it (NCHW)": lambda: model(x),
    }
    session = onnx_session(fast, batch, tmp, threads)
    if not isinstance(session, str):
        feed = {"x": x.numpy()}
        fns["float, weights precomputed, onnxruntime"] = lambda: session.run(None, feed)
    for name in fp:
        fns[f"full-precision {name}, NCHW"] = lambda m=fp[name]: m(x)
        fns[f"full-precision {name}, channels-last"] = lambda m=fp_cl[name]: m(xc)
    # Back to back within a round, so that each runs with its own weights in cache as a serving process would.
    repeat = max(1, 8 // batch)
    with torch.no_grad():
        times = time_interleaved({k: _repeated(f, repeat) for k, f in fns.items()}, warmup=3, runs=runs)
    cpu = {name: median_ms(t[1]) / repeat for name, t in times.items()}
    wall = {name: median_ms(t[0]) / repeat for name, t in times.items()}
    fastest_float = min(v for k, v in cpu.items() if k.startswith("float, weights precomputed"))
    lines = [
        f"batch {batch} ({repeat} calls back to back per round): median CPU ms per batch (wall ms), images/s from CPU "
        "ms; how much faster packed is",
        "| execution | CPU ms | (wall ms) | images/s | packed is |",
        "|---|---|---|---|---|",
    ]
    for name, ms in cpu.items():
        ratio = "" if name == "packed" else f"{ms / cpu['packed']:.2f}× faster"
        lines.append(f"| {name} | {ms:.3f} | ({wall[name]:.3f}) | {1e3 * batch / ms:,.0f} | {ratio} |")
    lines.append(f"packed vs the fastest float execution of the same network: **{fastest_float / cpu['packed']:.2f}×**")
    fastest = min((k for k in cpu if k.startswith("float, weights precomputed")), key=cpu.get)
    with torch.no_grad():  # the two alone, so that the others' weights do not evict theirs from the caches
        pair = time_interleaved({k: _repeated(fns[k], repeat) for k in ("packed", fastest)}, warmup=3, runs=runs)
    head = {name: median_ms(t[1]) / repeat for name, t in pair.items()}
    lines.append(f"head to head with {fastest} alone: {head['packed']:.3f} vs {head[fastest]:.3f} CPU ms, "
                 f"**{head[fastest] / head['packed']:.2f}×**")  # fmt: skip
    if isinstance(session, str):
        lines.append(f"(no onnxruntime baseline: {session})")
    return lines


def _repeated(fn, times: int):
    def run():
        for _ in range(times):
            fn()

    return run


def randomized(model: nn.Module) -> nn.Module:
    randomize_bn(model)
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="nin_xnornet checkpoint (default: generated weights)")
    parser.add_argument("--threads", type=int, help="torch and kernel threads (default: torch's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip-layers", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model = load_model(args.checkpoint)[0] if args.checkpoint else randomized(create_model("nin_xnornet"))
    print(f"{environment()}; binary kernel path: {bk.kernel_path()} (of {', '.join(bk.supported_paths())})")
    if not args.skip_layers:
        print("\nper binary layer, batch 1: median ms")
        print("\n".join(layer_table(model, args.runs * 3, threads)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_packed(model, tmp / "m.packed.safetensors")
        runner = load_packed(tmp / "m.packed.safetensors", threads=threads)
        for batch in args.batch_sizes:
            print()
            print("\n".join(network_table(model, runner, batch, max(5, args.runs // (1 + batch // 16)), threads, tmp)))


if __name__ == "__main__":
    main()
