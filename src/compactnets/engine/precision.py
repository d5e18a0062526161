"""``--amp auto``: the autocast precision that is fast on the device at hand.

bf16 autocast pays on CPUs with bf16 matrix instructions (AMX or AVX512-BF16: about 3x the fp32 training speed
of NIN on a Zen 5 core) but is several times slower than fp32 on CPUs without them, where oneDNN emulates it;
on CUDA it is used where the GPU supports it. Everywhere else training stays in fp32.
"""

from __future__ import annotations

import torch

from ..cpu import cpu_flags

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
PRECISION_IN_WORDS = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}  # a resolved --amp as tables name it
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_amp(amp: str, device: torch.device, flags: set[str] | None = None) -> tuple[str, str]:
    """(precision, reason): ``amp`` itself unless it is "auto"."""
    if amp != "auto":
        return amp, "as requested"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU supports bf16"
        return "none", "auto: the GPU has no bf16"
    if device.type == "cpu":
        found = [f for f in BF16_CPU_FLAGS if f in (cpu_flags() if flags is None else flags)]
        if found:
            return "bf16", f"auto: the CPU has {' and '.join(found)}"
        return "none", f"auto: the CPU has neither {' nor '.join(BF16_CPU_FLAGS)}"
    return "none", f"auto: fp32 on {device.type}"
