"""Write MNIST or CIFAR-10 out as image files in torchvision's ImageFolder layout, with no rsc
code at all (torchvision or pickle reads the data, Pillow writes the files):

    OUT/train/<class>/<index>.<ext>      OUT/test/<class>/<index>.<ext>

``index`` is the image's position in the dataset's own order, zero-padded to five digits, so
sorting a split's file names (rsc's ``order = "name"``) restores that order exactly. PNG is
lossless (every pixel is the byte the dataset holds); JPEG is not, like most photos.

    python docs/examples/write_imagefolder.py mnist ROOT OUT
        all of MNIST as PNG: the parity check of docs/results.md
    python docs/examples/write_imagefolder.py cifar10 ROOT OUT --classes cat,dog \\
        --per-class 1000 --format jpg
        the stand-in for "your own images" in docs/own-data.md

ROOT is the data root (MNIST/raw/*-ubyte, cifar-10-batches-py/). CIFAR-10 is read from its
python batches directly, because torchvision refuses copies whose checksums differ (the
project's copy is rebuilt, see its README)."""
from __future__ import annotations

import argparse
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def mnist(root: str, split: str) -> Iterator[tuple[np.ndarray, str]]:
    """(H x W uint8 image, class name) in MNIST's order."""
    import torchvision

    data = torchvision.datasets.MNIST(root, train=split == "train", download=False)
    for image, label in zip(data.data.numpy(), data.targets.tolist()):
        yield image, str(label)


def cifar10(root: str, split: str) -> Iterator[tuple[np.ndarray, str]]:
    """(H x W x 3 uint8 image, class name) in CIFAR-10's order."""
    folder = Path(root) / "cifar-10-batches-py"
    with open(folder / "batches.meta", "rb") as fh:
        names = pickle.load(fh, encoding="latin1")["label_names"]
    for batch in CIFAR_BATCHES[split]:
        with open(folder / batch, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        for row, label in zip(entry["data"], entry["labels"]):
            yield row.reshape(3, 32, 32).transpose(1, 2, 0), names[label]


def write(images: Iterator[tuple[np.ndarray, str]], out: Path, classes: set[str] | None,
          per_class: int | None, extension: str) -> int:
    counts: dict[str, int] = {}
    for index, (image, name) in enumerate(images):
        if classes is not None and name not in classes:
            continue
        if per_class is not None and counts.get(name, 0) >= per_class:
            continue
        counts[name] = counts.get(name, 0) + 1
        (out / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / name / f"{index:05d}.{extension}")
    return sum(counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "cifar10"])
    parser.add_argument("root", help="the data root (torchvision's layout)")
    parser.add_argument("out", help="folder to write train/ and test/ into")
    parser.add_argument("--classes", help="comma-separated class names to keep (default all)")
    parser.add_argument("--per-class", type=int, help="at most this many training images "
                                                      "per class (test: a tenth)")
    parser.add_argument("--format", choices=["png", "jpg"], default="png")
    args = parser.parse_args()
    read = mnist if args.dataset == "mnist" else cifar10
    classes = set(args.classes.split(",")) if args.classes else None
    for split in ("train", "test"):
        limit = args.per_class if split == "train" or args.per_class is None else \
            max(1, args.per_class // 10)
        count = write(read(args.root, split), Path(args.out) / split, classes, limit,
                      args.format)
        print(f"{split}: {count} images under {Path(args.out) / split}")


if __name__ == "__main__":
    main()
