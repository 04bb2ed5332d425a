"""A dataset from one array file: an ``.npz`` (numpy) or ``.pt`` (a dict of tensors, read with
``torch.load(weights_only=True)``) holding ``x_train``, ``y_train``, ``x_test`` and ``y_test``.
Declared in ``rsc.toml``::

    [datasets.scans]
    kind = "arrays"
    path = "scans.npz"
    layout = "nhwc"        # optional for 4-d images: "nchw" or "nhwc" (default: guessed)
    classes = ["ok", "bad"]  # optional class names (default "0", "1", ...)

Images are N x H x W (grey) or N x C x H x W / N x H x W x C with C = 1 or 3, as uint8, or as
floats in [0, 1] that are whole multiples of 1/255 (rsc keeps uint8, as for every dataset).
Labels are whole numbers 0..K-1, one per image; K is the number of ``classes`` or the largest
label + 1. A missing key, a wrong shape or dtype, or labels that do not match the images is one
clear error, and nothing is cached. The decoded tensors carry the file's SHA-256."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsc_core.data.cache import RawSplits, first_line
from rsc_core.storage.digests import file_digest
from rsc_core.errors import DatasetCorruptError, UserConfigError
from rsc_core.user_config import where

from .files import FileDataset, SourceFacts

KEYS = ("x_train", "y_train", "x_test", "y_test")
LAYOUTS = ("nchw", "nhwc")
SUFFIXES = (".npz", ".pt")


class ArrayDataset(FileDataset):
    """Train and test arrays in one ``.npz`` or ``.pt`` file."""

    kind = "arrays"
    settings = {"layout": (str,), "classes": (list,)}

    @classmethod
    def check_settings(cls, name: str, table: dict[str, Any]) -> None:
        place = where("datasets", name)
        if Path(table["path"]).suffix not in SUFFIXES:
            raise UserConfigError(f"{place}: path must be a .npz or .pt file, got "
                                  f"{table['path']}")
        if table.get("layout", "nchw") not in LAYOUTS:
            raise UserConfigError(f"{place}: layout must be one of {', '.join(LAYOUTS)}, got "
                                  f"{table['layout']!r}")
        classes = table.get("classes")
        if classes is not None and (len(classes) < 2 or not all(isinstance(c, str)
                                                                for c in classes)):
            raise UserConfigError(f"{place}: classes must list at least two class names "
                                  f"(strings), got {classes!r}")

    @classmethod
    def read_facts(cls) -> SourceFacts:
        """Labels are read whole (they are small); of the images only the shape."""
        arrays = _open(cls.source(), cls.name)
        labels = [arrays.get("y_train"), arrays.get("y_test")]
        shape = arrays.shape("x_train")
        if any(y is None for y in labels) or shape is None:
            raise _missing(cls.name, cls.source(), arrays.keys())
        image_shape = cls.image_shape(shape, "x_train")
        classes = cls.declaration.get("classes")
        top = max((int(np.max(y)) for y in labels if np.size(y)), default=0)
        return SourceFacts(len(classes) if classes else top + 1, image_shape)

    @classmethod
    def image_shape(cls, shape: tuple[int, ...], key: str) -> tuple[int, int, int]:
        """C x H x W from an array's shape, by the declared or the evident layout."""
        layout = cls.declaration.get("layout")
        if len(shape) == 3:
            return (1, shape[1], shape[2])
        if len(shape) == 4:
            if layout is None:
                if shape[1] in (1, 3):
                    layout = "nchw"
                elif shape[3] in (1, 3):
                    layout = "nhwc"
            if layout == "nchw" and shape[1] in (1, 3):
                return (shape[1], shape[2], shape[3])
            if layout == "nhwc" and shape[3] in (1, 3):
                return (shape[3], shape[1], shape[2])
        raise DatasetCorruptError(
            f"dataset {cls.name!r}: {key} in {cls.source()} has shape {shape}; images must be "
            f"N x H x W, N x C x H x W or N x H x W x C with C = 1 or 3 (set layout in "
            f"{where('datasets', cls.name)} when it is ambiguous)")

    def source_files(self) -> list[Path]:
        return [self.source()]

    def decode(self, root: Path) -> RawSplits:
        arrays = _open(self.source(), self.name)
        missing = [key for key in KEYS if key not in arrays.keys()]
        if missing:
            raise _missing(self.name, self.source(), arrays.keys())
        shape = self.input_shape
        splits = []
        for split in ("train", "test"):
            images = self._images(arrays.get(f"x_{split}"), f"x_{split}", shape)
            labels = self._labels(arrays.get(f"y_{split}"), f"y_{split}", len(images))
            splits += [torch.from_numpy(images), torch.from_numpy(labels)]
        names = self.declaration.get("classes") or [str(i) for i in range(self.num_classes)]
        return RawSplits(*splits, tuple(names), digest=file_digest(self.source()))

    def _images(self, x: np.ndarray, key: str, shape: tuple[int, int, int]) -> np.ndarray:
        found = self.image_shape(tuple(x.shape), key)
        if found != shape:
            raise DatasetCorruptError(
                f"dataset {self.name!r}: {key} holds {' x '.join(map(str, found))} images but "
                f"x_train holds {' x '.join(map(str, shape))}; both splits need one shape")
        if x.ndim == 3:
            x = x[:, None]
        elif found != tuple(x.shape[1:]):  # N x H x W x C
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(_as_uint8(x, key, self.name))

    def _labels(self, y: np.ndarray, key: str, count: int) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != count or not np.issubdtype(y.dtype, np.integer):
            raise DatasetCorruptError(
                f"dataset {self.name!r}: {key} in {self.source()} is {y.dtype} of shape "
                f"{y.shape}; it needs one whole-number label per image, shape ({count},)")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise DatasetCorruptError(
                f"dataset {self.name!r}: {key} has labels outside 0..{self.num_classes - 1} "
                f"({int(y.min())}..{int(y.max())}); number the classes from 0")
        return y.astype(np.int64)


