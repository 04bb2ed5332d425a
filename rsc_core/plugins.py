"""Plugin discovery. Every plugin, built-in or third-party, is a module named by an entry point
in the group ``rsc``; its pluggy hooks register items into the registry.

Order is fixed so that clashes resolve the same way everywhere: rsc's own plugins (the
distribution ``rsc``) load first, then third-party distributions sorted by name, each one's
entry points sorted by name. The first registration of a name wins; a later one is skipped
with a one-line warning naming both packages and listed as a conflict by ``rsc plugins``.

Isolation is per hook: a module that fails to import is skipped; a hook that raises registers
nothing, and the plugin's other hooks still run. "Fails" means any exception, ``SystemExit``
included (a plugin calling ``sys.exit(0)`` at import would otherwise end every rsc command
silently with status 0); only ``KeyboardInterrupt`` passes through. Either is a one-line
warning and a listed failure. ``RSC_STRICT_PLUGINS=1`` turns failures and conflicts into
errors (CI sets it). One exception is never isolated: a ``UserConfigError`` (the user's own
``rsc.toml`` is wrong, ``rsc_core.user_config``) stops rsc, because skipping the hook would
silently ignore what the user declared.

``RSC_DISABLE_PLUGINS=a,b`` skips those distributions; ``RSC_LOAD_PLUGINS=a,b`` loads only
those third-party distributions (set but empty: none). rsc's own plugins always load.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from rsc_core import hookspecs
from rsc_core.errors import PluginConflictError, PluginError, UserConfigError
from rsc_core.registry import KINDS, Entry, KindRegistry

ENTRY_POINT_GROUP = "rsc"
#: The distribution whose plugins are rsc's own: loaded first, and never disabled.
BUILTIN = "rsc"
HOOKS: tuple[str, ...] = (*(f"register_{kind}" for kind in KINDS), "register_commands")
STRICT_HINT = "set RSC_STRICT_PLUGINS=1 to make this an error"


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


@dataclass(frozen=True)
class PluginConflict:
    """A name (or alias) two plugins registered for one kind: the first kept, the later one
    skipped. ``kind`` is a registry kind or ``commands``."""

    kind: str
    name: str
    kept_source: str
    kept_item: str
    skipped_source: str
    skipped_item: str

    def describe(self) -> str:
        return (f"{self.kind} name {self.name!r} is registered by both {self.kept_source} "
                f"({self.kept_item}) and {self.skipped_source} ({self.skipped_item})")

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "kept_source": self.kept_source,
                "kept_item": self.kept_item, "skipped_source": self.skipped_source,
                "skipped_item": self.skipped_item}


@dataclass
class PluginPackage:
    """One installed distribution with ``rsc`` entry points, and what it contributes."""

    name: str
    version: str
    entry_points: list[str] = field(default_factory=list)  # "name = module"
    status: str = "loaded"  # loaded, failed (nothing imported) or disabled
    reason: str = ""  # why disabled: the environment variable
    hooks: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "builtin": self.name == BUILTIN,
                "status": self.status, "reason": self.reason,
                "entry_points": list(self.entry_points), "hooks": list(self.hooks),
                "commands": list(self.commands)}


@dataclass(frozen=True)
class LoadedPlugin:
    """One imported plugin module, registered with pluggy under ``name`` ("dist:entry")."""

    name: str
    source: str
    entry_point: str
    module: Any


@dataclass
class PluginState:
    """Everything discovered: the pluggy manager, one registry per kind, the packages in
    load order, and what went wrong."""

    manager: pluggy.PluginManager
    registries: dict[str, KindRegistry]
    plugins: list[LoadedPlugin] = field(default_factory=list)  # load order
    packages: dict[str, PluginPackage] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    conflicts: list[PluginConflict] = field(default_factory=list)
    command_sources: dict[str, str] = field(default_factory=dict)
    commands_collected: bool = False


_STATE: PluginState | None = None


def strict() -> bool:
    return os.environ.get("RSC_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def _warn(message: str) -> None:
    print(f"warning: rsc: {message}", file=sys.stderr)


def _fail(state: PluginState, failure: PluginFailure) -> None:
    message = (f"plugin {failure.entry_point!r} from {failure.source} failed "
               f"({failure.stage}): {failure.error}")
    if strict():
        raise PluginError(f"rsc: {message} [RSC_STRICT_PLUGINS is set]")
    state.failures.append(failure)
    _warn(f"{message}; skipped ({STRICT_HINT})")


def _conflict(state: PluginState, conflict: PluginConflict) -> None:
    if strict():
        raise PluginConflictError(f"rsc: {conflict.describe()}; uninstall or rename one of "
                                  f"them [RSC_STRICT_PLUGINS is set]")
    state.conflicts.append(conflict)
    _warn(f"{conflict.describe()}; kept {conflict.kept_source}'s, skipped "
          f"{conflict.skipped_source}'s (rename or uninstall one; {STRICT_HINT})")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``RSC_Foo.bar`` -> ``rsc-foo-bar``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", ""
    return dist.metadata["Name"], dist.version or ""


def _entry_points() -> list[metadata.EntryPoint]:
    """The ``rsc`` entry points in load order: rsc's own first, then by distribution name."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)  # the same distribution can be on sys.path twice
        if key not in seen:
            seen.add(key)
            unique.append(ep)

    def order(ep: metadata.EntryPoint) -> tuple[bool, str, str]:
        dist = normalise(_distribution(ep)[0])
        return dist != BUILTIN, dist, ep.name

    return sorted(unique, key=order)


