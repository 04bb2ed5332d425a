"""Old module paths stay importable: before rsc_core was grouped by stage (issue 24) its
modules sat side by side (``rsc_core.patterns``, ``rsc_core.spurious``...), and plugin packages
written then import from those paths. ``install()`` puts a finder on ``sys.meta_path`` that
answers an old path with the module at its new home, the same module object, so a class or a
monkeypatch seen through either path is one and the same. Old names that are now stage
packages (``rsc_core.runs``, ``rsc_core.training``, ``rsc_core.removal``, ``rsc_core.sweeps``,
``rsc_core.audit``, ``rsc_core.evaluation``) need no alias: those packages re-export what the
old module held."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

OLD_PATHS = {  # old module under rsc_core -> its home now
    "atomic": "storage.atomic", "digests": "storage.digests", "paths": "storage.paths",
    "spec": "data.spec", "patterns": "data.patterns", "datasets": "data.datasets",
    "dataset_cache": "data.cache", "spurious": "data.planting", "subsets": "data.subsets",
    "pattern_files": "data.pattern_files", "membership": "data.membership",
    "architectures": "training.architectures", "regularisers": "training.regularisers",
    "train_recipe": "training.recipe", "group_training": "training.multi_model",
    "memory_format": "training.memory_format", "hardware": "training.hardware",
    "scoring": "evaluation.spurious_score", "saliency": "evaluation.saliency",
    "hessian": "influence.hessian", "conjugate_gradient": "influence.conjugate_gradient",
    "lissa": "influence.lissa", "ekfac": "influence.ekfac", "mlp_hvp": "influence.mlp_hvp",
    "checkpoints": "runs.checkpoints", "run_lock": "runs.locks", "group_runs": "runs.groups",
    "results_index": "runs.index", "pooling": "runs.pooling", "imports": "runs.imports",
    "compare": "analysis.compare", "sensitivity": "analysis.sensitivity",
    "weight_maps": "analysis.weight_maps", "theory": "analysis.theory",
    "removal_runs": "removal.runs", "attacks": "privacy.attacks",
    "membership_metrics": "privacy.metrics", "membership_queries": "privacy.queries",
    "membership_summary": "privacy.summary", "mia": "privacy.experiment",
    "roc_plot": "privacy.roc_figure", "auditors": "audit.auditor",
    "audit_metrics": "audit.metrics", "executors": "sweeps.executors",
    "sweep_grid": "sweeps.grid", "sweep_presets": "sweeps.presets", "report": "reports.report",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``rsc_core.<old>`` and loads it as the module at its new home."""

    def __init__(self, package: str, old_paths: dict[str, str]) -> None:
        self.aliases = {f"{package}.{old}": f"{package}.{new}" for old, new in old_paths.items()}
        self.own_specs: dict[str, object] = {}

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 (protocol)
        if fullname not in self.aliases:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:  # noqa: ANN001
        module = importlib.import_module(self.aliases[spec.name])
        self.own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set __spec__ to the alias's spec: give the module its own.
        module.__spec__ = self.own_specs[module.__name__]


def install(package: str = "rsc_core") -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder(package, OLD_PATHS))
