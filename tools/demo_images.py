"""Write a few images of the embedded CIFAR-10 test subset as PNG files, for `compactnets predict` in the demo.

python tools/demo_images.py runs/demo/images --per-class 1
"""

import argparse
from pathlib import Path

from PIL import Image

from compactnets.data.datasets import embedded_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=1)
    args = parser.parse_args()
    test = embedded_dataset(train=False)
    args.out.mkdir(parents=True, exist_ok=True)
    written = {}
    for image, label in zip(test.images, test.targets, strict=True):
        name = test.classes[label]
        if written.get(name, 0) < args.per_class:
            written[name] = written.get(name, 0) + 1
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(args.out / f"{name}_{written[name]}.png")
    print(f"{sum(written.values())} images in {args.out}")


if __name__ == "__main__":
    main()
