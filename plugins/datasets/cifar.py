"""CIFAR-10 and CIFAR-100 (fine or coarse labels) in torchvision's python-batch layout.

Copies that match the published MD5s are read by torchvision; re-packed copies are still read,
with a restricted unpickler instead of torchvision's, and the base class warns once that their
integrity was not verified."""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rsc_core.data.cache import CachedProvider, RawSplits, first_line, torchvision_class
from rsc_core.errors import DatasetCorruptError

_NUMPY_GLOBALS = {
    "_reconstruct": np.zeros(0).__reduce__()[0],
    "scalar": np.float64(0).__reduce__()[0],
}
_PLAIN_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    """Allows only numpy arrays and plain containers: files whose checksum did not match must
    not be able to run code. Maps ``numpy.core`` (old pickles) to the running numpy."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and (
                name in _NUMPY_GLOBALS):
            return _NUMPY_GLOBALS[name]
        if (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _text(value: Any) -> Any:
    """Python 2 pickles give bytes or latin-1 str depending on how they were written."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR python-batch file as a dict with str keys."""
    with open(path, "rb") as fh:
        entry = _ArrayUnpickler(fh, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name} holds a {type(entry).__name__}, not a dict")
    return {_text(key): value for key, value in entry.items()}


class CifarProvider(CachedProvider):
    """A CIFAR dataset in torchvision's python-batch layout.

    The published MD5s are torchvision's. torchvision reads the files that match them; it
    rejects re-packed copies, whose files are then read directly (restricted unpickling) and
    reported by the base class's verification."""

    input_shape = (3, 32, 32)
    train_files: ClassVar[tuple[str, ...]] = ()
    test_files: ClassVar[tuple[str, ...]] = ()
    meta_file: ClassVar[str] = ""
    label_key: ClassVar[str] = ""  # key of the labels in each batch file
    names_key: ClassVar[str] = ""  # key of the class names in the meta file
    torchvision_labels: ClassVar[bool] = True  # torchvision returns the labels we want

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """The files to expect follow from the split and meta file names."""
        super().__init_subclass__(**kwargs)
        cls.files = (*cls.train_files, *cls.test_files, cls.meta_file)

    def published_md5s(self) -> Mapping[str, str]:
        """torchvision's list of the published MD5s (looked up only on a cache miss, because
        importing torchvision is slow)."""
        cls = torchvision_class(self.torchvision_class)
        md5s = {name: md5 for name, md5 in (*cls.train_list, *cls.test_list)}
        md5s[cls.meta["filename"]] = cls.meta["md5"]
        return md5s

    def decode(self, root: Path) -> RawSplits:
        cls = torchvision_class(self.torchvision_class)
        try:
            train = cls(str(root), train=True, download=False)
            test = cls(str(root), train=False, download=False)
        except RuntimeError:  # files are present (checked), so their checksums differ
            return self.decode_pickles(root)
        except Exception as exc:
            raise self.corrupt_error(root, exc) from None
        if not self.torchvision_labels:  # e.g. coarse labels: verified, now read ourselves
            return self.decode_pickles(root)
        return RawSplits(_chw(train.data), torch.as_tensor(train.targets, dtype=torch.int64),
                         _chw(test.data), torch.as_tensor(test.targets, dtype=torch.int64),
                         tuple(train.classes))

    def decode_pickles(self, root: Path) -> RawSplits:
        """Read the documented python batches: ``data`` is N x 3072 uint8 in CHW order."""
        folder = root / self.folder
        try:
            train_images, train_labels = self._read_split(folder, self.train_files)
            test_images, test_labels = self._read_split(folder, self.test_files)
            names = read_pickle(folder / self.meta_file)[self.names_key]
            classes = tuple(str(_text(n)) for n in names)
        except Exception as exc:  # malformed, truncated or refused pickles
            raise self.corrupt_error(root, exc) from None
        return RawSplits(train_images, train_labels, test_images, test_labels, classes)

    def _read_split(self, folder: Path, files: tuple[str, ...]) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        images, labels = [], []
        for name in files:
            entry = read_pickle(folder / name)
            data = np.asarray(entry["data"])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{name}: data is {data.dtype} {data.shape}, expected "
                                 f"uint8 N x 3072")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry[self.label_key], dtype=np.int64).reshape(-1))
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    def corrupt_error(self, root: Path, exc: BaseException) -> DatasetCorruptError:
        return DatasetCorruptError(
            f"dataset {self.name!r} in {root / self.folder} could not be read "
            f"({first_line(exc)}); replace the files with a fresh copy")


def _chw(images_hwc: np.ndarray) -> torch.Tensor:
    """torchvision stores CIFAR as N x H x W x C; rsc uses N x C x H x W."""
    return torch.from_numpy(np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)))


class CIFAR10(CifarProvider):
    """CIFAR-10 (50,000 train / 10,000 test, 3 x 32 x 32, 10 classes)."""

    name = "cifar10"
    description = "CIFAR-10 colour images, 50k/10k 3x32x32, 10 classes"
    num_classes = 10
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    torchvision_class = "CIFAR10"


class CIFAR100(CifarProvider):
    """CIFAR-100 with its 100 fine labels (50,000 train / 10,000 test, 3 x 32 x 32)."""

    name = "cifar100"
    description = "CIFAR-100 colour images, 50k/10k 3x32x32, 100 fine classes"
    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    torchvision_class = "CIFAR100"


class CIFAR100Coarse(CIFAR100):
    """CIFAR-100 with its 20 coarse (superclass) labels; same images as ``cifar100``."""

    name = "cifar100coarse"
    description = "CIFAR-100 colour images, 50k/10k 3x32x32, 20 coarse classes"
    num_classes = 20
    label_key = "coarse_labels"
    names_key = "coarse_label_names"
    torchvision_labels = False  # torchvision only knows the fine labels
