"""Atomic file writes: write to a temporary file in the same folder, then rename, so a reader
never sees a half-written file and an interrupted write leaves the old file intact.

A failed write (disk full, read-only folder, a file where a folder should be) removes its
temporary file and raises an ``OSError`` that names the file being written, never the
temporary name, so the user-facing message can say where the write failed."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def write_file(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it to ``path``.
    Missing parent folders are created. Returns ``path``."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and (exc.filename is None or exc.filename == tmp
                                         or _is_temporary(exc.filename, path)):
            exc.filename = str(path)
            exc.filename2 = None
        raise
    return path


def new_file(folder: Path, stem: str, suffix: str) -> Path:
    """Claim a file name nobody else has: ``<stem><suffix>``, else ``<stem>-2<suffix>``, ...
    The claim is an exclusive create (``O_EXCL``), so two processes never get one name; fill
    the (empty) file with ``write_json``/``write_text``, which replace it atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        path = folder / f"{stem}{'' if number == 1 else f'-{number}'}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")
@contextmanager
def replaced_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` to fill; when the block finishes, rename it to
    ``out``, replacing an older folder of that name only then. An error (or interrupt) inside
    the block removes the temporary folder and leaves ``out`` as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_temporary(filename: Any, path: Path) -> bool:
    """Whether an error's file name is one of our temporary names for ``path``."""
    name = os.path.basename(os.fsdecode(filename)) if isinstance(filename, (str, bytes)) else ""
    return name.startswith(f".{path.name}.") and name.endswith(".tmp")


def write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    write_file(path, write)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_torch(path: Path, obj: Any) -> None:
    """``torch.save`` through a Python file object, so a full disk is the ``OSError`` (ENOSPC)
    it really is. Given a file name, torch writes with its own C++ writer and reports a full
    disk as a RuntimeError ("unexpected pos ..."); through a file object the OSError comes
    first, but torch may still raise that RuntimeError while closing its zip archive."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            try:
                torch.save(obj, fh)
            except RuntimeError as exc:
                os_error = _os_error_behind(exc)
                if os_error is None:
                    raise
                raise os_error from None

    write_file(path, write)


def _os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError that ``exc`` was raised while handling (or caused by), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def write_numpy(path: Path, array: Any) -> None:
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    write_file(path, write)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def json_marks(path: Path, name: str, key: str) -> bool:
    """Whether ``path/name`` is a JSON object with ``key``: how a result folder rsc wrote is
    told from any other folder before it is replaced."""
    try:
        data = json.loads((Path(path) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and key in data
