"""Build src/compactnets/data/embedded/cifar10_subset.npz from the JPEG CIFAR-10 ImageFolder.

The file holds the first N images (by file name) of every class of each split, as their original JPEG bytes
(no re-encoding), plus labels and class names; numpy arrays only, so it loads with allow_pickle=False.

    python tools/make_embedded_cifar10.py ../shared/data/cifar10 --train-per-class 500 --test-per-class 100
"""

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src/compactnets/data/embedded/cifar10_subset.npz"


def pack(split_dir: Path, per_class: int, classes: list[str]):
    blobs, labels = [], []
    for label, name in enumerate(classes):
        files = sorted((split_dir / name).glob("*.jpg"))[:per_class]
        if len(files) < per_class:
            raise SystemExit(f"{split_dir / name} has only {len(files)} images")
        blobs += [f.read_bytes() for f in files]
        labels += [label] * per_class
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets, np.array(labels, dtype=np.int64)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="CIFAR-10 ImageFolder with train/ and test/")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    classes = sorted(p.name for p in (args.root / "train").iterdir() if p.is_dir())
    arrays = {"classes": np.array(classes)}
    for split, n in (("train", args.train_per_class), ("test", args.test_per_class)):
        arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"], arrays[f"{split}_labels"] = pack(
            args.root / split, n, classes
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
