"""The binary kernel's native code keeps inside its buffers whatever it is called with: every entry point checks its
sizes against the byte lengths of the buffers it is handed (a wrong call fails with "bad arguments"), and the kernel
tests of test_packed.py pass with csrc/binconv.c built with AddressSanitizer and UndefinedBehaviorSanitizer."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compactnets.deploy import binary_kernel as bk

pytestmark = pytest.mark.skipif(not bk.is_available(), reason="the binary kernel is not built")
ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "compactnets" / "deploy" / "csrc" / "binconv.c"
BAD_ARGUMENTS = -3


def _signs(*shape, seed=0):
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)).float() * 2 - 1


def _bits_conv_call():
    """A valid 3x3 conv call writing bits through a channel order (its per-channel terms in ``_keep``)."""
    x, w = _signs(2, 70, 6, 5), _signs(24, 70, 3, 3, seed=1)
    weights = bk.prepare_weights((w < 0).permute(0, 2, 3, 1).numpy(), 1)
    bits = bk.pack_signs(x.permute(0, 2, 3, 1), 1)
    threshold, sign = torch.zeros(24, dtype=torch.int32), torch.ones(24, dtype=torch.int32)
    order = torch.randperm(24, generator=torch.Generator().manual_seed(2)).int()
    return bk.conv_call(bits, weights, (3, 3), (1, 1), (1, 1), (1, 1), threshold=threshold, threshold_sign=sign,
                        out_order=order, path=bk.kernel_path())  # fmt: skip


def test_binary_conv_refuses_sizes_that_do_not_fit_its_buffers():
    call = _bits_conv_call()
    lib, isa = bk.library(), call.isa

    def status(**changes):
        args = type(call.args).from_buffer_copy(call.args)
        for name, value in changes.items():
            setattr(args, name, value)
        return lib.cn_bconv(ctypes.byref(args), isa, 2)

    a = call.args
    assert status() == 0
    for changes in (
        dict(input_bytes=a.input_bytes - 8), dict(weight_bytes=a.weight_bytes - 8), dict(out_bytes=a.out_bytes - 1),
        dict(correction_bytes=4), dict(threshold_bytes=4 * 23), dict(threshold_sign_bytes=0), dict(out_order_bytes=8),
        dict(batch=3), dict(height=7), dict(in_pix_words=1), dict(batch=-1), dict(pad_h=-1), dict(kernel_w=0),
        dict(stride_h=0), dict(dilation_w=-2), dict(out_height=a.out_height + 1), dict(out_width=0),
        dict(group_words=3), dict(out_pad=4), dict(out_groups=5), dict(out_group_words=2), dict(out_pix_words=0),
        dict(mode=7), dict(kernel_h=2**40), dict(input=None),
    ):  # fmt: skip
        assert status(**changes) == BAD_ARGUMENTS, changes
    threshold_sign, order = call._keep[-2], call._keep[-1]
    threshold_sign[5] = 2  # a sign other than +-1 would let sign * dot overflow
    assert status() == BAD_ARGUMENTS
    threshold_sign[5] = -1
    order[3] = 24
    assert status() == BAD_ARGUMENTS
    order[3] = -1
    assert status() == BAD_ARGUMENTS


def test_packing_and_pooling_refuse_sizes_that_do_not_fit_their_buffers():
    lib, isa = bk.library(), bk.PATHS[bk.kernel_path()]
    x = torch.randn(4, 3, 100)  # 12 pixels of 100 channels in 2 groups: 1 word per group
    sign, threshold = torch.ones(100), torch.zeros(100)
    out = torch.empty(12, 2, dtype=torch.int64)

    def pack(npix=12, groups=2, per_group=50, group_words=1, pix_words=2, lengths=(4800, 400, 400, 192)):
        return lib.cn_pack_signs(x.data_ptr(), npix, groups, per_group, group_words, pix_words, sign.data_ptr(),
                                 threshold.data_ptr(), out.data_ptr(), isa, *lengths)  # fmt: skip

    assert pack() == 0
    for bad in (dict(npix=13), dict(npix=-1), dict(pix_words=1), dict(group_words=0), dict(groups=0),
                dict(per_group=51), dict(lengths=(4796, 400, 400, 192)), dict(lengths=(4800, 396, 400, 192)),
                dict(lengths=(4800, 400, 400, 184))):  # fmt: skip
        assert pack(**bad) == BAD_ARGUMENTS, bad

    bits = torch.zeros(2, 5, 5, 3, dtype=torch.int64)
    mask, pooled = torch.zeros(3, dtype=torch.int64), torch.empty(2, 3, 3, 3, dtype=torch.int64)

    def pool(geometry=(3, 3, 2, 2, 1, 1), size=(3, 3), lengths=(1200, 24, 432)):
        return lib.cn_bit_maxpool(bits.data_ptr(), 2, 5, 5, 3, mask.data_ptr(), *geometry, *size, pooled.data_ptr(),
                                  *lengths)  # fmt: skip

    assert pool() == 0
    too_short = [(1192, 24, 432), (1200, 16, 432), (1200, 24, 424)]  # each buffer 8 bytes short
    for bad in [dict(size=(4, 3)), dict(geometry=(3, 3, 0, 2, 1, 1)), dict(geometry=(3, 3, 2, 2, -1, 1))] + [
        dict(lengths=lengths) for lengths in too_short
    ]:
        assert pool(**bad) == BAD_ARGUMENTS, bad


@pytest.mark.skipif(
    not (bk.is_available() and bk.f32_conv_paths()), reason="this CPU has no float32 conv path (AVX2 and FMA)"
)
def test_float32_conv_refuses_sizes_that_do_not_fit_its_buffers():
    x = torch.randn(2, 3, 9, 10)
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(30, 3, 3, 3, generator=g), torch.randn(30, generator=g)
    conv = bk.Float32ConvSigns(weight, bias, (1, 1), (1, 1), (1, 1), torch.ones(30), torch.zeros(30), tuple(x.shape),
                               groups=2)  # fmt: skip
    conv(x)  # the input's pointer, length and strides in the arguments
    lib, a = bk.library(), conv.args

    def status(**changes):
        args = type(a).from_buffer_copy(a)
        for name, value in changes.items():
            setattr(args, name, value)
        return lib.cn_fconv32_pack(ctypes.byref(args), 2)

    assert status() == 0
    for changes in (
        dict(input_bytes=a.input_bytes - 4), dict(padded_bytes=a.padded_bytes - 4), dict(weight_bytes=4 * 24 * 27),
        dict(bias_bytes=4 * 47), dict(sign_bytes=4 * 30), dict(threshold_bytes=0), dict(out_bytes=a.out_bytes - 1),
        dict(batch=3), dict(channels=4), dict(height=10), dict(out_channels=31), dict(stride_x=-1),
        dict(stride_n=2**62), dict(kernel_w=0), dict(dilation_h=0), dict(pad_w=-1), dict(out_width=a.out_width + 1),
        dict(kernel_h=2**40), dict(input=None), dict(weight=None),
    ):  # fmt: skip
        assert status(**changes) == BAD_ARGUMENTS, changes


def _sanitizer_build(folder: Path) -> tuple[Path, str]:
    """csrc/binconv.c built with ASan and UBSan, and the libraries to preload (skips where gcc cannot)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc to build the kernel with sanitizers")
    runtimes = [subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
                for name in ("libasan.so", "libstdc++.so")]  # fmt: skip
    if not all(Path(r).is_absolute() and Path(r).exists() for r in runtimes):
        pytest.skip("gcc has no AddressSanitizer runtime (libasan.so) or no libstdc++.so to preload")
    library = folder / "_binconv_sanitized.so"
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    built = subprocess.run([gcc, *flags, "-std=c11", "-ffp-contract=off", "-pthread", "-shared", "-fPIC", str(SOURCE),
                            "-o", str(library)], capture_output=True, text=True)  # fmt: skip
    if built.returncode != 0:
        pytest.skip(f"gcc cannot build with -fsanitize=address,undefined here: {built.stderr.strip()[-300:]}")
    # The ASan runtime must come first; libstdc++ is loaded with it so that ASan can intercept C++ exceptions (torch
    # throws them; otherwise ASan stops at the first with "CHECK failed ... real___cxa_throw").
    return library, " ".join(runtimes)


