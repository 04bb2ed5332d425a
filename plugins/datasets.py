"""Built-in dataset providers: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 (fine or coarse).

Each reads a data root in torchvision's on-disk layout. Decoding the source files costs far more
than reading one tensor file, so the decoded uint8 tensors are cached in rsc's own cache folder
(the data root may be read-only) and keyed by the source files' size and mtime, so a changed
source is decoded again. CIFAR copies whose files do not match torchvision's published MD5s
(re-packed mirrors) are read directly, with a warning that their integrity was not verified.
"""
from __future__ import annotations

import hashlib
import pickle
import warnings
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

import rsc_core
from rsc_core.atomic import write_torch
from rsc_core.datasets import DatasetBundle, DatasetProvider, ImageData, to_unit_float
from rsc_core.errors import DatasetCorruptError, DatasetMissingError
from rsc_core.paths import cache_dir

#: Bump when the layout of cache files changes, so old files are never misread.
CACHE_VERSION = 1


class UnverifiedDataWarning(UserWarning):
    """Data was read from files whose checksums did not match the published ones."""


class CacheWarning(UserWarning):
    """rsc could not write its tensor cache; loading still works, only slower."""


@dataclass(frozen=True)
class RawSplits:
    """Both splits as decoded from disk: uint8 N x C x H x W images, int64 labels.

    Kept as uint8 because that is what is cached (4x smaller than float32)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    verified: bool = True

    def problem(self, provider: DatasetProvider) -> str | None:
        """What is wrong with these tensors for ``provider``, or None if they fit."""
        if len(self.classes) != provider.num_classes:
            return f"{len(self.classes)} class names, expected {provider.num_classes}"
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or tuple(images.shape[1:]) != provider.input_shape:
                return (f"{split} images are {images.dtype} {tuple(images.shape)}, expected "
                        f"uint8 N x {' x '.join(map(str, provider.input_shape))}")
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                return (f"{split} labels are {labels.dtype} {tuple(labels.shape)}, expected "
                        f"int64 ({images.shape[0]},)")
            if labels.numel() and not (0 <= int(labels.min()) <= int(labels.max())
                                       < provider.num_classes):
                return f"{split} labels outside 0..{provider.num_classes - 1}"
        return None

    def to_cache(self) -> dict[str, Any]:
        """A dict of tensors and plain values, loadable with ``weights_only=True``."""
        return {"version": CACHE_VERSION, "classes": list(self.classes),
                "verified": self.verified, "train_images": self.train_images.contiguous(),
                "train_labels": self.train_labels.contiguous(),
                "test_images": self.test_images.contiguous(),
                "test_labels": self.test_labels.contiguous()}

    @classmethod
    def from_cache(cls, obj: Any, provider: DatasetProvider) -> RawSplits | None:
        """Rebuild from a cache dict; None if it is not a valid, current cache entry."""
        tensors = ("train_images", "train_labels", "test_images", "test_labels")
        try:
            if obj["version"] != CACHE_VERSION or not all(
                    isinstance(obj[key], torch.Tensor) for key in tensors):
                return None
            raw = cls(*(obj[key] for key in tensors), tuple(str(c) for c in obj["classes"]),
                      bool(obj["verified"]))
        except (KeyError, TypeError, IndexError):
            return None
        return raw if raw.problem(provider) is None else None

    def bundle(self, name: str) -> DatasetBundle:
        """The user-facing float32 dataset (uint8 / 255, as the reference scales)."""
        return DatasetBundle(
            name=name,
            train=ImageData(to_unit_float(self.train_images), self.train_labels),
            test=ImageData(to_unit_float(self.test_images), self.test_labels),
            classes=self.classes,
        )


def _first_line(exc: BaseException) -> str:
    """A one-line description of a foreign exception, for rsc's one-line errors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _torchvision_class(name: str) -> Any:
    """Looked up at call time: importing torchvision is slow and a cached load never needs it
    (tests also replace these classes)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, name)


class CachedProvider(DatasetProvider):
    """Shared loading logic: presence check, optional download, cache, decode, validate.

    Subclasses set ``torchvision_class`` (used for downloads) and implement ``decode``."""

    torchvision_class: ClassVar[str] = ""

    def load(self, root: Path, download: bool = False) -> DatasetBundle:
        """Load both splits, from rsc's tensor cache when the source files are unchanged."""
        root = Path(root)
        if not self.present(root):
            if not download:
                raise self.missing_error(root)
            self.download(root)
        cache_file = self.cache_file(root)
        raw = read_cache(cache_file, self)
        if raw is None:
            raw = self.decode(root)
            problem = raw.problem(self)
            if problem:
                raise DatasetCorruptError(
                    f"dataset {self.name!r} in {root / self.folder} is not what rsc expects "
                    f"({problem}); replace the files with a fresh copy")
            write_cache(cache_file, raw)
        if not raw.verified:
            warnings.warn(self.unverified_message(root), UnverifiedDataWarning, stacklevel=2)
        return raw.bundle(self.name)

    def present(self, root: Path) -> bool:
        """Whether every expected file exists (checked before torchvision is involved, so a
        missing dataset gives rsc's one-line error, not torchvision's)."""
        folder = root / self.folder
        return all((folder / name).is_file() for name in self.files)

    def download(self, root: Path) -> None:
        """Fetch the files with torchvision's downloader (only ever called on request)."""
        try:
            _torchvision_class(self.torchvision_class)(str(root), train=True, download=True)
        except Exception as exc:  # network, disk or checksum errors: all one line for the user
            raise DatasetMissingError(
                f"dataset {self.name!r}: download into {root} failed ({_first_line(exc)}); "
                f"check the network, or put a copy there and set RSC_DATA_DIR or --data-dir"
            ) from None
        if not self.present(root):
            raise self.missing_error(root)

    def cache_file(self, root: Path) -> Path:
        """``<cache>/tensors/<name>-<folder hash>-<source hash>.pt``; the source hash covers
        each file's size and mtime, so editing or replacing a file invalidates the entry."""
        folder = (root / self.folder).resolve()
        stats = []
        for name in self.files:
            st = (folder / name).stat()
            stats.append((name, st.st_size, st.st_mtime_ns))
        where = _digest(str(folder))[:8]
        what = _digest(repr((CACHE_VERSION, self.name, stats)))[:16]
        return cache_dir() / "tensors" / f"{self.name}-{where}-{what}.pt"

    def unverified_message(self, root: Path) -> str:
        return (f"dataset {self.name!r}: files in {root / self.folder} do not match the "
                f"published MD5 checksums (a re-packed copy?); read them directly, integrity "
                f"not verified")

    @abstractmethod
    def decode(self, root: Path) -> RawSplits:
        """Read the source files (all present) into uint8 tensors."""


