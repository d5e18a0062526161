"""ctypes binding of the bit-packed binary convolution kernel (``csrc/binconv.c``, built as ``_binconv``).

The shared library is a plain C file compiled by the package's install (``setup.py``, an optional extension: a
machine without a C compiler still installs, and only the packed runner is unavailable). It takes raw pointers, so
it needs no torch headers; calls release the GIL.

Bit layout (shared with :mod:`compactnets.deploy.packed_ops`): channels-last, one pixel = ``groups * group_words``
uint64 words, channel ``c`` of group ``g`` at bit ``c % 64`` of word ``g * group_words + c // 64``; a set bit is -1.

The AMX path (``amx``) computes the same integers with int8 tile multiplies on +-1 bytes instead of xor + popcount
on bits: its input is one byte per channel (+1 = 0x01, -1 = 0xff), channels-last, inside a zero border as wide as
the conv's padding (the float model's zero padding of sign(x)), followed by :func:`byte_slack` readable bytes.

The instruction-set path is given per call, or :func:`set_kernel_path` / the ``COMPACTNETS_BINARY_KERNEL``
environment variable (``amx``, ``avx512``, ``avx2``, ``portable``) forces one; otherwise a bits input runs the best
popcount path this CPU supports and a bytes input the AMX path. The packed runner chooses per layer by timing
(:mod:`compactnets.deploy.packed_plan`).
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
ENV_LIBRARY = "COMPACTNETS_BINARY_KERNEL_LIB"  # another build of csrc/binconv.c to load (a sanitizer build, in tests)
PATHS = {"portable": 1, "avx2": 2, "avx512": 3, "amx": 4}  # codes of csrc/binconv.c
BYTE_PATHS = ("amx",)  # paths whose input is +-1 bytes (int8) rather than packed bits
OUT_FLOAT, OUT_BITS, OUT_INT8 = 0, 1, 2
# AMX tiles pad each group's input channels to 64 bytes (16x the bits of a 1-channel group): past this size a layer
# runs the popcount paths only.
AMX_MAX_WEIGHT_BYTES = 1 << 26
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
        ("out_int8", ctypes.c_void_p),
        *[(n, ctypes.c_int64) for n in ("out_pad_h", "out_pad_w")],
        *[
            (f"{n}_bytes", ctypes.c_int64)
            for n in (
                "input",
                "weight",
                "correction",
                "alpha",
                "bias",
                "threshold",
                "threshold_sign",
                "out_order",
                "out",
            )
        ],  # checked by cn_bconv
    ]


class _SignsOut(ctypes.Structure):  # cn_signs_out
    _fields_ = [
        *[(n, ctypes.c_int64) for n in ("mode", "channels")],
        ("bits", ctypes.c_void_p),
        *[(n, ctypes.c_int64) for n in ("pix_words", "groups", "channels_per_group", "group_words")],
        ("bytes", ctypes.c_void_p),
        *[(n, ctypes.c_int64) for n in ("height", "width", "pad_h", "pad_w")],
    ]


class _FconvArgs(ctypes.Structure):  # cn_fconv_args
    _fields_ = [
        ("input", ctypes.c_void_p),
        *[(n, ctypes.c_int64) for n in ("batch", "channels", "height", "width")],
        *[(n, ctypes.c_int64) for n in ("stride_n", "stride_c", "stride_y", "stride_x")],
        ("padded", ctypes.c_void_p),
        ("weight", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        *[
            (n, ctypes.c_int64)
            for n in ("out_channels", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w")
        ],
        *[(n, ctypes.c_int64) for n in ("dilation_h", "dilation_w", "out_height", "out_width", "chunks", "chunk_k")],
        ("chunk_offset", ctypes.c_void_p),
        ("sign", ctypes.c_void_p),
        ("threshold", ctypes.c_void_p),
        ("out", _SignsOut),
        *[
            (f"{n}_bytes", ctypes.c_int64)
            for n in ("input", "padded", "weight", "bias", "chunk_offset", "sign", "threshold", "out")
        ],  # checked by cn_fconv_pack
        *[(n, ctypes.c_void_p) for n in ("weight32", "l1", "row_max")],  # the float32 check of near-threshold signs
        *[(f"{n}_bytes", ctypes.c_int64) for n in ("weight32", "l1", "row_max")],
        ("weight_lo", ctypes.c_void_p),  # w = hi + lo: the second weight tiles
        ("weight_lo_bytes", ctypes.c_int64),
    ]


class _Fconv32Args(ctypes.Structure):  # cn_fconv32_args
    _fields_ = [
        ("input", ctypes.c_void_p),
        *[(n, ctypes.c_int64) for n in ("batch", "channels", "height", "width")],
        *[(n, ctypes.c_int64) for n in ("stride_n", "stride_c", "stride_y", "stride_x")],
        ("padded", ctypes.c_void_p),
        ("weight", ctypes.c_void_p),
        *[
            (n, ctypes.c_int64)
            for n in ("out_channels", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w")
        ],
        *[(n, ctypes.c_int64) for n in ("dilation_h", "dilation_w", "out_height", "out_width")],
        *[(n, ctypes.c_void_p) for n in ("bias", "sign", "threshold")],
        ("out", _SignsOut),
        *[
            (f"{n}_bytes", ctypes.c_int64) for n in ("input", "padded", "weight", "bias", "sign", "threshold", "out")
        ],  # checked by cn_fconv32_pack
    ]


def _library_path() -> Path | None:
    """The kernel built next to this module, or the build that ``COMPACTNETS_BINARY_KERNEL_LIB`` names."""
    if os.environ.get(ENV_LIBRARY):
        return Path(os.environ[ENV_LIBRARY])
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
    # the trailing i64s: the byte lengths of the buffers (_nbytes), which the entry points check their sizes against
    lib.cn_pack_signs.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, ctypes.c_int, *[i64] * 4]
    lib.cn_pack_signs.restype = ctypes.c_int
    lib.cn_bit_maxpool.argtypes = [ptr, *[i64] * 4, ptr, *[i64] * 8, ptr, *[i64] * 3]
    lib.cn_bit_maxpool.restype = ctypes.c_int
    lib.cn_pack_signs_int8.argtypes = [ptr, *[i64] * 4, ptr, ptr, ptr, i64, i64, ctypes.c_int, *[i64] * 4]
    lib.cn_maxpool_int8.argtypes = [ptr, *[i64] * 4, ptr, *[i64] * 8, ptr, i64, i64, *[i64] * 3, ctypes.c_int]
    lib.cn_avgpool_pack.argtypes = [ptr, *[i64] * 12, ptr, ptr, ctypes.POINTER(_SignsOut), ctypes.c_int, *[i64] * 4]
    lib.cn_fconv_pack.argtypes = [ctypes.POINTER(_FconvArgs), ctypes.c_int, ctypes.c_int]
    lib.cn_head.argtypes = [ptr, i64, i64, i64, ptr, ptr, i64, i64, ptr, *[i64] * 4, ctypes.c_int]
    lib.cn_fconv_supported.argtypes = [ctypes.c_int]
    lib.cn_fconv32_pack.argtypes = [ctypes.POINTER(_Fconv32Args), ctypes.c_int]
    lib.cn_fconv32_supported.argtypes = []
    for name in (
        "cn_pack_signs_int8",
        "cn_maxpool_int8",
        "cn_avgpool_pack",
        "cn_fconv_pack",
        "cn_fconv_supported",
        "cn_fconv32_pack",
        "cn_fconv32_supported",
        "cn_head",
    ):
        getattr(lib, name).restype = ctypes.c_int
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
    """Force a path (``'amx'``, ``'avx512'``, ``'avx2'``, ``'portable'``) for later calls and runners built later;
    None = automatic. Takes precedence over the ``COMPACTNETS_BINARY_KERNEL`` environment variable."""
    global _forced
    if path is not None:
        _check_path(path, "set_kernel_path")
    _forced = path


def _check_path(path: str, where: str) -> None:
    if path not in PATHS:
        raise ValueError(f"{where}: unknown binary kernel path {path!r} (choose from {', '.join(PATHS)})")
    if path not in _supported_paths():
        raise BinaryKernelUnavailable(f"{where}: this CPU cannot run the {path} binary kernel path")


def forced_path() -> str | None:
    """The path forced by :func:`set_kernel_path` or ``COMPACTNETS_BINARY_KERNEL`` (checked), else None."""
    forced = _forced or os.environ.get(ENV_PATH) or None
    if forced:
        _check_path(forced, ENV_PATH if not _forced else "set_kernel_path")
    return forced


def kernel_path() -> str:
    """The path a bits input runs: the forced one if it takes bits, else the best popcount path this CPU supports."""
    forced = forced_path()
    return forced if forced and forced not in BYTE_PATHS else [p for p in _supported_paths() if p not in BYTE_PATHS][-1]


def input_format(path: str) -> str:
    """``'int8'`` (+-1 bytes) for the AMX path, ``'bits'`` for the popcount paths."""
    return "int8" if path in BYTE_PATHS else "bits"


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
    negative: np.ndarray  # bool [out, kh, kw, in_per_group], for the AMX tiles
    _amx: torch.Tensor | None = None

    def amx_bytes(self) -> int:
        out, kh, kw, cin_g = self.negative.shape
        return self.groups * -(-self.out_per_group // 16) * kh * kw * -(-cin_g // 64) * 1024

    def amx_tiles(self) -> torch.Tensor:
        """The filters as int8 AMX tiles (made on first use): [group][16 output channels][tap][64 input channels]
        tiles of 16 rows x 64 bytes, row r holding input channels 4r..4r+3 of each of the 16 output channels, +-1,
        zero past the group's channels (those products add nothing, whatever the input bytes there)."""
        if self._amx is None:
            if self.amx_bytes() > AMX_MAX_WEIGHT_BYTES:
                raise BinaryKernelUnavailable(f"this conv's AMX tiles would take {self.amx_bytes():,} bytes, more "
                                              f"than {AMX_MAX_WEIGHT_BYTES:,}: run it on a popcount path")  # fmt: skip
            out, kh, kw, cin_g = self.negative.shape
            g, cout_g, taps = self.groups, self.out_per_group, kh * kw
            nb, kb = -(-cout_g // 16), -(-cin_g // 64)
            signs = np.zeros((g, nb * 16, taps, kb * 64), dtype=np.int8)
            signs[:, :cout_g, :, :cin_g] = 1 - 2 * self.negative.reshape(g, cout_g, taps, cin_g).astype(np.int8)
            tiles = signs.reshape(g, nb, 16, taps, kb, 16, 4).transpose(0, 1, 3, 4, 5, 2, 6)
            self._amx = torch.from_numpy(np.ascontiguousarray(tiles).reshape(-1)).clone()  # torch: 64-byte aligned
        return self._amx


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
        negative=negative,
    )