def _env_names(variable: str) -> list[str] | None:
    """The comma-separated names in ``variable``; None when it is not set at all."""
    value = os.environ.get(variable)
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


@dataclass(frozen=True)
class Selection:
    """Which third-party distributions to load, from RSC_LOAD_PLUGINS / RSC_DISABLE_PLUGINS."""

    only: frozenset[str] | None
    disabled: frozenset[str]

    def skip_reason(self, dist: str) -> str:
        """The variable that excludes ``dist``, or "" when it loads."""
        name = normalise(dist)
        if name == BUILTIN:
            return ""
        if self.only is not None and name not in self.only:
            return "RSC_LOAD_PLUGINS"
        return "RSC_DISABLE_PLUGINS" if name in self.disabled else ""


def _selection(installed: set[str]) -> Selection:
    """Read the two variables, warning once about names no installed package has and about
    attempts to disable rsc itself."""
    only = _env_names("RSC_LOAD_PLUGINS")
    disabled = _env_names("RSC_DISABLE_PLUGINS") or []
    for variable, names in (("RSC_LOAD_PLUGINS", only or []), ("RSC_DISABLE_PLUGINS", disabled)):
        unknown = [n for n in names if normalise(n) not in installed]
        if unknown:
            _warn(f"{variable} names {', '.join(unknown)}, which no installed plugin package "
                  f"is called; installed: {', '.join(sorted(installed))}")
    if BUILTIN in {normalise(n) for n in disabled}:
        _warn(f"RSC_DISABLE_PLUGINS cannot disable {BUILTIN} itself (its datasets, trainer and "
              f"executor are what every command runs); ignored")
    return Selection(None if only is None else frozenset(map(normalise, only)),
                     frozenset(map(normalise, disabled)))


