"""A packed file is untrusted input: mutated headers and tensors of real exports, each loaded and run in a child
process (batches of files per child; the file a child killed by a signal did not report is rerun alone).

The bases: the shipped ``nin_xnornet`` (format version 2), ``nin_gc_xnornet`` with random weights and trained-like
batch norms (grouped convs, shuffles, negative threshold signs), and the same file written as version 1.

A file is *impossible* when the float computation it describes cannot run: :func:`reference` computes it with
plain torch ops (a binary conv is ``F.conv2d`` of its +-1 weights on +-1 inputs; a bits output is the +-1 signs
the next binary node reads) and raises where a torch op refuses its arguments, a binary node gets floats or a
float node signs, bits reach a node laid out for other groups, a per-channel tensor has another length or dtype
than its node's channels and the format's, or the chain does not end in [N, num_classes] logits. Each mutation
also says what it must give: ``reject`` (a value outside its type or range, a tensor of the wrong dtype, shape or
length, a header that is not the format's), ``accept`` (a value change that leaves a consistent model: a
threshold, a sign, a pooling mask, weights) or ``either`` (structural changes: nodes dropped, duplicated, swapped,
renamed; in-range geometry). Asserted: no child dies, every rejection is one ``PackedError`` line, every ``reject``
is rejected and every ``accept`` accepted, and every accepted file runs and passes :func:`reference`.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compactnets.deploy import binary_kernel as bk
from compactnets.deploy.packed_format import FORMAT

pytestmark = pytest.mark.skipif(not bk.is_available(), reason="the binary kernel is not built")

CHILDREN = 4  # batches of files, two children at a time
POSITIVE = {"groups", "channels", "in_channels", "out_channels", "out_groups", "kernel_size", "stride", "dilation",
            "output_size", "divisor_override", "out_shuffle"}  # fmt: skip


def _require(condition, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _per_channel(t: dict, name: str, channels: int, dtypes) -> torch.Tensor:
    _require(name in t, f"no tensor {name}")
    _require(
        t[name].dtype in dtypes and tuple(t[name].shape) == (channels,), f"{name}: {t[name].dtype} {t[name].shape}"
    )
    return t[name]


def reference(header: dict, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The logits a packed file describes, computed on floats with torch ops (see the module docstring)."""
    layout = None  # while x holds the +-1 signs of packed bits: the groups they are laid out in
    for i, node in enumerate(header["nodes"]):
        t = {k.partition(".")[2]: v for k, v in tensors.items() if k.partition(".")[0] == str(i)}
        op = node["op"]
        takes_signs = op in ("binary_conv2d", "bit_max_pool2d")
        _require((layout is not None) == takes_signs, f"node {i} ({op}) gets {'signs' if layout else 'floats'}")
        _require(all(v.dtype in (torch.float32, torch.uint8, torch.int8, torch.int16, torch.int32)
                     for v in t.values()), "a tensor of a dtype the format has not")  # fmt: skip
        if takes_signs:
            _require(node["groups"] == layout, f"node {i} reads bits of {layout} groups as {node['groups']}")
        if op == "conv2d":
            x = F.conv2d(x, t["weight"], t.get("bias"), node["stride"], node["padding"], node["dilation"],
                         node["groups"])  # fmt: skip
        elif op == "batch_norm":
            c = x.shape[1]
            bn = [_per_channel(t, k, c, (torch.float32,)) for k in ("running_mean", "running_var", "weight", "bias")]
            x = F.batch_norm(x, *bn, False, 0.0, node["eps"])
        elif op == "relu":
            x = F.relu(x)
        elif op == "max_pool2d":
            x = F.max_pool2d(x, node["kernel_size"], node["stride"], node["padding"], node["dilation"],
                             node["ceil_mode"])  # fmt: skip
        elif op == "avg_pool2d":
            x = F.avg_pool2d(x, node["kernel_size"], node["stride"], node["padding"], node["ceil_mode"],
                             node["count_include_pad"], node["divisor_override"])  # fmt: skip
        elif op == "adaptive_avg_pool2d":
            x = F.adaptive_avg_pool2d(x, node["output_size"])
        elif op == "flatten":
            x = torch.flatten(x, node["start_dim"], node["end_dim"])
        elif op == "linear":
            x = F.linear(x, t["weight"], t.get("bias"))
        elif op == "channel_shuffle":
            b, c, h, w = x.shape
            x = x.reshape(b, node["groups"], c // node["groups"], h, w).transpose(1, 2).reshape(b, c, h, w)
        elif op == "pack_signs":
            c = x.shape[1]
            _require(node["channels"] == c and c % node["groups"] == 0, f"node {i}: channels")
            if "threshold" in t or "sign" in t:
                sign, threshold = (
                    _per_channel(t, k, c, (torch.float32,))[:, None, None] for k in ("sign", "threshold")
                )
                _require(((sign == 1) | (sign == -1)).all(), "sign values")
                negative = ~(sign * x >= threshold)
            else:
                negative = ~(x > 0)
            x, layout = torch.where(negative, -1.0, 1.0), node["groups"]
        elif op == "bit_max_pool2d":
            _require(not node["ceil_mode"], "ceil_mode on bits")
            mask = _per_channel(t, "and_mask", x.shape[1], (torch.uint8,))
            _require((mask <= 1).all(), "and_mask values")
            pool = (node["kernel_size"], node["stride"], node["padding"])
            x = torch.where(mask.bool()[:, None, None], F.max_pool2d(x, *pool), -F.max_pool2d(-x, *pool))
        elif op == "binary_conv2d":
            cin, cout, groups = node["in_channels"], node["out_channels"], node["groups"]
            (kh, kw), per_group = node["kernel_size"], cin // groups
            _require(x.shape[1] == cin, f"node {i}: in_channels")
            bits = t["weight_bits"]
            _require(bits.dtype == torch.uint8 and tuple(bits.shape) == (cout, -(-kh * kw * per_group // 8)), "bits")
            negative = np.unpackbits(bits.numpy(), axis=-1, bitorder="little")[:, : kh * kw * per_group]
            weight = torch.from_numpy(1 - 2 * negative.astype(np.float32)).reshape(cout, kh, kw, per_group)
            dot = F.conv2d(x, weight.permute(0, 3, 1, 2), None, node["stride"], node["padding"], node["dilation"],
                           groups)  # fmt: skip
            if node["output"] == "float":
                alpha, bias = (_per_channel(t, k, cout, (torch.float32,))[:, None, None] for k in ("alpha", "bias"))
                x, layout = alpha * dot + bias, None
                x = F.relu(x) if node["relu"] else x
                continue
            threshold = _per_channel(t, "threshold", cout, (torch.int16, torch.int32))
            order = torch.arange(cout)
            if header["version"] == 1:
                sign = _per_channel(t, "threshold_sign", cout, (torch.int8,))
                _require(((sign == 1) | (sign == -1)).all(), "threshold_sign values")
                if "out_order" in t:
                    order = _per_channel(t, "out_order", cout, (torch.int16, torch.int32)).long()
                    _require(torch.equal(order.sort().values, torch.arange(cout)), "out_order is no permutation")
            else:
                sign_bits = _per_channel(t, "threshold_sign_bits", -(-cout // 8), (torch.uint8,))
                sign = 1 - 2 * torch.from_numpy(np.unpackbits(sign_bits.numpy(), bitorder="little")[:cout]).long()
                for g in node.get("out_shuffle", []):
                    order = order.view(g, cout // g).t().reshape(-1)
            negative = sign[:, None, None] * dot[:, order] < threshold[:, None, None]
            _require(cout % node["out_groups"] == 0, "out_groups")
            x, layout = torch.where(negative, -1.0, 1.0), node["out_groups"]
        else:
            raise ValueError(f"node {i}: unknown op {op!r}")
    classes = header["pretrained_cfg"]["num_classes"]
    _require(layout is None and x.dim() == 2 and x.shape[1] == classes, f"output {tuple(x.shape)}")
    return x


# ------------------------------------------------------------------------------------------------ the child side


def _read(path: str) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()[FORMAT]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def child(paths: list[str]) -> None:
    """Load and run each file; one JSON line per file, flushed (a crash shows which file was last)."""
    from compactnets.deploy.packed_format import PackedError
    from compactnets.deploy.packed_runtime import load_packed

    torch.set_num_threads(1)
    for path in paths:
        try:
            runner = load_packed(path, threads=1)
        except PackedError as e:
            result = {"outcome": "rejected", "message": str(e)}
        except Exception as e:  # anything but a PackedError is a failure of the loader
            result = {"outcome": "load error", "message": f"{type(e).__name__}: {e}"}
        else:
            result = {"outcome": "accepted"}
            try:
                x = torch.randn(2, *runner.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
                logits = runner(x)
            except Exception as e:
                result = {"outcome": "run error", "message": f"{type(e).__name__}: {e}"}
            else:
                try:
                    expected = reference(*_read(path), x)
                    result["same_shape"] = logits.shape == expected.shape
                    result["max_diff"] = (logits - expected).abs().max().item()
                except Exception as e:
                    result = {"outcome": "impossible accepted", "message": f"{type(e).__name__}: {e}"}
        print(json.dumps({"path": path, **result}), flush=True)


def _run_children(paths: list[str]) -> tuple[dict, list[str]]:
    """Results by path, and the files that crashed a child (the first file a crashed child did not report, run
    again alone; the batch then goes on after it)."""

    def run(batch):
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_packed_fuzz as t; " \
               "t.child(sys.argv[1:])"  # fmt: skip
        done = subprocess.run([sys.executable, "-c", code, *batch], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert done.returncode <= 0, f"a child failed without a signal: {done.stderr[-2000:]}"
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        return done.returncode, {r.pop("path"): r for r in lines}

    def run_batch(batch):
        results, crashed = {}, []
        while batch:
            status, found = run(batch)
            results.update(found)
            if status == 0:
                break
            suspect, *batch = [p for p in batch if p not in found]
            status, found = run([suspect])
            results.update(found)
            if status < 0:
                crashed.append(f"{Path(suspect).name} (signal {-status})")
        return results, crashed

    results, crashed = {}, []
    with ThreadPoolExecutor(2) as pool:
        for found, lost in pool.map(run_batch, [paths[i::CHILDREN] for i in range(CHILDREN)]):
            results.update(found)
            crashed += lost
    return results, crashed


# ------------------------------------------------------------------------------------------------ the mutations


def _attribute_mutations(key: str, value) -> list[tuple[str, object, str]]:
    """(label, new value, expectation) for one attribute."""
    wrong_types = [("string", "1", "reject"), ("float", 1.5, "reject"), ("bool", True, "reject"),
                   ("null", None, "reject")]  # fmt: skip
    if isinstance(value, bool):
        return [("flipped", not value, "either"), ("int", int(value), "reject"), ("null", None, "reject")]
    if isinstance(value, str):
        return [("renamed", value[:-1], "reject"), ("other", "bits" if value == "float" else "float", "either"),
                ("int", 1, "reject")]  # fmt: skip
    if isinstance(value, float):
        return [("negative", -1.0, "reject"), ("nan", math.nan, "reject"), ("zero", 0.0, "either"),
                ("string", "1e-5", "reject")]  # fmt: skip
    if key in ("start_dim", "end_dim"):  # any other value leaves no [N, classes] output here
        return [("zero", 0, "reject"), ("out of range", 9, "reject"), ("below range", -9, "reject"), *wrong_types]
    if value is None:  # divisor_override
        return [("zero", 0, "reject"), ("negative", -1, "reject"), ("huge", 2**40, "reject"), ("four", 4, "either"),
                ("string", "4", "reject")]  # fmt: skip
    zero = "reject" if key in POSITIVE else "either"
    if isinstance(value, int):
        return [("negative", -1, "reject"), ("zero", 0, zero), ("huge", 2**40, "reject"), ("doubled", 2 * value,
                "either"), ("list", [value], "reject"), *wrong_types]  # fmt: skip
    mutations = [("scalar", value[0], "reject"), ("longer", [*value, value[0]], "reject"),
                 ("empty", [], "either" if key == "out_shuffle" else "reject")]  # fmt: skip
    for j in range(len(value)):
        replaced = [(what, v, expect) for what, v, expect in wrong_types]
        replaced += [("negative", -1, "reject"), ("zero", 0, zero), ("huge", 2**40, "reject"),
                     ("plus one", value[j] + 1, "either")]  # fmt: skip
        mutations += [(f"[{j}] {what}", [*value[:j], v, *value[j + 1 :]], expect) for what, v, expect in replaced]
    return mutations


def _tensor_mutations(op: str, name: str, t: torch.Tensor) -> list[tuple[str, torch.Tensor | None, str]]:
    """(label, new tensor or None to delete it, expectation) for one tensor of a node of ``op``."""
    binary_threshold = op == "binary_conv2d" and name == "threshold"
    allowed = {torch.int16, torch.int32} if binary_threshold else {t.dtype}
    wrong = next(d for d in (torch.float64, torch.int64, torch.float16) if d not in allowed)
    optional = (op in ("conv2d", "linear") and name == "bias") or name == "out_order"
    mutations = [
        ("emptied", t.flatten()[:0], "reject"),
        ("truncated", t[:-1], "reject"),
        ("wrong dtype", t.to(wrong), "reject"),
        ("extra dim", t.unsqueeze(0), "reject"),
        ("flattened" if t.dim() > 1 else "doubled", t.flatten() if t.dim() > 1 else torch.cat([t, t]), "reject"),
        ("deleted", None, "either" if optional else "reject"),
    ]
    first = torch.arange(len(t)) == 0
    g = torch.Generator().manual_seed(t.numel())
    if binary_threshold:
        mutations += [("values changed", t + torch.randint(-3, 4, t.shape, generator=g, dtype=t.dtype), "accept"),
                      ("as int32", t.int(), "accept")]  # fmt: skip
    elif name == "threshold_sign_bits":
        mutations.append(("random signs", torch.randint(0, 256, t.shape, generator=g, dtype=torch.uint8), "accept"))
    elif name == "threshold_sign":
        mutations += [("a sign flipped", torch.where(first, -t, t), "accept"),
                      ("a zero sign", torch.where(first, 0, t).to(t.dtype), "reject")]  # fmt: skip
    elif name == "out_order":
        swapped, repeated = t.clone(), t.clone()
        swapped[[0, 1]] = t[[1, 0]]
        repeated[0] = t[1]
        mutations += [("two swapped", swapped, "accept"), ("a repeat", repeated, "reject"),
                      ("out of range", torch.where(t == 0, len(t), t).to(t.dtype), "reject")]  # fmt: skip
    elif name == "and_mask":
        mutations += [("flipped", 1 - t, "accept"), ("a two", torch.where(first, 2, t).to(t.dtype), "reject")]
    elif op == "pack_signs" and name == "sign":
        mutations += [("a half", torch.where(first, 0.5, t), "reject"), ("a sign flipped", torch.where(first, -t, t),
                      "accept")]  # fmt: skip
    elif op == "pack_signs":
        mutations += [("nan", torch.where(first, math.nan, t), "reject"), ("inf", torch.where(first, math.inf, t),
                      "accept"), ("shifted", t + 0.25, "accept")]  # fmt: skip
    elif t.dtype == torch.float32:
        mutations.append(("scaled", t * 1.5, "accept"))
    return mutations


def _reindexed(tensors: dict, keep: list[int]) -> dict:
    """The tensors of nodes ``keep`` (old indices, in their new order), renamed to their new positions."""
    return {f"{new}.{k.partition('.')[2]}": v for new, old in enumerate(keep) for k, v in tensors.items()
            if k.partition(".")[0] == str(old)}  # fmt: skip


def _mutations(name: str, header: dict, tensors: dict, rng: random.Random, per_attribute: int):
    """(label, header or raw header text, tensors, expectation) for one base file."""

    def with_node(i, key, value):
        h = json.loads(json.dumps(header))
        h["nodes"][i][key] = value
        return h

    yield f"{name}: unchanged", header, tensors, "accept"
    nodes = header["nodes"]
    for i, node in enumerate(nodes):
        for key, value in node.items():
            if key == "op":
                continue
            for label, new, expect in rng.sample(_attribute_mutations(key, value), per_attribute):
                yield f"{name}: node {i} {key} {label}", with_node(i, key, new), tensors, expect
        for what, keep in (("dropped", [j for j in range(len(nodes)) if j != i]),
                           ("duplicated", [*range(i + 1), *range(i, len(nodes))]),
                           ("swapped with the next", [*range(i), i + 1, i, *range(i + 2, len(nodes))])):  # fmt: skip
            if max(keep) < len(nodes) and rng.random() < 0.4:
                h = json.loads(json.dumps(header))
                h["nodes"] = [nodes[j] for j in keep]
                yield f"{name}: node {i} {what}", h, _reindexed(tensors, keep), "either"
        if rng.random() < 0.3:
            yield f"{name}: node {i} op unknown", with_node(i, "op", node["op"] + "3d"), tensors, "reject"
            other = rng.choice(["relu", "flatten", "conv2d", "pack_signs", "binary_conv2d", "channel_shuffle"])
            yield f"{name}: node {i} op {other}", with_node(i, "op", other), tensors, "either"
    for key in sorted(tensors):
        index, _, tensor_name = key.partition(".")
        for label, new, expect in _tensor_mutations(nodes[int(index)]["op"], tensor_name, tensors[key]):
            if rng.random() < 0.5 and expect != "accept":
                continue
            mutated = {k: v for k, v in tensors.items() if k != key}
            if new is not None:
                mutated[key] = new.contiguous()
            yield f"{name}: tensor {key} {label}", header, mutated, expect
    yield f"{name}: tensor of no node", header, {**tensors, f"{len(nodes)}.weight": torch.zeros(1)}, "reject"
    yield f"{name}: unknown tensor", header, {**tensors, "0.junk": torch.zeros(1)}, "reject"


def _header_mutations(header: dict, tensors: dict):
    """Header-level mutations of one base (all but two impossible)."""

    def changed(path, value):
        h = json.loads(json.dumps(header))
        target = h
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return h

    cfg = ("pretrained_cfg",)
    cases = [
        ("version 0", changed(("version",), 0), "reject"),
        ("version string", changed(("version",), "2"), "reject"),
        ("version 1 of a version 2 file", changed(("version",), 1), "reject"),
        ("version 3", changed(("version",), 3), "reject"),
        ("no version", changed(("version",), KeyError), "reject"),
        ("other format", changed(("format",), "onnx"), "reject"),
        ("nodes empty", changed(("nodes",), []), "reject"),
        ("nodes an object", changed(("nodes",), {"0": {}}), "reject"),
        ("a node a list", changed(("nodes", 0), ["conv2d"]), "reject"),
        ("unknown key", changed(("extra",), 1), "reject"),
        ("input_size 40000", changed((*cfg, "input_size"), [3, 40000, 40000]), "reject"),
        ("input_size 4 channels", changed((*cfg, "input_size"), [4, 32, 32]), "reject"),
        ("input_size 16", changed((*cfg, "input_size"), [3, 16, 16]), "either"),
        ("input_size 2", changed((*cfg, "input_size"), [3, 2, 2]), "either"),
        ("no input_size", changed((*cfg, "input_size"), KeyError), "reject"),
        ("one mean", changed((*cfg, "mean"), [0.5]), "reject"),
        ("zero std", changed((*cfg, "std"), [0, 1, 1]), "reject"),
        ("num_classes 11", changed((*cfg, "num_classes"), 11), "reject"),
        ("num_classes string", changed((*cfg, "num_classes"), "10"), "reject"),
        ("architecture number", changed((*cfg, "architecture"), 3), "reject"),
        ("class_names short", changed(("class_names",), ["a"]), "reject"),
        ("param_count negative", changed(("param_count",), -1), "reject"),
        ("pretrained_cfg a list", changed(cfg, [1]), "reject"),
        ("no class_names", changed(("class_names",), None), "accept"),
    ]
    for label, h, expect in cases:
        yield f"header {label}", h, tensors, expect
    yield "header not JSON", '{"format": "compactnets.packed", ', tensors, "reject"
    yield "header a list", "[1, 2]", tensors, "reject"
    yield "header nested deeply", "[" * 100000 + "]" * 100000, tensors, "reject"


def _version_1(header: dict, tensors: dict) -> tuple[dict, dict]:
    """The same model as format version 1 wrote it (int8 signs, an out_order tensor)."""
    from compactnets.layers.fold import compose, shuffle_perm

    header, tensors = json.loads(json.dumps(header)), dict(tensors)
    header["version"] = 1
    for i, node in enumerate(header["nodes"]):
        bits = tensors.pop(f"{i}.threshold_sign_bits", None)
        if bits is None:
            continue
        cout = node["out_channels"]
        negative = np.unpackbits(bits.numpy(), bitorder="little")[:cout].astype(np.int8)
        tensors[f"{i}.threshold_sign"] = torch.from_numpy(1 - 2 * negative)
        order = None
        for g in node.pop("out_shuffle", []):
            order = compose(order, shuffle_perm(cout, g))
        if order is not None:
            tensors[f"{i}.out_order"] = order.to(torch.int16)
    return header, tensors


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from test_packed import _with_bn_statistics

    from compactnets import create_model
    from compactnets.deploy.packed_export import export_packed

    folder = tmp_path_factory.mktemp("fuzz")
    found = {}
    for name, model in (("nin_xnornet", create_model("nin_xnornet", pretrained=True)),
                        ("nin_gc_xnornet", _with_bn_statistics(create_model("nin_gc_xnornet"), seed=3))):  # fmt: skip
        path = folder / f"{name}.packed.safetensors"
        export_packed(model.eval(), path, class_names=[f"c{i}" for i in range(10)], check=False)
        found[name] = _read(str(path))
    found["nin_gc_xnornet v1"] = _version_1(*found["nin_gc_xnornet"])
    return folder, found


def test_mutated_packed_files_never_crash_and_impossible_ones_are_refused(bases):
    from safetensors.torch import save_file

    folder, found = bases
    rng = random.Random(17)
    cases = []
    for name, (header, tensors) in found.items():
        per_attribute = 2 if name == "nin_xnornet" else 1
        cases += list(_mutations(name, header, tensors, rng, per_attribute))
        if name != "nin_gc_xnornet v1":
            cases += [(f"{name}: {label}", h, t, e) for label, h, t, e in _header_mutations(header, tensors)]
    files = {}
    for k, (label, header, tensors, expect) in enumerate(cases):
        path = str(folder / f"m{k:04d}.packed.safetensors")
        text = header if isinstance(header, str) else json.dumps(header)
        save_file({k: v.clone() for k, v in tensors.items()}, path, metadata={FORMAT: text})  # no shared memory
        files[path] = (label, expect)
    results, crashed = _run_children(list(files))

    def failures(condition):
        return [f"{files[p][0]}: {r}" for p, r in results.items() if condition(files[p][1], r)]

    outcomes = [r["outcome"] for r in results.values()]
    print(f"\npacked fuzz: {len(files)} files, {outcomes.count('accepted')} accepted, {outcomes.count('rejected')} "
          f"rejected, crashes {len(crashed)}, impossible accepted {outcomes.count('impossible accepted')}")  # fmt: skip
    assert not crashed, crashed
    assert len(results) == len(files), "a child did not report every file"
    assert not failures(lambda e, r: r["outcome"] not in ("accepted", "rejected")), "loader or runner errors"
    assert not failures(lambda e, r: r["outcome"] == "rejected" and "\n" in r["message"]), "multi-line errors"
    assert not failures(lambda e, r: e == "reject" and r["outcome"] != "rejected"), "impossible files accepted"
    assert not failures(lambda e, r: e == "accept" and r["outcome"] != "accepted"), "valid files refused"
    assert not failures(lambda e, r: r["outcome"] == "accepted" and not r["same_shape"]), "shapes differ"
    unchanged = [r for p, r in results.items() if files[p][0].endswith("unchanged")]
    assert len(unchanged) == 3 and all(r["max_diff"] < 1e-3 for r in unchanged), unchanged


def test_cli_refuses_an_impossible_packed_file_in_one_line(bases, run_cli, tmp_path):
    from PIL import Image
    from safetensors.torch import save_file

    header, tensors = json.loads(json.dumps(bases[1]["nin_xnornet"][0])), bases[1]["nin_xnornet"][1]
    header["nodes"][2]["out_channels"] = -160
    path = tmp_path / "bad.packed.safetensors"
    save_file(tensors, str(path), metadata={FORMAT: json.dumps(header)})
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    for args in (("eval", "--packed", path, "--limit", "4"), ("predict", "--packed", path, image)):
        status, out, err = run_cli(*args)
        assert status == 2 and out == "" and err.count("\n") == 1, err
        assert "node 2 (binary_conv2d): out_channels = -160 should be an integer in 1..65536" in err
