"""The base of datasets a user declares in ``rsc.toml`` (``[datasets.NAME]``): their files live
at a path of their own, not under the data root, and there are no published checksums to check
them against, so instead rsc records a checksum of the source when it decodes it.

A declared dataset is a class made per declaration (``declare``), so it is registered and looked
up exactly like a built-in provider. Its number of classes and image shape are read from the
source's headers the first time they are asked for (a spec asks before any data is loaded), not
at registration: declaring a dataset costs nothing, and a wrong path is an error only for the
commands that use it. Decoding then checks the data against these facts.

Decoded tensors go to rsc's tensor cache like a built-in dataset's, keyed by the declaration
and the size and modification time of every source file, so editing, adding or removing a file
decodes again. Cache files are written atomically and only after the whole source decoded
without error, so a bad image never leaves a half-filled cache."""
from __future__ import annotations

import hashlib
import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rsc_core.data.cache import CACHE_VERSION, CachedProvider
from rsc_core.errors import DatasetMissingError, UserConfigError
from rsc_core.storage.paths import cache_dir
from rsc_core.user_config import where


@dataclass(frozen=True)
class SourceFacts:
    """What a spec needs before the data is loaded."""

    num_classes: int
    input_shape: tuple[int, int, int]


class _FromSource:
    """A class attribute read from the dataset's source on first use (``SourceFacts``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type) -> Any:
        return getattr(owner.facts(), self.name)


class FileDataset(CachedProvider):
    """A dataset read from one user path; subclasses set ``kind`` and ``settings`` (the keys a
    declaration may have besides ``kind``, ``path`` and ``description``, with their types) and
    implement ``read_facts``, ``source_files`` and ``decode``."""

    kind: ClassVar[str] = ""
    settings: ClassVar[dict[str, tuple[type, ...]]] = {}
    #: The declaration as written (``path`` absolute), set by ``declare``.
    declaration: ClassVar[dict[str, Any]] = {}
    num_classes = _FromSource()  # type: ignore[assignment]
    input_shape = _FromSource()  # type: ignore[assignment]
    _facts: ClassVar[SourceFacts | None] = None

    @classmethod
    def declare(cls, name: str, table: dict[str, Any]) -> type["FileDataset"]:
        """The provider class for ``[datasets.name]``; bad keys or values are one
        ``UserConfigError`` naming the file and the table."""
        table = dict(table)
        if not isinstance(table.get("path"), str) or not table["path"]:
            raise UserConfigError(f"{where('datasets', name)} needs path = \"...\" (the "
                                  f"{cls.kind} to read); fix the file")
        allowed = {"kind": (str,), "path": (str,), "description": (str,), **cls.settings}
        for key, value in table.items():
            if key not in allowed:
                raise UserConfigError(f"{where('datasets', name)}: unknown key {key!r} for "
                                      f"kind {cls.kind!r}; known keys: {', '.join(allowed)}")
            if not isinstance(value, allowed[key]) or (isinstance(value, bool) and
                                                       bool not in allowed[key]):
                kinds = " or ".join(t.__name__ for t in allowed[key])
                raise UserConfigError(f"{where('datasets', name)}: {key} must be a {kinds}, "
                                      f"got {value!r}; fix the file")
        cls.check_settings(name, table)
        description = table.get("description") or f"{cls.kind} {table['path']} (rsc.toml)"
        return type(f"Declared_{name}", (cls,), {"name": name, "description": description,
                                                 "declaration": table, "_facts": None})

    @classmethod
    def check_settings(cls, name: str, table: dict[str, Any]) -> None:
        """Check the values of the kind's own keys (types are already checked)."""

    @classmethod
    def source(cls) -> Path:
        return Path(cls.declaration["path"])

    @classmethod
    def facts(cls) -> SourceFacts:
        if cls._facts is None:
            cls.check_present()
            cls._facts = cls.read_facts()
        return cls._facts

    @classmethod
    def check_present(cls) -> None:
        """A one-line ``DatasetMissingError`` when the source is not there."""
        if not cls.source().exists():
            raise DatasetMissingError(f"dataset {cls.name!r}: {cls.source()} does not exist; "
                                      f"fix path in {where('datasets', cls.name)}")

    @classmethod
    @abstractmethod
    def read_facts(cls) -> SourceFacts:
        """The number of classes and the image shape, from headers (cheap)."""

    @abstractmethod
    def source_files(self) -> list[Path]:
        """Every file the decoded data depends on (their stats key the cache)."""

    # -- CachedProvider, for a source outside the data root ------------------------------------
    def present(self, root: Path) -> bool:
        self.check_present()
        return True

    def location(self, root: Path) -> Path:
        return self.source()

    def mismatched_files(self, root: Path) -> tuple[str, ...]:
        return ()  # nothing published to check against; the digest records what was read

    def cache_file(self, root: Path) -> Path:
        """``<cache>/tensors/<name>-<path hash>-<source hash>.pt``: the source hash covers the
        declaration and every source file's path, size and modification time."""
        source = self.source().resolve()
        stats = []
        for path in self.source_files():
            st = os.stat(path)
            stats.append((str(path), st.st_size, st.st_mtime_ns))
        where_ = _sha256(str(source))[:8]
        what = _sha256(repr((CACHE_VERSION, self.name, sorted(self.declaration.items()),
                             stats)))[:16]
        return cache_dir() / "tensors" / f"{self.name}-{where_}-{what}.pt"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