def _load_modules(state: PluginState) -> None:
    entry_points = _entry_points()
    selection = _selection({normalise(_distribution(ep)[0]) for ep in entry_points})
    for ep in entry_points:
        source, version = _distribution(ep)
        package = state.packages.setdefault(source, PluginPackage(source, version))
        package.entry_points.append(f"{ep.name} = {ep.value}")
        reason = selection.skip_reason(source)
        if reason:
            package.status, package.reason = "disabled", reason
            continue
        plugin_name = f"{source}:{ep.name}"
        try:
            module = ep.load()
            state.manager.register(module, name=plugin_name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin must not break (or exit) rsc
            _fail(state, PluginFailure(source, ep.name, "import", _describe(exc)))
            continue
        state.plugins.append(LoadedPlugin(plugin_name, source, ep.name, module))


def _summarise_packages(state: PluginState) -> None:
    """Fill in each package's status and the hooks its modules implement."""
    for package in state.packages.values():
        modules = [p.module for p in state.plugins if p.source == package.name]
        if package.status != "disabled" and not modules:
            package.status = "failed"
        names = {caller.name for m in modules for caller in state.manager.get_hookcallers(m)}
        package.hooks = sorted(names, key=lambda h: (HOOKS.index(h) if h in HOOKS else
                                                     len(HOOKS), h))


def _impls(state: PluginState, hook: str) -> dict[str, Any]:
    """The implementations of ``hook``, by pluggy plugin name."""
    return {impl.plugin_name: impl for impl in getattr(state.manager.hook, hook).get_hookimpls()}


def _run_register_hooks(state: PluginState) -> None:
    for kind in KINDS:
        impls = _impls(state, f"register_{kind}")
        for plugin in state.plugins:  # load order: first registration wins
            if plugin.name in impls:
                _run_register_hook(state, kind, plugin, impls[plugin.name].function)


def _run_register_hook(state: PluginState, kind: str, plugin: LoadedPlugin,
                       hook: Callable[..., Any]) -> None:
    """Call one hook. Its items are staged and added only if the whole hook succeeds, so a
    hook that raises registers nothing and never leaves half a plugin behind."""
    registry = state.registries[kind]
    staged: list[Entry] = []

    def register(obj: Any, name: str | None = None, aliases: Any = (),
                 description: str | None = None) -> Entry:
        entry = registry.make_entry(obj, name, aliases, description, plugin.source)
        staged.append(entry)
        return entry

    try:
        hook(register=register)
    except (KeyboardInterrupt, UserConfigError):  # the user's rsc.toml: theirs to fix, not skip
        raise
    except BaseException as exc:  # SystemExit too: a plugin must not end rsc silently
        _fail(state, PluginFailure(plugin.source, plugin.entry_point, f"register_{kind}",
                                   _describe(exc)))
        return
    for entry in staged:
        _insert(state, registry, entry)


def _insert(state: PluginState, registry: KindRegistry, entry: Entry) -> None:
    found = registry.clash(entry)
    if found is None:
        registry.insert(entry)
        return
    key, kept = found
    _conflict(state, PluginConflict(registry.kind, key, kept.source, kept.name, entry.source,
                                    entry.name))


def load_plugins() -> PluginState:
    """Discover plugins once per process and return the populated state."""
    global _STATE
    if _STATE is None:
        manager = pluggy.PluginManager("rsc")
        manager.add_hookspecs(hookspecs)
        state = PluginState(manager, {kind: KindRegistry(kind) for kind in KINDS})
        _load_modules(state)
        _summarise_packages(state)
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
    """Let every plugin add subcommands to the ``rsc`` Click group, in load order. Commands
    already in ``cli`` are rsc's own; a plugin command reusing a taken name is a conflict
    (the first one stays), and a hook that raises adds nothing."""
    state = load_plugins()
    if state.commands_collected:
        return
    state.commands_collected = True
    state.command_sources = {name: BUILTIN for name in cli.commands}
    impls = _impls(state, "register_commands")
    for plugin in state.plugins:
        if plugin.name in impls:
            _add_plugin_commands(state, cli, plugin, impls[plugin.name].function)


def _add_plugin_commands(state: PluginState, cli: Any, plugin: LoadedPlugin,
                         hook: Callable[..., Any]) -> None:
    before = dict(cli.commands)
    try:
        hook(cli=cli)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a plugin must not end rsc silently
        _restore(cli, before)
        _fail(state, PluginFailure(plugin.source, plugin.entry_point, "register_commands",
                                   _describe(exc)))
        return
    added = {name: cmd for name, cmd in cli.commands.items() if before.get(name) is not cmd}
    _restore(cli, before)
    for name, command in added.items():
        if name in before:
            kept = state.command_sources.get(name, BUILTIN)
            _conflict(state, PluginConflict("commands", name, kept, name, plugin.source, name))
            continue
        cli.commands[name] = command
        state.command_sources[name] = plugin.source
        state.packages[plugin.source].commands.append(name)


def _restore(cli: Any, commands: dict[str, Any]) -> None:
    cli.commands.clear()
    cli.commands.update(commands)