def _sanitized(library: Path, preload: str, logs: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, str]:
    """``python args`` with the sanitized kernel, and the sanitizers' reports (written to files: pytest's output
    capture would swallow them)."""
    logs.mkdir()
    env = {**os.environ, "LD_PRELOAD": preload, bk.ENV_LIBRARY: str(library), "PYTHONMALLOC": "malloc",
           "ASAN_OPTIONS": f"detect_leaks=0:halt_on_error=1:log_path={logs}/asan",
           "UBSAN_OPTIONS": f"print_stacktrace=1:log_path={logs}/ubsan"}  # fmt: skip
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return done, "".join(f.read_text() for f in sorted(logs.iterdir()))


def test_kernel_tests_pass_under_address_and_undefined_behavior_sanitizers(tmp_path):
    library, preload = _sanitizer_build(tmp_path)
    # The build is the one loaded, and it catches a read past a buffer (a call lying about a length).
    probe = (
        "import torch; from compactnets.deploy import binary_kernel as bk; lib = bk.library(); "
        f"assert lib._name == {str(library)!r}, lib._name; "
        "x, out = torch.randn(1000), torch.empty(16, dtype=torch.int64); "
        "lib.cn_pack_signs(x.data_ptr(), 16, 1, 64, 1, 1, None, None, out.data_ptr(), 1, 16 * 64 * 4, 0, 0, 128)"
    )
    done, reports = _sanitized(library, preload, tmp_path / "probe", ["-c", probe])
    assert done.returncode != 0 and "ERROR: AddressSanitizer: heap-buffer-overflow" in reports, done.stderr[-3000:]

    selection = (
        "(kernel or pack_signs or bit_max_pool or every_path or matches_float_model or refuse) and not sanitizers"
    )
    pytest_args = ["-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-k", selection]
    done, reports = _sanitized(library, preload, tmp_path / "tests", [*pytest_args, "tests/test_packed.py", __file__])
    assert not reports, reports
    assert done.returncode == 0 and " passed" in done.stdout, (done.stdout + done.stderr)[-3000:]


def test_the_library_override_is_one_clear_error_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(bk.ENV_LIBRARY, str(tmp_path / "absent.so"))
    bk._load.cache_clear()
    try:
        with pytest.raises(bk.BinaryKernelUnavailable, match="absent.so cannot be loaded"):
            bk.library()
    finally:
        monkeypatch.undo()
        bk._load.cache_clear()
