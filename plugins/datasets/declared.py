"""Datasets the user declares in ``rsc.toml`` (``rsc_core.user_config``): one provider class per
``[datasets.NAME]`` table, made by the plugin class of its ``kind``.

A declared name must be usable in every spec, so it is checked here, when plugins load: it is
lower-case letters and digits starting with a letter (what a spec's dataset part can be), it
does not start with ``mem`` or ``twoclass`` (the prefixes of membership and two-class specs),
and it is not the name of a built-in dataset. Any of these, or an unknown kind, is a
``UserConfigError``, which stops rsc with one line rather than silently using other data."""
from __future__ import annotations

import re
from collections.abc import Iterable

from rsc_core.errors import UserConfigError
from rsc_core.user_config import declarations, where

from .arrays import ArrayDataset
from .files import FileDataset
from .imagefolder import ImageFolderDataset

KINDS: dict[str, type[FileDataset]] = {cls.kind: cls for cls in (ImageFolderDataset,
                                                                  ArrayDataset)}
NAME = re.compile(r"[a-z][a-z0-9]*")
RESERVED_PREFIXES = ("mem", "twoclass")


def check_name(name: str, taken: Iterable[str]) -> None:
    """One ``UserConfigError`` when ``name`` cannot name a declared dataset."""
    place = where("datasets", name)
    if not NAME.fullmatch(name):
        raise UserConfigError(f"{place}: a dataset name is lower-case letters and digits, "
                              f"starting with a letter (it becomes part of specs such as "
                              f"{name.lower() or 'xray'}v8-3-0-0), got {name!r}; rename it")
    for prefix in RESERVED_PREFIXES:
        if name.startswith(prefix):
            raise UserConfigError(f"{place}: a dataset name cannot start with {prefix!r}, "
                                  f"which begins {'membership' if prefix == 'mem' else 'two-class'}"
                                  f" specs; rename it")
    if name in set(taken):
        raise UserConfigError(f"{place}: {name!r} is the name of a built-in dataset; rename "
                              f"the table (e.g. [datasets.{name}folder])")


def declared_providers(taken: Iterable[str]) -> list[type[FileDataset]]:
    """A provider class for each dataset of the user's ``rsc.toml`` (none without one)."""
    taken = set(taken)
    providers = []
    for name, table in declarations("datasets").items():
        check_name(name, taken)
        kind = table.get("kind")
        if kind not in KINDS:
            raise UserConfigError(f"{where('datasets', name)}: kind must be one of "
                                  f"{', '.join(KINDS)}, got {kind!r}")
        providers.append(KINDS[kind].declare(name, table))
    return providers
