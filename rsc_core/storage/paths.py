"""Where rsc reads data and writes caches and runs. Explicit options beat environment
variables, which beat per-user defaults."""
from __future__ import annotations

import os
from pathlib import Path


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The dataset root: ``explicit``, else ``RSC_DATA_DIR``, else ``<cache>/data``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("RSC_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "data"


def cache_dir() -> Path:
    """rsc's own writable cache: ``RSC_CACHE_DIR``, else ``$XDG_CACHE_HOME/rsc``, else
    ``~/.cache/rsc``. Used because the data root may be read-only."""
    env = os.environ.get("RSC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rsc"


def runs_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The runs root: ``explicit``, else ``RSC_RUNS_DIR``, else ``./runs``."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("RSC_RUNS_DIR") or "runs")


def download_allowed(explicit: bool | None = None) -> bool:
    """Downloads happen only when asked (``--download``) or ``RSC_DOWNLOAD=1``."""
    if explicit is not None:
        return explicit
    return os.environ.get("RSC_DOWNLOAD", "") in ("1", "true", "yes")


def file_in_the_way(path: Path) -> Path | None:
    """The first existing component of ``path`` that is a file, not a folder (what "File
    exists" and "Not a directory" mean for a path to create, e.g. a file named ``.locks``
    where rsc keeps its lock folder), or None."""
    for candidate in reversed((path, *path.parents)):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


#: The longest file name most file systems allow (bytes).
NAME_MAX = 255


def fitted_name(root: Path, label: str, digest: str, reserve: int = 0) -> str:
    """A folder name ``<label>-<digest>`` that fits the file system with ``reserve`` bytes to
    spare (for names derived from it: ``.locks/<name>.owner``, ``.<name>.tmp-<pid>``).

    The digest already makes the name unique, so an over-long readable label is cut short
    (``label`` is ASCII: run names are sanitised). A folder that exists under the full name
    is kept (names that fit never change), so runs written before are found and reused."""
    name = f"{label}-{digest}"
    if len(name.encode()) <= NAME_MAX - reserve:
        return name
    try:
        if (root / name).is_dir():
            return name
    except OSError:  # ENAMETOOLONG: it cannot exist
        pass
    room = NAME_MAX - reserve - len(digest.encode()) - 1
    short = label.encode()[:room].decode("utf-8", errors="ignore").rstrip("-_.")
    return f"{short}-{digest}"
