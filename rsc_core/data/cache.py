"""A base for dataset providers that decode source files into uint8 tensors: presence check,
optional download through torchvision, validation, and a tensor cache in rsc's own cache folder
(the data root may be read-only), keyed by the source files' size and mtime so a changed source
is decoded again. Source files are checked against the MD5s a provider declares as published; the
result is cached with the tensors, so only a cache miss hashes the files, and a mismatch warns
once per process and folder. Built-in and third-party dataset plugins subclass ``CachedProvider``
and implement ``decode(root)``."""
from __future__ import annotations

import hashlib
import warnings
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from rsc_core.storage.atomic import write_torch
from rsc_core.data.datasets import DatasetBundle, DatasetProvider, ImageData, to_unit_float
from rsc_core.storage.digests import file_digest
from rsc_core.errors import DatasetCorruptError, DatasetMissingError
from rsc_core.storage.paths import cache_dir

#: Bump when the layout of cache files changes, so old files are never misread. Version 2 stores
#: which files failed verification (version 1 entries of MNIST were never verified).
CACHE_VERSION = 2

#: Folders already warned about in this process: a mismatch warns once, not on every load.
_warned_folders: set[Path] = set()


class UnverifiedDataWarning(UserWarning):
    """Data was read from files whose checksums did not match the published ones."""


class CacheWarning(UserWarning):
    """rsc could not write its tensor cache; loading still works, only slower."""


@dataclass(frozen=True)
class RawSplits:
    """Both splits as decoded from disk: uint8 N x C x H x W images, int64 labels.

    Kept as uint8 because that is what is cached (4x smaller than float32). ``mismatched``
    names the source files whose MD5 differed from the published one; it is cached with the
    tensors so that a cached load knows the verdict without hashing again."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mismatched: tuple[str, ...] = ()
    #: A checksum of the source, for sources without published MD5s (a user's image folder
    #: or array file), so a user can tell which copy a cache entry was decoded from.
    digest: str = ""

    @property
    def verified(self) -> bool:
        """No source file differs from its published checksum (files without one are not
        counted)."""
        return not self.mismatched

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
                "mismatched": list(self.mismatched), "digest": self.digest,
                "train_images": self.train_images.contiguous(),
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
                      tuple(str(name) for name in obj["mismatched"]), str(obj.get("digest", "")))
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


def first_line(exc: BaseException) -> str:
    """A one-line description of a foreign exception, for rsc's one-line errors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def torchvision_class(name: str) -> Any:
    """Looked up at call time: importing torchvision is slow and a cached load never needs it
    (tests also replace these classes)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, name)


class CachedProvider(DatasetProvider):
    """Shared loading logic: presence check, optional download, cache, decode, validate, verify.

    Subclasses set ``torchvision_class`` (used for downloads), declare the published MD5s of
    their files in ``md5s`` (or override ``published_md5s``) and implement ``decode``."""

    torchvision_class: ClassVar[str] = ""
    #: Published MD5 of each file in ``files``; a file without one is not verified.
    md5s: ClassVar[Mapping[str, str]] = {}

    def load(self, root: Path, download: bool = False) -> DatasetBundle:
        """Load both splits, from rsc's tensor cache when the source files are unchanged."""
        return self.load_raw(root, download).bundle(self.name)

    def load_raw(self, root: Path, download: bool = False) -> RawSplits:
        """``load`` before the conversion to float: the cached uint8 tensors and facts."""
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
                    f"dataset {self.name!r} in {self.location(root)} is not what rsc expects "
                    f"({problem}); replace the files with a fresh copy")
            raw = replace(raw, mismatched=self.mismatched_files(root))
            write_cache(cache_file, raw)
        if raw.mismatched:
            self.warn_unverified(root, raw.mismatched)
        return raw

    def location(self, root: Path) -> Path:
        """Where the source files are (for messages): the provider's folder of the data root;
        a dataset declared with its own path overrides this."""
        return root / self.folder

    def published_md5s(self) -> Mapping[str, str]:
        """The published MD5 of each file that has one. A method so that a provider can look
        them up lazily: only a cache miss needs them."""
        return self.md5s

    def mismatched_files(self, root: Path) -> tuple[str, ...]:
        """The files whose MD5 differs from the published one (hashes every file that has
        one, so it runs only on a cache miss)."""
        folder = root / self.folder
        expected = self.published_md5s()
        return tuple(name for name in self.files
                     if name in expected and file_digest(folder / name, "md5") != expected[name])

    def present(self, root: Path) -> bool:
        """Whether every expected file exists (checked before torchvision is involved, so a
        missing dataset gives rsc's one-line error, not torchvision's)."""
        folder = root / self.folder
        return all((folder / name).is_file() for name in self.files)

    def download(self, root: Path) -> None:
        """Fetch the files with torchvision's downloader (only ever called on request)."""
        try:
            torchvision_class(self.torchvision_class)(str(root), train=True, download=True)
        except Exception as exc:  # network, disk or checksum errors: all one line for the user
            raise DatasetMissingError(
                f"dataset {self.name!r}: download into {root} failed ({first_line(exc)}); "
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

    def warn_unverified(self, root: Path, mismatched: tuple[str, ...]) -> None:
        """One ``UnverifiedDataWarning`` per process and folder: repeating it on every load
        would bury other output without telling the user anything new."""
        folder = (root / self.folder).resolve()
        if folder in _warned_folders:
            return
        _warned_folders.add(folder)
        warnings.warn(self.unverified_message(root, mismatched), UnverifiedDataWarning,
                      stacklevel=3)

    def unverified_message(self, root: Path, mismatched: tuple[str, ...]) -> str:
        return (f"dataset {self.name!r}: files in {root / self.folder} differ from their "
                f"published MD5 checksums ({', '.join(mismatched)}; a re-packed or altered "
                f"copy?); read anyway, integrity not verified; replace them with the official "
                f"files to verify")

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
