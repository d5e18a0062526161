"""Packed file size against the float weights for every binarized model (generated weights: sizes do not depend
on the values).

    PYTHONPATH=src python benchmarks/binary_sizes.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from compactnets import create_model
from compactnets.deploy.packed_export import export_packed

sys.path.insert(0, str(Path(__file__).parent))
from binary_agreement import sizes  # noqa: E402


def main():
    print("| model | float32 weights (safetensors) | packed file | ratio | binary weights: float32 -> bits | "
          "with per-channel terms | rest (full-precision layers, BN) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in ("nin_xnornet", "nin_gc_xnornet"):
        model = create_model(name).eval()
        with tempfile.TemporaryDirectory() as tmp:
            packed = Path(tmp) / "m.packed.safetensors"
            export_packed(model, packed)
            s = sizes(model, packed, Path(tmp))
        fl, pk = s["float_safetensors_bytes"], s["packed_bytes"]
        bw, bits, terms = (
            s["binary_weights_float_bytes"],
            s["binary_weights_packed_bytes"],
            s["binary_per_channel_bytes"],
        )
        print(f"| {name} | {fl:,} B | {pk:,} B | **{fl / pk:.1f}×** | {bw:,} B -> {bits:,} B (**{bw / bits:.1f}×**) | "
              f"{bw / (bits + terms):.1f}× | {pk - bits - terms:,} B |")  # fmt: skip


if __name__ == "__main__":
    main()