def read_cache(path: Path, provider: DatasetProvider) -> RawSplits | None:
    """The cached tensors, or None when absent, unreadable or invalid: a bad cache file is
    only ever a reason to decode again, never an error."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, weights_only=True)
    except Exception:
        return None
    return RawSplits.from_cache(obj, provider)


def write_cache(path: Path, raw: RawSplits) -> None:
    """Write atomically and remove older entries for the same folder; failure only warns,
    because the cache is an optimisation."""
    try:
        write_torch(path, raw.to_cache())
    except OSError as exc:
        warnings.warn(f"could not write the dataset cache {path} ({exc.strerror or exc}); "
                      f"loading works but stays slow; set RSC_CACHE_DIR to a writable folder",
                      CacheWarning, stacklevel=3)
        return
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(f"{prefix}*.pt"):
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files read by torchvision


class IdxProvider(CachedProvider):
    """A grey 28 x 28 dataset stored as four uncompressed IDX files, read by torchvision."""

    input_shape = (1, 28, 28)
    num_classes = 10
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def decode(self, root: Path) -> RawSplits:
        """torchvision's ``.data``/``.targets`` are already whole uint8/int64 tensors; only a
        channel axis is added."""
        cls = _torchvision_class(self.torchvision_class)
        try:
            train = cls(str(root), train=True, download=False)
            test = cls(str(root), train=False, download=False)
        except Exception as exc:  # truncated or foreign files trip torchvision's asserts
            raise DatasetCorruptError(
                f"dataset {self.name!r} in {root / self.folder} could not be read "
                f"({_first_line(exc)}); replace the files with a fresh copy") from None
        return RawSplits(train.data.unsqueeze(1), train.targets.to(torch.int64),
                         test.data.unsqueeze(1), test.targets.to(torch.int64),
                         tuple(cls.classes))


class MNIST(IdxProvider):
    """MNIST handwritten digits (60,000 train / 10,000 test, 1 x 28 x 28)."""

    name = "mnist"
    description = "MNIST handwritten digits, 60k/10k grey 28x28, 10 classes"
    folder = "MNIST/raw"
    torchvision_class = "MNIST"


class FashionMNIST(IdxProvider):
    """Fashion-MNIST clothing images (60,000 train / 10,000 test, 1 x 28 x 28)."""

    name = "fashion"
    description = "Fashion-MNIST clothing, 60k/10k grey 28x28, 10 classes"
    folder = "FashionMNIST/raw"
    torchvision_class = "FashionMNIST"


# ---------------------------------------------------------------------------------------------
# CIFAR: python pickles, verified by torchvision or read directly


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

    torchvision is tried first because it checks the published MD5s; it rejects re-packed
    copies, whose files are then read directly (restricted unpickling) with a warning."""

    input_shape = (3, 32, 32)
    train_files: ClassVar[tuple[str, ...]] = ()
    test_files: ClassVar[tuple[str, ...]] = ()
    meta_file: ClassVar[str] = ""
    label_key: ClassVar[str] = ""  # key of the labels in each batch file
    names_key: ClassVar[str] = ""  # key of the class names in the meta file
    torchvision_labels: ClassVar[bool] = True  # torchvision returns the labels we want

    def decode(self, root: Path) -> RawSplits:
        cls = _torchvision_class(self.torchvision_class)
        try:
            train = cls(str(root), train=True, download=False)
            test = cls(str(root), train=False, download=False)
        except RuntimeError:  # files are present (checked), so their checksums differ
            return self.decode_pickles(root, verified=False)
        except Exception as exc:
            raise self.corrupt_error(root, exc) from None
        if not self.torchvision_labels:  # e.g. coarse labels: verified, now read ourselves
            return self.decode_pickles(root, verified=True)
        return RawSplits(_chw(train.data), torch.as_tensor(train.targets, dtype=torch.int64),
                         _chw(test.data), torch.as_tensor(test.targets, dtype=torch.int64),
                         tuple(train.classes))

    def decode_pickles(self, root: Path, verified: bool) -> RawSplits:
        """Read the documented python batches: ``data`` is N x 3072 uint8 in CHW order."""
        folder = root / self.folder
        try:
            train_images, train_labels = self._read_split(folder, self.train_files)
            test_images, test_labels = self._read_split(folder, self.test_files)
            names = read_pickle(folder / self.meta_file)[self.names_key]
            classes = tuple(str(_text(n)) for n in names)
        except Exception as exc:  # malformed, truncated or refused pickles
            raise self.corrupt_error(root, exc) from None
        return RawSplits(train_images, train_labels, test_images, test_labels, classes,
                         verified)

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
            f"({_first_line(exc)}); replace the files with a fresh copy")


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
    files = (*train_files, *test_files, meta_file)
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
    files = (*train_files, *test_files, meta_file)
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


PROVIDERS: tuple[type[DatasetProvider], ...] = (MNIST, FashionMNIST, CIFAR10, CIFAR100,
                                                CIFAR100Coarse)


@rsc_core.hookimpl
def register_datasets(register: Any) -> None:
    """Register the built-in datasets exactly as a third-party plugin would."""
    for provider in PROVIDERS:
        register(provider)
