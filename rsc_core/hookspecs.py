"""pluggy hook specifications: one hook per plugin kind, each receiving a ``register`` callable
(the style of simonw/llm). A plugin module implements any subset with ``@rsc_core.hookimpl``.

``register(obj, name=None, aliases=(), description=None)`` adds one item; ``name`` and
``description`` default to ``obj.name`` and the first line of ``obj``'s docstring. Items are
added when the hook returns: a hook that raises adds nothing (the plugin's other hooks still
run), and a name already taken by an earlier plugin is skipped with a warning. rsc calls the
hooks itself, plugin by plugin in load order, so ``tryfirst``/``trylast`` have no effect.
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("rsc")
hookimpl = pluggy.HookimplMarker("rsc")

Register = Callable[..., None]


@hookspec
def register_patterns(register: Register) -> None:
    """Register spurious patterns (subclasses of ``rsc_core.patterns.Pattern``)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset providers (subclasses of ``rsc_core.datasets.DatasetProvider``). rsc's
    own hook also registers the datasets a user declares in ``rsc.toml``."""


@hookspec
def register_architectures(register: Register) -> None:
    """Register architectures (subclasses of ``rsc_core.architectures.Architecture``), or a
    family of them (``name`` ending in ``:`` and ``member(name)``, ``rsc_core.registry``)."""


@hookspec
def register_trainers(register: Register) -> None:
    """Register trainers (subclasses of ``rsc_core.training.Trainer``)."""


@hookspec
def register_regularisers(register: Register) -> None:
    """Register regularisers (subclasses of ``rsc_core.regularisers.Regulariser``)."""


@hookspec
def register_removers(register: Register) -> None:
    """Register data-removal methods (subclasses of ``rsc_core.removal.Remover``)."""


@hookspec
def register_attacks(register: Register) -> None:
    """Register privacy attacks (subclasses of ``rsc_core.attacks.Attack``)."""


@hookspec
def register_executors(register: Register) -> None:
    """Register executors that run many experiments (``rsc_core.executors.Executor``)."""


@hookspec
def register_auditors(register: Register) -> None:
    """Register auditors that rank training examples by shortcut evidence
    (subclasses of ``rsc_core.auditors.Auditor``)."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add ``rsc`` subcommands to the Click group ``cli``."""
