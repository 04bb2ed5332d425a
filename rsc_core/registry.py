"""The programmatic registry: for each plugin kind, list names, get an item with its metadata,
and create an instance. Populated by ``rsc_core.plugins`` from the ``rsc`` entry points.

A **family** is one registered item that stands for many names with one prefix, for a library
whose items cannot be listed up front (``torchvision:<model>``, ``timm:<model>``). It is
registered under ``<prefix>:`` (its ``name`` ends with a colon) and has a method
``member(name) -> obj`` that returns the item for ``<prefix>:<name>`` or raises
``UnknownNameError``; ``get("torchvision:resnet18")`` then returns an ordinary ``Entry`` for
that item, so every caller of the registry accepts family names without knowing about them."""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable

from rsc_core.errors import PluginConflictError, UnknownNameError

KINDS: tuple[str, ...] = (
    "patterns",
    "datasets",
    "architectures",
    "trainers",
    "regularisers",
    "removers",
    "attacks",
    "executors",
    "auditors",
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
    _members: dict[str, Entry] = field(default_factory=dict)  # family members already made

    def make_entry(
        self,
        obj: Any,
        name: str | None = None,
        aliases: Iterable[str] = (),
        description: str | None = None,
        source: str = "unknown",
    ) -> Entry:
        """The entry ``add`` would store, with name, aliases and description filled in from
        ``obj`` where not given; registers nothing, so a plugin hook can be checked first."""
        name = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
        if not name:
            raise ValueError(f"a {self.kind} item needs a name: set `name` on {obj!r} or pass "
                             f"register(obj, name=...)")
        aliases = tuple(aliases or getattr(obj, "aliases", ()) or ())
        description = description or getattr(obj, "description", None) or _first_doc_line(obj)
        return Entry(self.kind, name, obj, description, aliases, source)

    def clash(self, entry: Entry) -> tuple[str, Entry] | None:
        """The first of ``entry``'s name and aliases already taken, with the entry holding it."""
        for key in (entry.name, *entry.aliases):
            if key in self._lookup:
                return key, self._entries[self._lookup[key]]
        return None

    def insert(self, entry: Entry) -> Entry:
        """Store ``entry``; raises ``PluginConflictError`` if any of its names is taken."""
        found = self.clash(entry)
        if found is not None:
            key, other = found
            raise PluginConflictError(
                f"{self.kind} name {key!r} is registered twice: by {other.source} "
                f"({other.name}) and by {entry.source} ({entry.name}); uninstall or rename one "
                f"of them"
            )
        self._entries[entry.name] = entry
        for key in (entry.name, *entry.aliases):
            self._lookup[key] = entry.name
        return entry

    def add(
        self,
        obj: Any,
        name: str | None = None,
        aliases: Iterable[str] = (),
        description: str | None = None,
        source: str = "unknown",
    ) -> Entry:
        """Register ``obj``; a taken name or alias raises ``PluginConflictError``. (Plugin
        discovery does not use this: there the first registration wins and a clash warns.)"""
        return self.insert(self.make_entry(obj, name, aliases, description, source))

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
        """The entry for ``name`` or an alias (or a family member, ``prefix:name``); unknown
        names list the close matches."""
        if name in self._lookup and not name.endswith(":"):
            return self._entries[self._lookup[name]]
        prefix, colon, member = name.partition(":")
        if colon and f"{prefix}:" in self._lookup:
            return self._member(self._entries[self._lookup[f"{prefix}:"]], member)
        close = difflib.get_close_matches(name, self.keys(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(self.list())}"
        singular = self.kind[:-1]
        raise UnknownNameError(
            f"unknown {singular} {name!r}; {hint} (`rsc plugins` lists them all)"
        )

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).create(**kwargs)

    def _member(self, family: Entry, member: str) -> Entry:
        """The entry of ``family.name + member``, made once by the family's ``member``."""
        name = family.name + member
        if name not in self._members:
            if not member:
                raise UnknownNameError(f"{family.name} names a family of {self.kind}; add a "
                                       f"name after the colon ({family.description})")
            obj = family.obj.member(member)
            self._members[name] = Entry(self.kind, name, obj,
                                        getattr(obj, "description", "") or family.description,
                                        (), family.source)
        return self._members[name]


def _natural_key(name: str) -> tuple:
    import re

    return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name))
