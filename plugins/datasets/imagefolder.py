"""A dataset from a folder of image files in torchvision's ``ImageFolder`` layout::

    PATH/train/<class>/*.png|jpg|...     PATH/test/<class>/*

Classes are the folder names under ``train/``, sorted (label 0 is the first), and ``test/``
must hold exactly the same class folders. Declared in ``rsc.toml``::

    [datasets.xray]
    kind = "imagefolder"
    path = "data/xray"
    size = 32          # optional: H = W = 32, or [H, W]; default: the images' own size
    resize = true      # optional: resize images of another size (default false: refuse them)
    channels = 1       # optional: 1 (grey) or 3 (RGB); default: what the images are
    order = "class"    # optional: "class" (default) or "name" (see below)

**Order.** Indices matter: rsc picks the spurious images as the reference does, by drawing
positions among the training images of the target class, and trains in an order drawn over
all positions. ``order = "class"`` numbers the images as torchvision's ``ImageFolder`` does
(class by class, files sorted by path within a class). ``order = "name"`` numbers all images of
a split by file name, whatever their class (file names must then be unique within a split):
name files by their index with leading zeros (``00042.png``) to give them exactly the indices
of another copy of the data, e.g. MNIST's (docs/own-data.md shows this).

Image files are those with the extensions torchvision reads; hidden files and other files are
ignored. Every image is decoded with Pillow to uint8; an image that cannot be decoded, a class
folder with no image, a class missing from one split, mixed sizes without ``resize = true`` and
mixed grey and colour images without ``channels`` are each one clear error, and nothing is
cached. The decoded tensors carry a SHA-256 of the tree (every image's path and bytes)."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsc_core.data.cache import RawSplits
from rsc_core.errors import DatasetCorruptError, DatasetMissingError, UserConfigError
from rsc_core.user_config import where

from .files import FileDataset, SourceFacts

#: What torchvision's ImageFolder reads.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")
ORDERS = ("class", "name")
#: Pillow modes of one channel; every other mode is read as RGB.
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted by path; hidden ones skipped.
    ``os.walk`` because it lists a folder's entries once (70,000 files: well under a second;
    ``Path.rglob`` with a stat per file took seconds)."""
    found = []
    for parent, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [os.path.join(parent, name) for name in names if not name.startswith(".")
                  and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
    return [Path(path) for path in sorted(found)]


def class_folders(split: Path) -> list[str]:
    """The class names of one split: its sub-folders, sorted, hidden ones skipped."""
    return sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def _open(data: bytes, path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetCorruptError(f"image {path} cannot be read ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else 'corrupt'}); "
                                  f"replace or delete it") from None
    return image


def _channels(image: Any) -> int:
    return 1 if image.mode in GREY_MODES else 3


class ImageFolderDataset(FileDataset):
    """A folder of images, ``train/<class>/*`` and ``test/<class>/*`` (``ImageFolder``)."""

    kind = "imagefolder"
    settings = {"size": (int, list), "resize": (bool,), "channels": (int,), "order": (str,)}

    @classmethod
    def check_settings(cls, name: str, table: dict[str, Any]) -> None:
        place = where("datasets", name)
        size = table.get("size")
        if size is not None:
            sides = [size] if isinstance(size, int) else size
            if len(sides) not in (1, 2) or not all(isinstance(s, int) and not isinstance(
                    s, bool) and s > 0 for s in sides):
                raise UserConfigError(f"{place}: size must be a positive number of pixels or "
                                      f"[height, width], got {size!r}")
        if table.get("channels", 1) not in (1, 3):
            raise UserConfigError(f"{place}: channels must be 1 (grey) or 3 (RGB), got "
                                  f"{table['channels']!r}")
        if table.get("order", "class") not in ORDERS:
            raise UserConfigError(f"{place}: order must be one of {', '.join(ORDERS)}, got "
                                  f"{table['order']!r}")
        if table.get("resize") and size is None:
            raise UserConfigError(f"{place}: resize = true needs size = N (or [H, W]) to "
                                  f"resize to")

    @classmethod
    def declared_size(cls) -> tuple[int, int] | None:
        size = cls.declaration.get("size")
        if size is None:
            return None
        return (size, size) if isinstance(size, int) else (size[0], size[-1])

    @classmethod
    def check_present(cls) -> None:
        super().check_present()
        for split in SPLITS:
            if not (cls.source() / split).is_dir():
                raise DatasetMissingError(
                    f"dataset {cls.name!r}: {cls.source()} has no {split}/ folder; an image "
                    f"folder holds train/<class>/* and test/<class>/* (fix path in "
                    f"{where('datasets', cls.name)})")

    @classmethod
    def read_facts(cls) -> SourceFacts:
        """Classes from the folder names; the shape from the declaration, else from the first
        training image's header (decoding checks that every image agrees)."""
        train = cls.source() / "train"
        classes = class_folders(train)
        if not classes:
            raise DatasetCorruptError(f"dataset {cls.name!r}: {train} has no class folders; "
                                      f"put each class's images in train/<class>/")
        size, channels = cls.declared_size(), cls.declaration.get("channels")
        if size is None or channels is None:
            first = next(iter(image_files(train / classes[0])), None)
            if first is None:
                raise _empty(train / classes[0])
            image = _open(first.read_bytes(), first)
            size = size or (image.height, image.width)
            channels = channels or _channels(image)
        return SourceFacts(len(classes), (int(channels), *size))

    def source_files(self) -> list[Path]:
        return [path for split in SPLITS for path in image_files(self.source() / split)]

    def decode(self, root: Path) -> RawSplits:
        train_classes = class_folders(self.source() / "train")
        test_classes = class_folders(self.source() / "test")
        for split, here, there in (("train", train_classes, test_classes),
                                   ("test", test_classes, train_classes)):
            missing = sorted(set(here) - set(there))
            if missing:
                other = "test" if split == "train" else "train"
                raise DatasetCorruptError(
                    f"dataset {self.name!r}: class {missing[0]!r} is in {split}/ but not in "
                    f"{other}/ ({self.source()}); every class needs images in both splits")
        digest = hashlib.sha256()
        images, labels = {}, {}
        for split in SPLITS:
            images[split], labels[split] = self._decode_split(split, train_classes, digest)
        return RawSplits(images["train"], labels["train"], images["test"], labels["test"],
                         tuple(train_classes), digest=digest.hexdigest())

    def _decode_split(self, split: str, classes: list[str],
                      digest: Any) -> tuple[torch.Tensor, torch.Tensor]:
        folder = self.source() / split
        files: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            found = image_files(folder / name)
            if not found:
                raise _empty(folder / name)
            files += [(path, label) for path in found]
        if self.declaration.get("order") == "name":
            files = self._by_name(files, folder)
        channels, height, width = self.input_shape
        out = np.empty((len(files), channels, height, width), dtype=np.uint8)
        first_mode: tuple[Path, int] | None = None
        for row, (path, _) in enumerate(files):
            data = path.read_bytes()
            digest.update(f"{split}/{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(hashlib.sha256(data).digest())
            image = _open(data, path)
            if "channels" not in self.declaration:
                first_mode = first_mode or (path, _channels(image))
                if _channels(image) != first_mode[1]:
                    raise DatasetCorruptError(
                        f"dataset {self.name!r}: {first_mode[0]} has {first_mode[1]} "
                        f"channel(s) but {path} has {_channels(image)}; declare channels = 1 "
                        f"or 3 in {where('datasets', self.name)} to convert them all")
            out[row] = self._pixels(image, path, channels, height, width)
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        return torch.from_numpy(out), labels

    def _by_name(self, files: list[tuple[Path, int]], folder: Path) -> list[tuple[Path, int]]:
        """``order = "name"``: the split's images sorted by file name across classes."""
        seen: dict[str, Path] = {}
        for path, _ in files:
            if path.name in seen:
                raise DatasetCorruptError(
                    f"dataset {self.name!r}: order = \"name\" needs unique file names in "
                    f"{folder}, but {seen[path.name]} and {path} share one; rename them or use "
                    f"order = \"class\"")
            seen[path.name] = path
        return sorted(files, key=lambda item: item[0].name)

    def _pixels(self, image: Any, path: Path, channels: int, height: int,
                width: int) -> np.ndarray:
        """One image as uint8 C x H x W, converted and resized as declared."""
        image = image.convert("L" if channels == 1 else "RGB")
        if (image.height, image.width) != (height, width):
            if not self.declaration.get("resize"):
                raise DatasetCorruptError(
                    f"dataset {self.name!r}: {path} is {image.height}x{image.width} but the "
                    f"images are {height}x{width}; set size = N (or [H, W]) with resize = true "
                    f"in {where('datasets', self.name)} to resize them, or resize the files")
            from PIL import Image

            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _empty(folder: Path) -> DatasetCorruptError:
    return DatasetCorruptError(f"class folder {folder} holds no image (extensions: "
                               f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
