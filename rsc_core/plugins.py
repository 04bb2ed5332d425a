"""Plugin discovery. Every plugin, built-in or third-party, is a module named by an entry point
in the group ``rsc``; its pluggy hooks register items into the registry.

A plugin that fails to import or raises in a hook is skipped with a one-line warning and listed
as failed; ``RSC_STRICT_PLUGINS=1`` makes that a hard error instead.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginConflictError, PluginError
from .registry import KINDS, Entry, KindRegistry

ENTRY_POINT_GROUP = "rsc"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    source: str
    entry_point: str
    stage: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "entry_point": self.entry_point, "stage": self.stage,
                "error": self.error}


@dataclass
class PluginState:
    """Everything discovered: the pluggy manager, one registry per kind, failures."""

    manager: pluggy.PluginManager
    registries: dict[str, KindRegistry]
    sources: dict[str, str] = field(default_factory=dict)  # pluggy name -> distribution
    failures: list[PluginFailure] = field(default_factory=list)


_STATE: PluginState | None = None


def strict() -> bool:
    return os.environ.get("RSC_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def _fail(state: PluginState, failure: PluginFailure) -> None:
    message = (f"rsc: plugin {failure.entry_point!r} from {failure.source} failed "
               f"({failure.stage}): {failure.error}")
    if strict():
        raise PluginError(message + " [RSC_STRICT_PLUGINS is set]")
    state.failures.append(failure)
    print(f"warning: {message}; skipped (set RSC_STRICT_PLUGINS=1 to make this an error)",
          file=sys.stderr)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _entry_points() -> list[metadata.EntryPoint]:
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in eps:  # the same distribution can be on sys.path twice (editable + build dir)
        key = (ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            unique.append(ep)
    return unique


def _distribution_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown"


def _load_modules(state: PluginState) -> None:
    for ep in _entry_points():
        source = _distribution_name(ep)
        plugin_name = f"{source}:{ep.name}"
        try:
            module = ep.load()
            state.manager.register(module, name=plugin_name)
        except Exception as exc:  # a broken plugin must not break rsc
            _fail(state, PluginFailure(source, ep.name, "import", _describe(exc)))
            continue
        state.sources[plugin_name] = source


def _register_callable(state: PluginState, kind: str, source: str) -> Callable[..., Entry]:
    def register(obj: Any, name: str | None = None, aliases: Any = (),
                 description: str | None = None) -> Entry:
        return state.registries[kind].add(obj, name=name, aliases=aliases,
                                          description=description, source=source)

    return register


def _run_register_hooks(state: PluginState) -> None:
    for kind in KINDS:
        caller = getattr(state.manager.hook, f"register_{kind}")
        for impl in reversed(caller.get_hookimpls()):  # registration order
            source = state.sources.get(impl.plugin_name, impl.plugin_name)
            try:
                impl.function(register=_register_callable(state, kind, source))
            except PluginConflictError:
                raise
            except Exception as exc:
                entry_point = impl.plugin_name.split(":", 1)[-1]
                _fail(state, PluginFailure(source, entry_point, f"register_{kind}",
                                           _describe(exc)))


def load_plugins() -> PluginState:
    """Discover plugins once per process and return the populated state."""
    global _STATE
    if _STATE is None:
        manager = pluggy.PluginManager("rsc")
        manager.add_hookspecs(hookspecs)
        state = PluginState(manager, {kind: KindRegistry(kind) for kind in KINDS})
        _load_modules(state)
        _run_register_hooks(state)
        _STATE = state
    return _STATE


def reset_plugins() -> None:
    """Forget discovered plugins (tests use this after changing ``sys.path``)."""
    global _STATE
    _STATE = None
    import importlib

    importlib.invalidate_caches()


def registry(kind: str) -> KindRegistry:
    """The registry of one kind, e.g. ``registry("patterns").get("s3")``."""
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")
    return load_plugins().registries[kind]


def add_commands(cli: Any) -> None:
    """Let every plugin add subcommands to the ``rsc`` Click group."""
    state = load_plugins()
    for impl in reversed(state.manager.hook.register_commands.get_hookimpls()):
        source = state.sources.get(impl.plugin_name, impl.plugin_name)
        try:
            impl.function(cli=cli)
        except Exception as exc:
            entry_point = impl.plugin_name.split(":", 1)[-1]
            _fail(state, PluginFailure(source, entry_point, "register_commands", _describe(exc)))
