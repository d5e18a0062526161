"""The CPU in words: its model name and the instruction-set flags that decide what is fast on it (``--amp auto``,
the machine line above latency tables), read from /proc/cpuinfo; elsewhere the flags are empty and the model is
what :mod:`platform` says.
"""

from __future__ import annotations

import contextlib
import platform

# The vector and matrix extensions CPU latency depends on, as a machine line names them.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def vector_flags() -> list[str]:
    """The :data:`VECTOR_FLAGS` this CPU has, in that order."""
    flags = cpu_flags()
    return [f for f in VECTOR_FLAGS if f in flags]


def cpu_model() -> str:
    """The CPU's model name, with its family/model numbers (a bare "AMD EPYC" says nothing of the generation)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        fields = {}
        for line in f:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():
                break
        if "model name" in fields:
            numbers = f" (family {fields['cpu family']}, model {fields['model']})" if "cpu family" in fields else ""
            return fields["model name"] + numbers
    return platform.processor() or platform.machine()
