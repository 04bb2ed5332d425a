"""The programmatic registry: for each plugin kind, list names, get an item with its metadata,
and create an instance. Populated by ``rsc_core.plugins`` from the ``rsc`` entry points."""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import PluginConflictError, UnknownNameError

KINDS: tuple[str, ...] = (
    "patterns",
    "datasets",
    "architectures",
    "trainers",
    "regularisers",
    "removers",
    "attacks",
    "executors",
)


@dataclass(frozen=True)
class Entry:
    """One registered item: what it is called, what it does and who provided it."""

    kind: str
    name: str
    obj: Any
    description: str
    aliases: tuple[str, ...] = ()
    source: str = "unknown"

    def create(self, **kwargs: Any) -> Any:
        """Instantiate (or call) the registered object with ``kwargs``."""
        return self.obj(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "aliases": list(self.aliases),
            "description": self.description,
            "source": self.source,
        }


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass
class KindRegistry:
    """All items of one kind, addressable by name or alias."""

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    _lookup: dict[str, str] = field(default_factory=dict)

    def add(
        self,
        obj: Any,
        name: str | None = None,
        aliases: Iterable[str] = (),
        description: str | None = None,
        source: str = "unknown",
    ) -> Entry:
        name = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
        if not name:
            raise ValueError(f"a {self.kind} item needs a name")
        aliases = tuple(aliases or getattr(obj, "aliases", ()) or ())
        description = description or getattr(obj, "description", None) or _first_doc_line(obj)
        entry = Entry(self.kind, name, obj, description, aliases, source)
        for key in (name, *aliases):
            if key in self._lookup:
                other = self._entries[self._lookup[key]]
                raise PluginConflictError(
                    f"{self.kind} name {key!r} is registered twice: by {other.source} "
                    f"({other.name}) and by {source} ({name}); uninstall or rename one of them"
                )
        self._entries[name] = entry
        for key in (name, *aliases):
            self._lookup[key] = name
        return entry

    def list(self) -> list[str]:
        """Canonical names, sorted."""
        return sorted(self._entries, key=_natural_key)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.list()]

    def keys(self) -> list[str]:
        """Every name and alias that ``get`` accepts."""
        return list(self._lookup)

    def __contains__(self, name: str) -> bool:
        return name in self._lookup

    def get(self, name: str) -> Entry:
        """The entry for ``name`` or an alias; unknown names list the close matches."""
        if name in self._lookup:
            return self._entries[self._lookup[name]]
        close = difflib.get_close_matches(name, self.keys(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(self.list())}"
        singular = self.kind[:-1]
        raise UnknownNameError(
            f"unknown {singular} {name!r}; {hint} (`rsc plugins` lists them all)"
        )

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).create(**kwargs)


def _natural_key(name: str) -> tuple:
    import re

    return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name))
