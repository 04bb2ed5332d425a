"""The shape of the code (issue 24, docs/architecture.md): rsc_core is grouped by the study's
stages and dependencies run one way, from later stages to earlier ones and to the kernel; the
core imports no plugin and no CLI module; plugins and the CLI never import each other; no two
modules import each other, directly or round a longer circle. Imports inside functions count:
a lazy import is still a dependency. Old module paths still import, as the same module."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"rsc_core": ROOT / "rsc_core", "rsc_plugins": ROOT / "plugins",
            "rsc_cli": ROOT / "cli"}

# Stage of each rsc_core subpackage; a module may import from its own stage or an earlier one.
# Modules directly in rsc_core (and storage/) are the kernel, stage 0.
STAGES = {"storage": 0, "data": 1, "training": 2, "evaluation": 3, "influence": 4, "runs": 5,
          "analysis": 6, "removal": 7, "privacy": 8, "audit": 9, "sweeps": 10, "reports": 11}


def module_files() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


MODULES = module_files()


def imported(name: str, path: Path) -> set[str]:
    """The modules of ours that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES}
    return found - {name}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def stage(module: str) -> int:
    """0 for the kernel (rsc_core's own modules and storage/), else the subpackage's stage."""
    parts = module.split(".")
    return STAGES.get(parts[1], 0) if len(parts) > 1 else 0


def test_the_graph_sees_the_imports_it_must_see():
    """The checks below are only as good as the graph: a known import of each form."""
    assert "rsc_core.runs.index" in GRAPH["rsc_core.runs.training"]  # from x import y
    assert "rsc_core.errors" in GRAPH["rsc_core.data.spec"]
    assert "rsc_core.runs.folder" in GRAPH["rsc_core.runs"]  # a package re-exporting
    assert len(GRAPH) > 100


def test_the_core_imports_no_plugin_and_no_cli_module():
    wrong = {(m, t) for m, ts in GRAPH.items() if m.startswith("rsc_core") for t in ts
             if not t.startswith("rsc_core")}
    assert not wrong


def test_plugins_and_the_cli_never_import_each_other():
    wrong = {(m, t) for m, ts in GRAPH.items() for t in ts
             if {m.split(".")[0], t.split(".")[0]} == {"rsc_plugins", "rsc_cli"}}
    assert not wrong


def test_every_stage_imports_only_its_own_and_earlier_stages():
    later = sorted(f"{m} (stage {stage(m)}) imports {t} (stage {stage(t)})"
                   for m, ts in GRAPH.items() if m.startswith("rsc_core.")
                   for t in ts if stage(t) > stage(m))
    assert not later


def test_every_core_module_is_in_a_known_stage_or_the_kernel():
    folders = {p.name for p in PACKAGES["rsc_core"].iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(STAGES)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its modules is not a circle with them: the
    modules' own imports of each other are what is checked."""
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    return {m: ts - packages for m, ts in graph.items() if m not in packages}


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_two_modules_import_each_other_even_round_a_circle():
    assert cycles(without_packages(GRAPH)) == []


OLD_PATHS = {"rsc_core.patterns": "rsc_core.data.patterns",
             "rsc_core.spurious": "rsc_core.data.planting",
             "rsc_core.results_index": "rsc_core.runs.index",
             "rsc_core.mia": "rsc_core.privacy.experiment",
             "rsc_core.auditors": "rsc_core.audit.auditor"}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_module_path_imports_the_same_module(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(OLD_PATHS[old])
    assert module.__spec__.name == OLD_PATHS[old]  # the module keeps its own identity


def test_every_old_path_has_a_home_that_exists():
    from rsc_core.moved_modules import OLD_PATHS as ALL

    for old, new in ALL.items():
        assert f"rsc_core.{new}" in MODULES, old
        assert f"rsc_core.{old}" not in MODULES, old  # an alias never shadows a real module


def test_old_package_paths_keep_their_names():
    """Old flat modules whose names are now stage packages re-export what they held."""
    from rsc_core.removal import Remover
    from rsc_core.runs import Run, score_run, train_run
    from rsc_core.training import TrainConfig, Trainer

    from rsc_core.runs.folder import Run as RunAtHome

    assert Run is RunAtHome and callable(score_run) and callable(train_run)
    assert TrainConfig.__module__ == Trainer.__module__ == "rsc_core.training.trainer"
    assert Remover.__module__ == "rsc_core.removal.remover"


def test_the_public_names_are_importable_from_rsc_core_itself():
    import rsc_core

    for name, module in rsc_core.PUBLIC.items():
        assert getattr(rsc_core, name) is getattr(importlib.import_module(module), name)
    from rsc_core import ConfigError, Pattern, hookimpl  # noqa: F401

    with pytest.raises(AttributeError):
        rsc_core.NoSuchThing  # noqa: B018


@pytest.mark.parametrize("package", sorted(STAGES))
def test_each_stage_says_what_it_owns_and_what_it_may_import(package):
    doc = importlib.import_module(f"rsc_core.{package}").__doc__ or ""
    assert len(doc.split()) > 15 and "import" in doc.lower(), package


def test_every_package_is_listed_for_installation():
    """pyproject.toml lists packages one by one: one missing would be absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert packages == listed
