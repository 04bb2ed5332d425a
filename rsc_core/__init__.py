"""rsc's core: interfaces for every plugin kind, the registry, and the experiment machinery,
grouped by the study's stages (docs/architecture.md): the kernel here (``hookspecs``,
``registry``, ``plugins``, ``errors``, ``named_options``, ``storage``...), then ``data``,
``training``, ``evaluation``, ``influence``, ``runs``, ``analysis``, ``removal``, ``privacy``,
``audit``, ``sweeps`` and ``reports``.

Programmatic registry, per kind (``patterns``, ``datasets``, ``architectures``, ``trainers``,
``regularisers``, ``removers``, ``attacks``, ``executors``, ``auditors``)::

    import rsc_core
    rsc_core.list_names("patterns")           # ['core', 'v1', ...]
    rsc_core.get("patterns", "s3")            # Entry(name='v8', aliases=('s3',), ...)
    rsc_core.create("patterns", "s3")         # a Pattern instance

The interfaces a plugin implements, and the functions plugin authors call, are importable
from ``rsc_core`` itself (``from rsc_core import Pattern, TrainConfig``), loaded on first use;
``PUBLIC`` says where each lives. Module paths from before the grouping
(``rsc_core.patterns``...) still import (``moved_modules``).
"""
from __future__ import annotations

import importlib
from typing import Any

from rsc_core import errors
from rsc_core.errors import *  # noqa: F401,F403 (every error class, for plugin authors)
from rsc_core.hookspecs import hookimpl
from rsc_core.moved_modules import install as _install_moved_modules
from rsc_core.plugins import load_plugins, registry, reset_plugins
from rsc_core.registry import KINDS, Entry

_install_moved_modules()

PUBLIC = {  # name -> module: what docs/interfaces.md and docs/plugins.md tell authors to use
    **dict.fromkeys(("Pattern", "SquarePattern", "FixedNoisePattern"), "rsc_core.data.patterns"),
    **dict.fromkeys(("ImageData", "DatasetBundle", "DatasetProvider", "to_unit_float",
                     "load_dataset"), "rsc_core.data.datasets"),
    **dict.fromkeys(("SpuriousSpec", "parse_spec"), "rsc_core.data.spec"),
    "Architecture": "rsc_core.training.architectures",
    **dict.fromkeys(("TrainConfig", "Trainer", "TrainState", "make_optimizer",
                     "reference_milestones"), "rsc_core.training.trainer"),
    **dict.fromkeys(("GroupTrainer", "saving_together"), "rsc_core.training.multi_model"),
    "Regulariser": "rsc_core.training.regularisers",
    "score_model": "rsc_core.evaluation.spurious_score",
    "Run": "rsc_core.runs.folder",
    "train_run": "rsc_core.runs.training",
    "score_run": "rsc_core.runs.scores",
    "train_runs": "rsc_core.runs.groups",
    **dict.fromkeys(("Remover", "RemovalRequest", "RemovalResult"), "rsc_core.removal.remover"),
    **dict.fromkeys(("Attack", "AttackOutput", "Observations", "SHADOW_POOL"),
                    "rsc_core.privacy.attacks"),
    **dict.fromkeys(("Auditor", "AuditRequest", "AuditResult"), "rsc_core.audit.auditor"),
    **dict.fromkeys(("Executor", "ExecutorSettings"), "rsc_core.sweeps.executors"),
}

__all__ = ["hookimpl", "registry", "load_plugins", "reset_plugins", "list_names", "get",
           "create", "KINDS", "Entry", *errors.__all__, *PUBLIC]


def __getattr__(name: str) -> Any:
    """A public name, imported from its home the first time it is asked for (so that
    ``import rsc_core`` stays light)."""
    if name in PUBLIC:
        value = getattr(importlib.import_module(PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rsc_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PUBLIC))


def list_names(kind: str) -> list[str]:
    """Registered names of one kind."""
    return registry(kind).list()


def get(kind: str, name: str) -> Entry:
    """The entry (object plus metadata) for a name or alias."""
    return registry(kind).get(name)


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """An instance of the named item."""
    return registry(kind).create(name, **kwargs)