# ---------------------------------------------------------------------------------------------- calls


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _output(out: torch.Tensor | None, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """``out`` when it fits (a runner reusing its buffers: fresh large allocations cost page faults each call)."""
    if out is not None and tuple(out.shape) == shape and out.dtype == dtype and out.is_contiguous():
        return out
    return torch.empty(shape, dtype=dtype)


def byte_slack(channels: int, stride_w: int = 1) -> int:
    """Bytes an AMX conv reads past the end of its input: the rows of its last tile that lie past the last pixel
    (16 pixels ``stride_w`` apart) and the rest of a 64-channel block; what they hold is computed and dropped."""
    return (16 * stride_w + 1) * channels + 64


def byte_buffer(batch: int, height: int, width: int, channels: int, padding=(0, 0), stride_w: int = 4) -> torch.Tensor:
    """Zeroed int8 [N, H + 2 * pad_h, W + 2 * pad_w, C], followed by :func:`byte_slack` readable bytes for a conv of
    up to ``stride_w``; writers fill the inside, so the border stays the zero padding."""
    shape = (batch, height + 2 * padding[0], width + 2 * padding[1], channels)
    size = shape[0] * shape[1] * shape[2] * shape[3]
    return torch.zeros(size + byte_slack(channels, stride_w), dtype=torch.int8)[:size].view(shape)


def _nbytes(t: torch.Tensor | None) -> int:
    """Bytes from ``t.data_ptr()`` to the end of its storage: the length the C entry points check a buffer against
    (a call whose sizes do not fit fails with -3 instead of reading or writing past it)."""
    return 0 if t is None else t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()


def _slack(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes() - (t.storage_offset() + t.numel()) * t.element_size()


def _byte_output(out, batch, height, width, channels, padding) -> torch.Tensor:
    shape = (batch, height + 2 * padding[0], width + 2 * padding[1], channels)
    if out is not None and tuple(out.shape) == shape and out.dtype == torch.int8 and out.is_contiguous():
        return out
    return byte_buffer(batch, height, width, channels, padding)


def _signs_out(out_format: str, out, batch, height, width, channels, groups, padding) -> tuple[torch.Tensor, _SignsOut]:
    """The output tensor of a layer writing signs, and its cn_signs_out."""
    if out_format == "int8":
        out = _byte_output(out, batch, height, width, channels, padding)
        return out, _SignsOut(mode=OUT_INT8, channels=channels, bytes=out.data_ptr(), height=height, width=width,
                              pad_h=padding[0], pad_w=padding[1])  # fmt: skip
    group_words, pix_words = layout(channels, groups)
    out = _output(out, (batch, height, width, pix_words), torch.int64)
    return out, _SignsOut(mode=OUT_BITS, channels=channels, bits=out.data_ptr(), pix_words=pix_words, groups=groups,
                          channels_per_group=channels // groups, group_words=group_words, height=height,
                          width=width)  # fmt: skip


class KernelCall:
    """A C entry point with its arguments built once: a runner calls it again and again on the same buffers. A call
    built with ``input_at`` (the positions of the input's pointer and byte length) takes its input tensor at each
    call, which must have the shape it was built for."""

    def __init__(self, fn, args: list, out: torch.Tensor, what: str, x: torch.Tensor, input_at=None, keep=()):
        self._fn, self._args, self.out, self._what = fn, list(args), out, what
        self._input_at, self._shape, self._keep = input_at, tuple(x.shape), (x, *keep)

    def __call__(self, x: torch.Tensor | None = None) -> torch.Tensor:
        if x is not None and self._input_at is not None:
            if tuple(x.shape) != self._shape or x.dtype != self._keep[0].dtype:
                raise ValueError(f"{self._what} was built for {self._shape}, not {tuple(x.shape)}")
            x = x.contiguous()
            at, length_at = self._input_at
            self._args[at], self._args[length_at] = x.data_ptr(), _nbytes(x)
        _check(self._fn(*self._args), self._what)
        return self.out


def pack_signs_call(
    x: torch.Tensor,
    groups: int,
    sign: torch.Tensor | None = None,
    threshold: torch.Tensor | None = None,
    path: str | None = None,
    out: torch.Tensor | None = None,
    out_format: str = "bits",
    out_padding=(0, 0),
    threads: int | None = None,
) -> KernelCall:
    """The call :func:`pack_signs` makes, built for inputs shaped like ``x``."""
    x = x.contiguous().float()
    n, h, w, c = x.shape
    lib = library()
    folded = (sign.data_ptr(), threshold.data_ptr()) if threshold is not None else (None, None)
    keep = (sign, threshold)
    if out_format == "int8":
        out = _byte_output(out, n, h, w, c, out_padding)
        args = [x.data_ptr(), n, h, w, c, *folded, out.data_ptr(), *out_padding, _threads(threads),
                *map(_nbytes, (x, sign, threshold, out))]  # fmt: skip
        return KernelCall(lib.cn_pack_signs_int8, args, out, "pack_signs", x, (0, 11), keep)
    group_words, pix_words = layout(c, groups)
    out = _output(out, (n, h, w, pix_words), torch.int64)
    isa = PATHS[path or kernel_path()]
    args = [x.data_ptr(), n * h * w, groups, c // groups, group_words, pix_words, *folded, out.data_ptr(), isa,
            *map(_nbytes, (x, sign, threshold, out))]  # fmt: skip
    return KernelCall(lib.cn_pack_signs, args, out, "pack_signs", x, (0, 10), keep)


def pack_signs(x: torch.Tensor, groups: int, sign=None, threshold=None, path=None, out=None, out_format="bits",
               out_padding=(0, 0), threads=None) -> torch.Tensor:  # fmt: skip
    """Channels-last floats [N, H, W, C] -> packed bits int64 [N, H, W, pix_words], or with ``out_format="int8"``
    +-1 bytes [N, H + 2 * pad_h, W + 2 * pad_w, C] (see :func:`byte_buffer`). A channel is -1 where ``!(x > 0)``,
    or with per-channel float32 ``sign`` (+-1) and ``threshold``, where ``!(sign * x >= threshold)``."""
    return pack_signs_call(x, groups, sign, threshold, path, out, out_format, out_padding, threads)()


def bit_max_pool_call(bits: torch.Tensor, and_mask: torch.Tensor, kernel, stride, padding, out=None) -> KernelCall:
    """The call :func:`bit_max_pool` makes, on ``bits`` (fixed)."""
    n, h, w, pix_words = bits.shape
    ho, wo = (conv_output_size(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, padding, strict=True))
    out = _output(out, (n, ho, wo, pix_words), torch.int64)
    args = [bits.data_ptr(), n, h, w, pix_words, and_mask.data_ptr(), *kernel, *stride, *padding, ho, wo,
            out.data_ptr(), *map(_nbytes, (bits, and_mask, out))]  # fmt: skip
    return KernelCall(library().cn_bit_maxpool, args, out, "bit_max_pool", bits, keep=(and_mask,))


def bit_max_pool(bits: torch.Tensor, and_mask: torch.Tensor, kernel, stride, padding, out=None) -> torch.Tensor:
    """Max pooling of the values behind packed bits (see ``cn_bit_maxpool``); ``and_mask`` int64 [pix_words]."""
    return bit_max_pool_call(bits, and_mask, kernel, stride, padding, out)()


def byte_max_pool_call(x: torch.Tensor, and_mask: torch.Tensor, kernel, stride, padding, out=None,
                       out_padding=(0, 0), threads=None) -> KernelCall:  # fmt: skip
    """The call :func:`byte_max_pool` makes, on ``x`` (fixed)."""
    n, h, w, c = x.shape
    ho, wo = (conv_output_size(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, padding, strict=True))
    out = _byte_output(out, n, ho, wo, c, out_padding)
    mask = torch.where(and_mask.bool(), 0xFE, 0).to(torch.uint8).contiguous()
    x = x.contiguous()
    args = [x.data_ptr(), n, h, w, c, mask.data_ptr(), *kernel, *stride, *padding, ho, wo, out.data_ptr(),
            *out_padding, *map(_nbytes, (x, mask, out)), _threads(threads)]  # fmt: skip
    return KernelCall(library().cn_maxpool_int8, args, out, "byte_max_pool", x, keep=(mask,))


def byte_max_pool(x: torch.Tensor, and_mask: torch.Tensor, kernel, stride, padding, out=None, out_padding=(0, 0),
                  threads=None):  # fmt: skip
    """:func:`bit_max_pool` on +-1 bytes [N, H, W, C] (no border); ``and_mask`` bool [C]. The output goes inside a
    zero border of ``out_padding`` (the next conv's padding)."""
    return byte_max_pool_call(x, and_mask, kernel, stride, padding, out, out_padding, threads)()


def avg_pool_signs_call(x, kernel, stride, padding, count_include_pad, divisor_override, sign, threshold, groups, *,
                        out=None, out_format="bits", out_padding=(0, 0), threads=None) -> KernelCall:  # fmt: skip
    """The call :func:`avg_pool_signs` makes, built for inputs shaped like ``x``."""
    x = x.contiguous()
    n, h, w, c = x.shape
    ho, wo = (conv_output_size(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, padding, strict=True))
    out, signs = _signs_out(out_format, out, n, ho, wo, c, groups, out_padding)
    args = [x.data_ptr(), n, h, w, c, *kernel, *stride, *padding, int(count_include_pad), divisor_override or 0,
            sign.data_ptr(), threshold.data_ptr(), ctypes.byref(signs), _threads(threads),
            *map(_nbytes, (x, sign, threshold, out))]  # fmt: skip
    return KernelCall(library().cn_avgpool_pack, args, out, "avg_pool_signs", x, (0, 17), (sign, threshold, signs))


def avg_pool_signs(x, kernel, stride, padding, count_include_pad, divisor_override, sign, threshold, groups, *,
                   out=None, out_format="bits", out_padding=(0, 0), threads=None) -> torch.Tensor:  # fmt: skip
    """torch's ``avg_pool2d`` (ceil_mode False) of channels-last floats [N, H, W, C], then :func:`pack_signs` with
    per-channel ``sign`` and ``threshold``, in one pass (``cn_avgpool_pack``)."""
    return avg_pool_signs_call(x, kernel, stride, padding, count_include_pad, divisor_override, sign, threshold,
                               groups, out=out, out_format=out_format, out_padding=out_padding,
                               threads=threads)()  # fmt: skip


class Head:
    """A classifier head: a 1x1 conv (groups 1) over channels-last floats, an optional ReLU, the mean over the
    pixels (global average pool), in one pass (``cn_head``): logits [N, classes] from [N, H, W, C]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool):
        classes = weight.shape[0]
        self.weight = weight.detach().float().reshape(classes, -1).contiguous()
        self.bias = (bias if bias is not None else torch.zeros(classes)).detach().float().contiguous()
        self.relu, self._fn = int(relu), library().cn_head

    def __call__(self, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        x = x.contiguous().float()
        n, h, w, c = x.shape
        out = torch.empty(n, self.weight.shape[0])
        status = self._fn(x.data_ptr(), n, h * w, c, self.weight.data_ptr(), self.bias.data_ptr(), out.shape[1],
                          self.relu, out.data_ptr(), *map(_nbytes, (x, self.weight, self.bias, out)),
                          _threads(threads))  # fmt: skip
        _check(status, "head")
        return out


class ConvCall:
    """One binary conv call with its arguments built once: a runner calls it again and again on the same buffers
    (``input`` may be repointed with :meth:`set_input`)."""

    def __init__(self, args: _BconvArgs, isa: int, out: torch.Tensor, keep: list):
        self.args, self.isa, self.out, self._keep = args, isa, out, keep
        self._fn = library().cn_bconv

    def set_input(self, x: torch.Tensor) -> None:
        self.args.input, self.args.input_bytes = x.data_ptr(), _nbytes(x)
        self._keep[0] = x

    def __call__(self, threads: int | None = None) -> torch.Tensor:
        _check(self._fn(ctypes.byref(self.args), self.isa, _threads(threads)), "binary_conv")
        return self.out


def conv_call(
    x: torch.Tensor,
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
    path: str | None = None,
    out: torch.Tensor | None = None,
    out_format: str = "bits",
    out_padding=(0, 0),
) -> ConvCall:
    """The call :func:`binary_conv` makes, built but not run."""
    if x.dtype == torch.int8:  # +-1 bytes with the padding as a border: the AMX path
        path = path or forced_path() or "amx"
        n, hp, wp, channels = x.shape
        h, w = hp - 2 * padding[0], wp - 2 * padding[1]
        if input_format(path) != "int8":
            raise ValueError(f"the {path} path takes packed bits, not bytes")
        if channels != weights.groups * weights.in_channels_per_group or h < 1 or w < 1:
            raise ValueError(f"byte input {tuple(x.shape)} does not fit the filters and padding {tuple(padding)}")
        if not x.is_contiguous() or _slack(x) < byte_slack(channels, stride[1]):
            raise ValueError("a byte input needs byte_slack() readable bytes after it (allocate it with byte_buffer)")
        weight, correction = weights.amx_tiles(), weights.correction
        in_pix_words = 0
    else:
        path = path or kernel_path()
        if input_format(path) != "bits":
            raise ValueError(f"the {path} path takes +-1 bytes (int8), not packed bits")
        n, h, w, in_pix_words = x.shape
        if in_pix_words != weights.groups * weights.group_words:
            raise ValueError(f"packed input has {in_pix_words} words per pixel, the filters expect "
                             f"{weights.groups * weights.group_words}")  # fmt: skip
        weight, correction = weights.weight, weights.correction
        x = x.contiguous()
    _check_path(path, "binary_conv")
    ho, wo = (
        conv_output_size(s, k, st, p, d)
        for s, k, st, p, d in zip((h, w), kernel_size, stride, padding, dilation, strict=True)
    )
    cout = weights.groups * weights.out_per_group
    args = _BconvArgs(
        input=x.data_ptr(), batch=n, height=h, width=w, in_pix_words=in_pix_words,
        groups=weights.groups, group_words=weights.group_words, in_channels_per_group=weights.in_channels_per_group,
        weight=weight.data_ptr(), correction=correction.data_ptr(),
        out_per_group=weights.out_per_group, out_pad=weights.out_pad,
        kernel_h=kernel_size[0], kernel_w=kernel_size[1], stride_h=stride[0], stride_w=stride[1],
        pad_h=padding[0], pad_w=padding[1], dilation_h=dilation[0], dilation_w=dilation[1],
        out_height=ho, out_width=wo,
    )  # fmt: skip
    order = out_order.to(torch.int32).contiguous() if out_order is not None else None
    args.out_order = order.data_ptr() if order is not None else None
    if threshold is None:
        out = _output(out, (n, ho, wo, cout), torch.float32)
        args.mode, args.relu, args.out_float = OUT_FLOAT, int(relu), out.data_ptr()
        terms = {"alpha": alpha, "bias": bias}
    else:
        terms = {"threshold": threshold.to(torch.int32).contiguous(),  # no-op when int32 already
                 "threshold_sign": threshold_sign.to(torch.int32).contiguous()}  # fmt: skip
        if out_format == "int8":
            out = _byte_output(out, n, ho, wo, cout, out_padding)
            args.mode, args.out_int8 = OUT_INT8, out.data_ptr()
            args.out_pad_h, args.out_pad_w = out_padding
        else:
            group_words, pix_words = layout(cout, out_groups)
            out = _output(out, (n, ho, wo, pix_words), torch.int64)
            args.mode, args.out_bits, args.out_pix_words = OUT_BITS, out.data_ptr(), pix_words
            args.out_groups, args.out_channels_per_group = out_groups, cout // out_groups
            args.out_group_words = group_words
    for name, t in terms.items():
        setattr(args, name, t.data_ptr())
    keep = [x, weight, correction, *terms.values(), order]
    lengths = dict(input=x, weight=weight, correction=correction, out=out, out_order=order, **terms)
    for name, t in lengths.items():
        setattr(args, f"{name}_bytes", _nbytes(t))
    return ConvCall(args, PATHS[path], out, keep)


def binary_conv(x: torch.Tensor, weights: KernelWeights, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                *, threads: int | None = None, **kwargs) -> torch.Tensor:  # fmt: skip
    """Binary convolution of packed bits [N, H, W, pix_words], or of +-1 bytes [N, H + 2 * pad_h, W + 2 * pad_w, C]
    (the AMX path; allocate them with :func:`byte_buffer`).

    With ``alpha``/``bias``: floats [N, Ho, Wo, C], channel j = alpha[j] * dot[out_order[j]] + bias[j] (then ReLU;
    no ``out_order``: the identity). With ``threshold``/
    ``threshold_sign`` (and ``out_order``, int32): the next layer's input, channel j being -1 unless
    ``threshold_sign[j] * dot[out_order[j]] >= threshold[j]``: packed bits laid out for ``out_groups`` groups, or
    with ``out_format="int8"`` +-1 bytes inside a zero border of ``out_padding``. ``path`` picks the instruction
    set (default: see :func:`kernel_path`); every path gives the same integers, hence the same output.
    """
    return conv_call(x, weights, kernel_size, stride, padding, dilation, **kwargs)(threads)


# ---------------------------------------------------------------------------------------------- float conv, bf16


BF16_PATHS = ("amx", "avx512")  # bf16 tiles; AVX512-BF16 (VDPBF16PS)


def bf16_conv_paths() -> list[str]:
    """The :class:`Bf16ConvSigns` paths this CPU runs."""
    return [p for p in BF16_PATHS if library().cn_fconv_supported(PATHS[p])]


class _ConvSigns:
    """A fused float conv into signs, built for one input shape (``shape``): its C arguments (``args``), the entry
    point that runs them (``_run``, named ``what`` in errors; looked up once, ``_fn``), and the output it writes
    (``out``)."""

    what: str

    def __call__(self, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        if tuple(x.shape) != self.shape or x.dtype != torch.float32:
            raise ValueError(f"this conv was built for float32 {self.shape}, not {x.dtype} {tuple(x.shape)}")
        a = self.args
        a.input, a.input_bytes = x.data_ptr(), _nbytes(x)
        a.stride_n, a.stride_c, a.stride_y, a.stride_x = x.stride()
        _check(self._run(a, _threads(threads)), self.what)
        return self.out


class Bf16ConvSigns(_ConvSigns):
    """A float conv (groups 1) followed by :func:`pack_signs` with per-channel ``sign`` and ``threshold``, run in
    bfloat16 with float32 sums, on AMX tiles (``path="amx"``) or with AVX512-BF16 (``"avx512"``), for inputs of one
    shape: input NCHW floats (any strides), output packed bits or +-1 bytes like :func:`pack_signs`. Three bf16
    products per term (x_hi w_hi + x_lo w_hi + x_hi w_lo) leave out at most ~2**-16 of sum |x| |w|, and every sign
    whose value lies within that bound of its threshold is recomputed in float32 (``cn_fconv_pack``): the signs are
    float32's. The bf16 input copy holds each pixel's C hi parts, then its C lo parts; a chunk of window elements
    meets two weight tiles: w_hi against both parts, w_lo against the hi parts (0 against the lo ones)."""

    what = "bf16 conv"

    def __init__(self, weight, bias, stride, padding, dilation, sign, threshold, input_shape, *, groups=1,
                 out_format="bits", out_padding=(0, 0), path="amx"):  # fmt: skip
        if path not in bf16_conv_paths():
            raise BinaryKernelUnavailable(f"this CPU cannot run the {path} bf16 conv path")
        self.isa = PATHS[path]
        n, c, h, w = input_shape
        out_channels, _, kh, kw = weight.shape
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        ho, wo = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
        wp = w + 2 * pw
        # Runs of contiguous window elements (channels-last, 2C per pixel: hi parts, lo parts): a window row of
        # kernel_w pixels with dilation 1, else one tap; each cut into chunks of chunk_k elements (one tile load).
        pixel = [(part, ch) for part in range(2) for ch in range(c)]
        if dw == 1:
            runs = [(kh_ * dh * wp * 2 * c, [(kh_, kw_, *e) for kw_ in range(kw) for e in pixel]) for kh_ in range(kh)]
        else:
            runs = [((kh_ * dh * wp + kw_ * dw) * 2 * c, [(kh_, kw_, *e) for e in pixel])
                    for kh_ in range(kh) for kw_ in range(kw)]  # fmt: skip
        chunk_k = 16 if max(len(e) for _, e in runs) <= 16 else 32
        chunks = [(start + i, elems[i : i + chunk_k]) for start, elems in runs for i in range(0, len(elems), chunk_k)]
        nb = -(-out_channels // 16)
        w32 = weight.detach().float()
        w_hi = w32.to(torch.bfloat16).float()
        w_parts = (w_hi.numpy(), (w32 - w_hi).numpy())  # bf16(w) and what it left out
        tiles = np.zeros((2, nb * 16, len(chunks), chunk_k), dtype=np.float32)  # [set, out, chunk, element]
        for ci, (_, elems) in enumerate(chunks):
            kh_, kw_, part, ch = np.array(elems).T
            tiles[0, :out_channels, ci, : len(elems)] = w_parts[0][:, ch, kh_, kw_]  # w_hi against x_hi and x_lo
            tiles[1, :out_channels, ci, : len(elems)] = w_parts[1][:, ch, kh_, kw_] * (part == 0)  # w_lo vs x_hi
        # [set][out block][chunk][element pair][16 outputs][2]: TDPBF16PS's weight tiles
        tiles = tiles.reshape(2, nb, 16, len(chunks), chunk_k // 2, 2).transpose(0, 1, 3, 4, 2, 5)
        tiles = torch.from_numpy(np.ascontiguousarray(tiles)).to(torch.bfloat16).view(torch.int16)
        self.weight, self.weight_lo = tiles[0].clone(), tiles[1].clone()  # own storage: 64-byte aligned
        self.offsets = torch.tensor([start for start, _ in chunks], dtype=torch.int64)
        self.bias = (bias if bias is not None else torch.zeros(out_channels)).detach().float().contiguous()
        self.sign, self.threshold = sign.float().contiguous(), threshold.float().contiguous()
        size = n * (h + 2 * ph) * wp * 2 * c
        self.padded = torch.zeros(size + (16 * sw + 1) * 2 * c + 64, dtype=torch.int16)  # zero border, then slack
        self.out, signs = _signs_out(out_format, None, n, ho, wo, out_channels, groups, out_padding)
        self.args = _FconvArgs(
            batch=n, channels=c, height=h, width=w, padded=self.padded.data_ptr(), weight=self.weight.data_ptr(),
            bias=self.bias.data_ptr(), out_channels=out_channels, kernel_h=kh, kernel_w=kw, stride_h=sh,
            stride_w=sw, pad_h=ph, pad_w=pw, dilation_h=dh, dilation_w=dw, out_height=ho, out_width=wo,
            chunks=len(chunks), chunk_k=chunk_k, chunk_offset=self.offsets.data_ptr(),
            sign=self.sign.data_ptr(), threshold=self.threshold.data_ptr(), out=signs,
        )  # fmt: skip
        # float32 weights in (kh, kw, channel) order, their L1 norms, and max |x| per input row (written per call):
        # what the kernel needs to recompute the signs bf16 rounding could have flipped
        self.weight32 = weight.detach().float().permute(0, 2, 3, 1).contiguous()
        self.l1 = self.weight32.abs().sum((1, 2, 3)).contiguous()
        self.row_max = torch.zeros(n * h)
        for name in ("weight32", "l1", "row_max", "weight_lo"):
            setattr(self.args, name, getattr(self, name).data_ptr())
        lengths = dict(padded=self.padded, weight=self.weight, bias=self.bias, chunk_offset=self.offsets,
                       sign=self.sign, threshold=self.threshold, out=self.out, weight32=self.weight32, l1=self.l1,
                       row_max=self.row_max, weight_lo=self.weight_lo)  # fmt: skip
        for name, t in lengths.items():
            setattr(self.args, f"{name}_bytes", _nbytes(t))
        self.shape = tuple(input_shape)
        self._fn = library().cn_fconv_pack

    def _run(self, args: _FconvArgs, threads: int) -> int:
        return self._fn(ctypes.byref(args), self.isa, threads)


# ---------------------------------------------------------------------------------------------- float conv, float32

F32_BLOCK = 24  # output channels per block of the float32 conv's weights (CN_F32_BLOCK)


def f32_conv_paths() -> list[str]:
    """The :class:`Float32ConvSigns` paths this CPU runs (AVX2 with FMA)."""
    return ["avx2"] if library().cn_fconv32_supported() else []


class Float32ConvSigns(_ConvSigns):
    """A float conv (groups 1) followed by :func:`pack_signs` with per-channel ``sign`` and ``threshold``, in float32
    with AVX2 and FMA, for inputs of one shape: input NCHW floats (any strides), output packed bits or +-1 bytes like
    :func:`pack_signs`. Each sum runs over its window in (kh, kw, channel) order, then adds the bias, and its sign is
    decided as :func:`pack_signs` decides it: the result differs from torch's float32 conv followed by
    :func:`pack_signs` by float summation order only. It spares the runner torch's conv, its thread pool and a
    packing pass: above all on CPUs without a bf16 path (:class:`Bf16ConvSigns`)."""

    what = "float32 conv"

    def __init__(self, weight, bias, stride, padding, dilation, sign, threshold, input_shape, *, groups=1,
                 out_format="bits", out_padding=(0, 0)):  # fmt: skip
        if not f32_conv_paths():
            raise BinaryKernelUnavailable("this CPU cannot run the float32 conv path (it needs AVX2 and FMA)")
        n, c, h, w = input_shape
        out_channels, _, kh, kw = weight.shape
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        ho, wo = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
        blocks = -(-out_channels // F32_BLOCK)
        width = blocks * F32_BLOCK

        def per_channel(v, fill):
            return torch.cat([v.detach().float().reshape(-1), torch.full((width - out_channels,), fill)])

        # [block][kh][kw][channel][24 outputs]: the block's weights of one window element, three vector loads
        w32 = torch.zeros(width, kh, kw, c)
        w32[:out_channels] = weight.detach().float().permute(0, 2, 3, 1)
        self.weight = w32.reshape(blocks, F32_BLOCK, kh * kw * c).transpose(1, 2).contiguous()
        self.bias = per_channel(bias if bias is not None else torch.zeros(out_channels), 0.0)
        self.sign, self.threshold = per_channel(sign, 1.0), per_channel(threshold, 0.0)
        self.padded = torch.zeros(n, h + 2 * ph, w + 2 * pw, c)  # the border stays zero
        self.out, signs = _signs_out(out_format, None, n, ho, wo, out_channels, groups, out_padding)
        self.args = _Fconv32Args(
            batch=n, channels=c, height=h, width=w, padded=self.padded.data_ptr(), weight=self.weight.data_ptr(),
            out_channels=out_channels, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw,
            dilation_h=dh, dilation_w=dw, out_height=ho, out_width=wo, bias=self.bias.data_ptr(),
            sign=self.sign.data_ptr(), threshold=self.threshold.data_ptr(), out=signs,
        )  # fmt: skip
        for name in ("padded", "weight", "bias", "sign", "threshold", "out"):
            setattr(self.args, f"{name}_bytes", _nbytes(getattr(self, name)))
        self.shape = tuple(input_shape)
        self._fn = library().cn_fconv32_pack

    def _run(self, args: _Fconv32Args, threads: int) -> int:
        return self._fn(ctypes.byref(args), threads)
