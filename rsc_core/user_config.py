"""The user's project file, ``rsc.toml``: where it is, what it declares, and adding to it.

A user names their own data once, in a table per dataset, and every spec then works with that
name (``xrayv8-10-0-0``, ``memxrayv20-3-1-0``, sweeps, reports)::

    [datasets.xray]
    kind = "imagefolder"      # or "arrays" (.npz / .pt with x_train, y_train, x_test, y_test)
    path = "data/xray"        # relative paths are relative to the file's folder
    size = 32                 # further keys belong to the kind (docs/own-data.md)

Why this is core and small: which file is read and how it is parsed must be the same for every
command and every plugin, and a config error must stop rsc (``UserConfigError``) rather than be
skipped like a failing plugin. What a declaration MEANS is not core: the plugin that owns a
``kind`` turns each table into a provider in its own ``register_datasets`` hook (the built-in
kinds live in ``rsc_plugins.datasets``). So this module knows files and tables, nothing about
images.

The file is ``$RSC_CONFIG`` when set, else ``rsc.toml`` in the working folder; rsc works
without one. It is read once per process, when plugins load.
"""
from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rsc_core.storage.atomic import write_text
from rsc_core.storage.toml_writer import to_toml
from rsc_core.errors import UserConfigError

CONFIG_ENV = "RSC_CONFIG"
FILE_NAME = "rsc.toml"


def config_path() -> Path | None:
    """The project file in use: ``write_path()`` if it exists, else None. A ``$RSC_CONFIG``
    that does not exist yet declares nothing, like a folder without ``rsc.toml``: it is where
    ``rsc data add`` will create the file."""
    path = write_path()
    if path.is_dir():
        raise UserConfigError(f"{path} is a folder; {CONFIG_ENV} must name a TOML file (or "
                              f"unset it to use ./{FILE_NAME})")
    return path if path.is_file() else None


def write_path() -> Path:
    """Where ``rsc data add`` writes: the file in use, else a new ``./rsc.toml``."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env).expanduser() if env else Path(FILE_NAME)


def read_config(path: Path | None = None) -> dict[str, Any]:
    """The parsed file (``{}`` when there is none); a syntax error is one line naming it."""
    path = config_path() if path is None else path
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserConfigError(f"{path} is not valid TOML ({exc}); fix the file") from None
    except UnicodeDecodeError:
        raise UserConfigError(f"{path} is not a UTF-8 text file; it should hold TOML tables "
                              f"such as [datasets.NAME]") from None


def declarations(section: str, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The tables under ``[section]`` (e.g. every ``[datasets.NAME]``), by name; a ``path``
    key is made absolute against the file's folder, so it means the same from any working
    folder."""
    path = config_path() if path is None else path
    data = read_config(path).get(section, {})
    if not isinstance(data, dict):
        raise UserConfigError(f"{path}: {section} must be a table of tables, e.g. "
                              f"[{section}.NAME]; fix the file")
    tables = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise UserConfigError(f"{path}: {section}.{name} must be a table ([{section}."
                                  f"{name}] followed by key = value lines); fix the file")
        table = dict(table)
        if isinstance(table.get("path"), str):
            table["path"] = str((path.parent / Path(table["path"]).expanduser()).absolute())
        tables[name] = table
    return tables


def where(section: str, name: str) -> str:
    """``rsc.toml [datasets.xray]``: how an error names the table at fault."""
    path = config_path()
    return f"{path or FILE_NAME} [{section}.{name}]"


@contextmanager
def declaration_added(section: str, name: str, table: dict[str, Any]) -> Iterator[Path]:
    """Append ``[section.name]`` to the project file (created if absent) for the body of the
    with-block, which checks that it works; if the body raises, the file is put back as it was
    (or removed, if this made it). The old text is kept as it is, comments too, and every
    write is atomic, so the file is never broken or half-written."""

    path = write_path()
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    existing = read_config(path) if old is not None else {}
    if name in (existing.get(section) or {}):
        raise UserConfigError(f"{path} already declares [{section}.{name}]; choose another "
                              f"name or edit the file")
    block = to_toml({f"{section}.{name}": table})
    text = old.rstrip("\n") + "\n" + block if old and old.strip() else block.lstrip("\n")
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # e.g. a [section] written as dotted keys before
        raise UserConfigError(f"cannot add [{section}.{name}] to {path} ({exc}); add it by "
                              f"hand") from None
    write_text(path, text)
    try:
        yield path
    except BaseException:
        if old is None:
            path.unlink(missing_ok=True)
        else:
            write_text(path, old)
        raise
