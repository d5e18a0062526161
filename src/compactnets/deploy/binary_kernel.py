"""ctypes binding of the bit-packed binary convolution kernel (``csrc/binconv.c``, built as ``_binconv``).

The shared library is a plain C file compiled by the package's install (``setup.py``, an optional extension: a
machine without a C compiler still installs, and only the packed runner is unavailable). It takes raw pointers, so
it needs no torch headers; calls release the GIL.

Bit layout (shared with :mod:`compactnets.deploy.packed`): channels-last, one pixel = ``groups * group_words``
uint64 words, channel ``c`` of group ``g`` at bit ``c % 64`` of word ``g * group_words + c // 64``; a set bit is -1.

The instruction-set path is chosen per call: the best this CPU supports, unless :func:`set_kernel_path` or the
``COMPACTNETS_BINARY_KERNEL`` environment variable (``avx512``, ``avx2``, ``portable``) forces one.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BinaryKernelUnavailable  # defined there so that the CLI starts without torch

ENV_PATH = "COMPACTNETS_BINARY_KERNEL"
PATHS = {"portable": 1, "avx2": 2, "avx512": 3}  # codes of csrc/binconv.c
LANES = 8  # output channels per vector group in the kernel weight layout (CN_LANES)
_ERRORS = {-1: "out of memory", -2: "instruction set not supported by this CPU", -3: "bad arguments",
           -4: "could not start a thread"}  # fmt: skip


class _BconvArgs(ctypes.Structure):
    _fields_ = [
        ("input", ctypes.c_void_p),
        *[(n, ctypes.c_int64) for n in ("batch", "height", "width", "in_pix_words")],
        *[(n, ctypes.c_int64) for n in ("groups", "group_words", "in_channels_per_group")],
        ("weight", ctypes.c_void_p),
        ("correction", ctypes.c_void_p),
        *[(n, ctypes.c_int64) for n in ("out_per_group", "out_pad")],
        *[
            (n, ctypes.c_int64)
            for n in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w")
        ],
        *[(n, ctypes.c_int64) for n in ("out_height", "out_width", "mode")],
        ("alpha", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("relu", ctypes.c_int64),
        ("out_float", ctypes.c_void_p),
        ("threshold", ctypes.c_void_p),
        ("threshold_sign", ctypes.c_void_p),
        ("out_order", ctypes.c_void_p),
        ("out_bits", ctypes.c_void_p),
        *[(n, ctypes.c_int64) for n in ("out_pix_words", "out_groups", "out_channels_per_group", "out_group_words")],
    ]


def _library_path() -> Path | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_binconv{suffix}"
        if path.is_file():
            return path
    return None


@functools.cache
def _load() -> ctypes.CDLL:
    path = _library_path()
    if path is None:
        raise BinaryKernelUnavailable(
            "the packed binary kernel is not built (no compactnets/deploy/_binconv*.so; the install found no C "
            "compiler?): reinstall with one (pip install -e .) or run `python setup.py build_ext --inplace`"
        )
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise BinaryKernelUnavailable(f"the packed binary kernel {path.name} cannot be loaded: {e}") from e
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.cn_isa_supported.argtypes, lib.cn_isa_supported.restype = [ctypes.c_int], ctypes.c_int
    lib.cn_best_isa.argtypes, lib.cn_best_isa.restype = [], ctypes.c_int
    lib.cn_bconv.argtypes, lib.cn_bconv.restype = [ctypes.POINTER(_BconvArgs), ctypes.c_int, ctypes.c_int], ctypes.c_int
    lib.cn_pack_signs.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, ctypes.c_int]
    lib.cn_pack_signs.restype = ctypes.c_int
    lib.cn_bit_maxpool.argtypes = [ptr, *[i64] * 4, ptr, *[i64] * 8, ptr]
    lib.cn_bit_maxpool.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL:
    """The loaded kernel; raises :class:`BinaryKernelUnavailable` (one line saying why) when it cannot be used."""
    return _load()


def is_available() -> bool:
    try:
        library()
    except BinaryKernelUnavailable:
        return False
    return True


def supported_paths() -> list[str]:
    """Instruction-set paths this CPU can run, best last."""
    return list(_supported_paths())


@functools.cache
def _supported_paths() -> tuple[str, ...]:
    lib = library()
    return tuple(name for name, code in PATHS.items() if lib.cn_isa_supported(code))


_forced: str | None = None


def set_kernel_path(path: str | None) -> None:
    """Force an instruction-set path (``'avx512'``, ``'avx2'``, ``'portable'``) for later calls; None = automatic.
    Takes precedence over the ``COMPACTNETS_BINARY_KERNEL`` environment variable."""
    global _forced
    if path is not None:
        _check_path(path, "set_kernel_path")
    _forced = path


def _check_path(path: str, where: str) -> None:
    if path not in PATHS:
        raise ValueError(f"{where}: unknown binary kernel path {path!r} (choose from {', '.join(PATHS)})")
    if path not in _supported_paths():
        raise BinaryKernelUnavailable(f"{where}: this CPU cannot run the {path} binary kernel path")


def kernel_path() -> str:
    """The path the next call will run."""
    forced = _forced or os.environ.get(ENV_PATH) or None
    if forced:
        _check_path(forced, ENV_PATH if not _forced else "set_kernel_path")
        return forced
    return _supported_paths()[-1]


def _threads(threads: int | None) -> int:
    return max(1, threads if threads else torch.get_num_threads())


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"binary kernel {what} failed: {_ERRORS.get(status, status)}")


# ---------------------------------------------------------------------------------------------- weight preparation


def layout(channels: int, groups: int) -> tuple[int, int]:
    """(group_words, pix_words) of packed activations with ``channels`` in ``groups``."""
    group_words = -(-(channels // groups) // 64)
    return group_words, groups * group_words


def pack_sign_bits(negative: np.ndarray) -> np.ndarray:
    """Bool array [..., n] (True = -1) -> uint64 words [..., ceil(n / 64)], bit ``i % 64`` of word ``i // 64``."""
    n = negative.shape[-1]
    padded = np.zeros((*negative.shape[:-1], -(-n // 64) * 64), dtype=bool)
    padded[..., :n] = negative
    return np.packbits(padded, axis=-1, bitorder="little").view("<u8")


def unpack_sign_bits(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_sign_bits`: bool [..., n]."""
    words = np.ascontiguousarray(words).view("<u8")
    return np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")[..., :n].astype(bool)


@dataclass
class KernelWeights:
    """A binary conv's filters in the kernel's layout, with the zero-padding correction per filter and tap."""

    weight: torch.Tensor  # int64 [groups, taps * group_words, out_pad]
    correction: torch.Tensor  # int32 [groups, taps, out_per_group]
    groups: int
    in_channels_per_group: int
    out_per_group: int
    out_pad: int
    group_words: int


def prepare_weights(negative: np.ndarray, groups: int) -> KernelWeights:
    """``negative``: bool [out, kh, kw, in_per_group] (filters channels-last, True = -1)."""
    out, kh, kw, cin_g = negative.shape
    taps, cout_g = kh * kw, out // groups
    out_pad = -(-cout_g // LANES) * LANES
    words = pack_sign_bits(negative.reshape(out, taps, cin_g))  # [out, taps, group_words]
    group_words = words.shape[-1]
    kernel = np.zeros((groups, taps * group_words, out_pad), dtype="<u8")
    kernel[:, :, :cout_g] = words.reshape(groups, cout_g, taps * group_words).transpose(0, 2, 1)
    # A padded tap reads +1 for every input channel: the kernel then adds sum_c w[o, c, tap] that the zero-padded
    # float model does not have.
    correction = cin_g - 2 * negative.reshape(groups, cout_g, taps, cin_g).sum(-1, dtype=np.int64)
    return KernelWeights(
        weight=torch.from_numpy(kernel.view(np.int64)),
        correction=torch.from_numpy(np.ascontiguousarray(correction.transpose(0, 2, 1)).astype(np.int32)),
        groups=groups,
        in_channels_per_group=cin_g,
        out_per_group=cout_g,
        out_pad=out_pad,
        group_words=group_words,
    )


# ---------------------------------------------------------------------------------------------- calls


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _output(out: torch.Tensor | None, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """``out`` when it fits (a runner reusing its buffers: fresh large allocations cost page faults each call)."""
    if out is not None and tuple(out.shape) == shape and out.dtype == dtype and out.is_contiguous():
        return out
    return torch.empty(shape, dtype=dtype)


def pack_signs(
    x: torch.Tensor,
    groups: int,
    sign: torch.Tensor | None = None,
    threshold: torch.Tensor | None = None,
    path: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Channels-last floats [N, H, W, C] -> packed bits int64 [N, H, W, pix_words]. A bit is set (-1) where
    ``!(x > 0)``, or with per-channel float32 ``sign`` (+-1) and ``threshold``, where ``!(sign * x >= threshold)``."""
    x = x.contiguous().float()
    n, h, w, c = x.shape
    group_words, pix_words = layout(c, groups)
    out = _output(out, (n, h, w, pix_words), torch.int64)
    lib = library()
    isa = PATHS[path or kernel_path()]
    folded = (sign.data_ptr(), threshold.data_ptr()) if threshold is not None else (None, None)
    status = lib.cn_pack_signs(
        x.data_ptr(), n * h * w, groups, c // groups, group_words, pix_words, *folded, out.data_ptr(), isa
    )
    _check(status, "pack_signs")
    return out


def bit_max_pool(bits: torch.Tensor, and_mask: torch.Tensor, kernel, stride, padding, out=None) -> torch.Tensor:
    """Max pooling of the values behind packed bits (see ``cn_bit_maxpool``); ``and_mask`` int64 [pix_words]."""
    n, h, w, pix_words = bits.shape
    ho, wo = (conv_output_size(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, padding, strict=True))
    out = _output(out, (n, ho, wo, pix_words), torch.int64)
    lib = library()
    status = lib.cn_bit_maxpool(
        bits.data_ptr(), n, h, w, pix_words, and_mask.data_ptr(), *kernel, *stride, *padding, ho, wo, out.data_ptr()
    )
    _check(status, "bit_max_pool")
    return out


def binary_conv(
    bits: torch.Tensor,
    weights: KernelWeights,
    kernel_size,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    *,
    alpha: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    threshold: torch.Tensor | None = None,
    threshold_sign: torch.Tensor | None = None,
    out_order: torch.Tensor | None = None,
    out_groups: int = 1,
    threads: int | None = None,
    path: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary convolution of packed bits [N, H, W, pix_words].

    With ``alpha``/``bias``: floats [N, Ho, Wo, C] = alpha * dot + bias (then ReLU). With ``threshold``/
    ``threshold_sign`` (and ``out_order``, int32): the packed bits of the next layer's input, laid out for
    ``out_groups`` groups, where channel j is -1 unless ``threshold_sign[j] * dot[out_order[j]] >= threshold[j]``.
    """
    lib = library()
    n, h, w, in_pix_words = bits.shape
    if in_pix_words != weights.groups * weights.group_words:
        raise ValueError(f"packed input has {in_pix_words} words per pixel, the filters expect "
                         f"{weights.groups * weights.group_words}")  # fmt: skip
    ho, wo = (
        conv_output_size(s, k, st, p, d)
        for s, k, st, p, d in zip((h, w), kernel_size, stride, padding, dilation, strict=True)
    )
    cout = weights.groups * weights.out_per_group
    bits = bits.contiguous()
    args = _BconvArgs(
        input=bits.data_ptr(), batch=n, height=h, width=w, in_pix_words=in_pix_words,
        groups=weights.groups, group_words=weights.group_words, in_channels_per_group=weights.in_channels_per_group,
        weight=weights.weight.data_ptr(), correction=weights.correction.data_ptr(),
        out_per_group=weights.out_per_group, out_pad=weights.out_pad,
        kernel_h=kernel_size[0], kernel_w=kernel_size[1], stride_h=stride[0], stride_w=stride[1],
        pad_h=padding[0], pad_w=padding[1], dilation_h=dilation[0], dilation_w=dilation[1],
        out_height=ho, out_width=wo,
    )  # fmt: skip
    if threshold is None:
        out = _output(out, (n, ho, wo, cout), torch.float32)
        args.mode, args.relu, args.out_float = 0, int(relu), out.data_ptr()
        args.alpha, args.bias = alpha.data_ptr(), bias.data_ptr()
    else:
        group_words, pix_words = layout(cout, out_groups)
        out = _output(out, (n, ho, wo, pix_words), torch.int64)
        args.mode, args.out_bits, args.out_pix_words = 1, out.data_ptr(), pix_words
        args.out_groups, args.out_channels_per_group, args.out_group_words = out_groups, cout // out_groups, group_words
        terms = [t.to(torch.int32).contiguous() for t in (threshold, threshold_sign)]  # no-op when int32 already
        order = out_order.to(torch.int32).contiguous() if out_order is not None else None
        args.threshold, args.threshold_sign = terms[0].data_ptr(), terms[1].data_ptr()
        args.out_order = order.data_ptr() if order is not None else None
    _check(lib.cn_bconv(ctypes.byref(args), PATHS[path or kernel_path()], _threads(threads)), "binary_conv")
    return out