def _as_uint8(x: np.ndarray, key: str, name: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        scaled = x.astype(np.float64) * 255.0
        rounded = np.round(scaled)
        if x.size and (np.nanmin(x) >= 0 and np.nanmax(x) <= 1
                       and np.abs(scaled - rounded).max() < 1e-3):
            return rounded.astype(np.uint8)
    raise DatasetCorruptError(
        f"dataset {name!r}: {key} is {x.dtype}; store images as uint8 (0-255), or as floats "
        f"in [0, 1] that are whole multiples of 1/255")


class _Arrays:
    """The four arrays of an .npz or .pt file, read one at a time."""

    def __init__(self, path: Path, content: Any) -> None:
        self.path, self.content = path, content

    def keys(self) -> list[str]:
        return list(self.content.files if isinstance(self.content, np.lib.npyio.NpzFile)
                    else self.content)

    def get(self, key: str) -> np.ndarray | None:
        if key not in self.keys():
            return None
        value = self.content[key]
        return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

    def shape(self, key: str) -> tuple[int, ...] | None:
        """An array's shape without reading it (the .npy header; a tensor's shape)."""
        if key not in self.keys():
            return None
        if isinstance(self.content, np.lib.npyio.NpzFile):
            with self.content.zip.open(f"{key}.npy") as fh:
                version = np.lib.format.read_magic(fh)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                return tuple(read(fh)[0])
        return tuple(self.content[key].shape)


def _open(path: Path, name: str) -> _Arrays:
    """The file's arrays; anything unreadable is one ``DatasetCorruptError``."""
    try:
        if path.suffix == ".npz":
            return _Arrays(path, np.load(path, allow_pickle=False))
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetCorruptError(f"dataset {name!r}: {path} cannot be read "
                                  f"({first_line(exc)}); write it with numpy.savez or "
                                  f"torch.save") from None
    except Exception as exc:  # the weights-only unpickler refuses code: same one line
        raise DatasetCorruptError(f"dataset {name!r}: {path} cannot be read safely "
                                  f"({first_line(exc)}); save a plain dict of tensors") from None
    if not isinstance(content, dict):
        raise DatasetCorruptError(f"dataset {name!r}: {path} holds a {type(content).__name__},"
                                  f" not a dict of {', '.join(KEYS)}")
    return _Arrays(path, content)


def _missing(name: str, path: Path, keys: list[str]) -> DatasetCorruptError:
    absent = [key for key in KEYS if key not in keys]
    return DatasetCorruptError(f"dataset {name!r}: {path} has no {', '.join(absent)} (it holds "
                               f"{', '.join(keys) or 'nothing'}); it needs {', '.join(KEYS)}")
