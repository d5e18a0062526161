"""Shared fixtures: small generated datasets in every supported layout, and a CLI runner."""

from __future__ import annotations

import ctypes
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compactnets.cli import main as cli_main

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")

# One intra-op thread per xdist worker: `make test` runs a worker per core, and more threads than cores make
# OpenMP's spinning threads wait for each other. Tests of multi-threaded paths set their thread counts.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_SIGNAL_STACK = _SignalStack()
_libc.sigaltstack(None, ctypes.byref(_SIGNAL_STACK))  # the main thread's, as pytest's faulthandler set it


@pytest.fixture(autouse=True)
def _restore_the_signal_stack():
    """OpenVINO's CPU plugin gives the thread that compiles a model an alternate signal stack of its own (20,144
    bytes, seen with strace -k) and leaves it there. Later in the same process a Python signal handler (torch's
    SIGCHLD handler, as a subprocess ends) killed the xdist worker with SIGSEGV (SI_KERNEL, signal delivery
    failed): put back the stack the test process started with after every test."""
    yield
    _libc.sigaltstack(ctypes.byref(_SIGNAL_STACK), None)


@pytest.fixture(autouse=True)
def _restore_global_torch_state():
    """`compactnets train --deterministic` switches torch to deterministic kernels process-wide, as a script
    would; undo it so that in-process CLI runs do not leak into other tests."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def run_cli(capsys):
    """Run ``compactnets ARGS...`` in-process; return (exit status, stdout, stderr)."""

    def run(*args):
        status = cli_main([str(a) for a in args])
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def _cifar_rows(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


@pytest.fixture
def cifar10_pickles(tmp_path) -> Path:
    """CIFAR-10 python layout (cifar-10-batches-py/), 4 images per batch."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = _cifar_rows(4, i)
        with open(root / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": []}, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return tmp_path


@pytest.fixture
def cifar100_pickles(tmp_path) -> Path:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for i, name in enumerate(("train", "test")):
        data, _ = _cifar_rows(6, i)
        with open(root / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": [0, 1, 2, 3, 99, 50], "coarse_labels": [0] * 6}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []}, f)
    return root


def _save_modes(folder: Path, size=(40, 30)) -> None:
    """One image per awkward mode: grayscale, CMYK JPEG, RGBA PNG, palette PNG with transparency, RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    rgb.convert("L").save(folder / "gray.jpg")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("RGBA").save(folder / "rgba.png")
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    rgb.save(folder / "rgb.jpeg")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """ImageFolder tree with train/ and val/, two classes, images in every awkward mode."""
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            _save_modes(tmp_path / split / cls)
    return tmp_path
