"""rsc's core: interfaces for every plugin kind, the registry, and the experiment machinery.

Programmatic registry, per kind (``patterns``, ``datasets``, ``architectures``, ``trainers``,
``regularisers``, ``removers``, ``attacks``, ``executors``, ``auditors``)::

    import rsc_core
    rsc_core.list_names("patterns")           # ['core', 'v1', ...]
    rsc_core.get("patterns", "s3")            # Entry(name='v8', aliases=('s3',), ...)
    rsc_core.create("patterns", "s3")         # a Pattern instance
"""
from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl
from .plugins import load_plugins, registry, reset_plugins
from .registry import KINDS, Entry

__all__ = ["hookimpl", "registry", "load_plugins", "reset_plugins", "list_names", "get",
           "create", "KINDS", "Entry"]


def list_names(kind: str) -> list[str]:
    """Registered names of one kind."""
    return registry(kind).list()


def get(kind: str, name: str) -> Entry:
    """The entry (object plus metadata) for a name or alias."""
    return registry(kind).get(name)


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """An instance of the named item."""
    return registry(kind).create(name, **kwargs)
