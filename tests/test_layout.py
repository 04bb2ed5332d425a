"""The shape of the code (issue 24, docs/architecture.md): rsc_core is grouped by the study's
stages and dependencies run one way, from later stages to earlier ones and to the kernel; the
core imports no plugin and no CLI module; plugins and the CLI never import each other; no
module imports, however indirectly, a module that imports it; a plugin kind that has grown keeps
one plugin per module. The checks read the source files with ``ast``: imports inside functions
count too (a lazy import only hides a circle until someone moves it to the top). Old module
paths still import, as the same module."""
from __future__ import annotations

import ast
import importlib
from collections import Counter
from pathlib import Path

import pytest

import rsc_core

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"rsc_core": ROOT / "rsc_core", "rsc_plugins": ROOT / "plugins",
            "rsc_cli": ROOT / "cli"}

# Stage of each rsc_core subpackage; a module may import from its own stage or an earlier one.
# Modules directly in rsc_core (and storage/) are the kernel, stage 0.
STAGES = {"storage": 0, "data": 1, "training": 2, "evaluation": 3, "influence": 4, "runs": 5,
          "analysis": 6, "removal": 7, "privacy": 8, "audit": 9, "sweeps": 10, "reports": 11}

#: A module registering several plugins must stay short: past this many lines it is split into
#: one module per plugin (or per network definition, as ``architectures/``).
MAX_LINES_WITH_SEVERAL_PLUGINS = 250


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def modules(packages: dict[str, Path]) -> dict[str, Path]:
    """Every module of ``packages`` (name -> folder), by dotted name."""
    return {module_name(path, root, package): path for package, root in packages.items()
            for path in sorted(root.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name``'s source imports, anywhere in the file.
    ``from . import x`` names the submodule ``x`` when there is one, else the package."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            found.update(submodules or {base})
    return found & known - {name}


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    found = modules(packages)
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


MODULES = modules(PACKAGES)
GRAPH = import_graph(PACKAGES)


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


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (``[a, b, ..., a]``), or None when there is none."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its modules is not a circle with them: the
    modules' own imports of each other are what is checked."""
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    return {m: ts - packages for m, ts in graph.items() if m not in packages}


def test_no_module_imports_itself_round_a_circle():
    assert "rsc_plugins.trainers.erm_recipe" in GRAPH["rsc_plugins.trainers.erm_group"]
    cycle = find_cycle(without_packages(GRAPH))
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_the_circle_check_finds_a_lazy_circle_and_the_import_forms(tmp_path):
    """The two trainer modules as they were: ``a`` imports ``b`` inside a function, ``b``
    imports ``a`` at the top. Plus each import form the check must resolve."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (package / "b.py").write_text("from .a import f\n\ndef g():\n    return f\n")
    (package / "sub" / "__init__.py").write_text("from . import c\nfrom .. import b\n")
    (package / "sub" / "c.py").write_text("import pkg.a\nfrom ..sub import d\n")
    (package / "sub" / "d.py").write_text("")
    graph = import_graph({"pkg": package})
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"},
                     "pkg.sub": {"pkg.sub.c", "pkg.b"}, "pkg.sub.c": {"pkg.a", "pkg.sub.d"},
                     "pkg.sub.d": set()}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (package / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph({"pkg": package})) is None


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


def test_a_module_holding_several_registered_plugins_is_short():
    """A plugin kind that grows gets a subpackage with one plugin per module; several in one
    module are fine only while they are a few lines each (variants of one network, the
    patterns, the CIFAR datasets)."""
    per_module = Counter(
        entry.obj.__module__
        for kind in rsc_core.KINDS for entry in rsc_core.registry(kind).entries()
        if entry.source == "rsc")
    assert per_module["rsc_plugins.architectures.resnet"] == 6  # the count is of real entries
    paths = MODULES
    too_long = {name: (count, len(paths[name].read_text().splitlines()))
                for name, count in per_module.items() if count > 1
                and len(paths[name].read_text().splitlines()) > MAX_LINES_WITH_SEVERAL_PLUGINS}
    assert not too_long, (f"modules holding several plugins past "
                          f"{MAX_LINES_WITH_SEVERAL_PLUGINS} lines (plugins, lines): {too_long}; "
                          f"give each plugin a module of its own")


def test_a_run_folder_written_before_the_grouping_is_found_under_its_name(tmp_path):
    """The run folder's name carries the hash of its configuration; the move must not change
    it, or every finished run would be trained again. The name is the one of a 70-epoch run
    trained before the grouping (docs/results.md, issue 23's grid)."""
    from rsc_core.data.spec import parse_spec
    from rsc_core.runs.training import find_run
    from rsc_core.training.recipe import recipe_config

    config = recipe_config({"model_spec": "ce-tor-LargeMLP", "optimizer": "adam", "lr": 0.01,
                            "batch_size": 128, "epochs": 70, "train_seed": 0})
    run = find_run(parse_spec("mnistv20-3-0-0"), config, runs_dir=tmp_path)
    assert run.path.name == "mnistv20-3-0-0_ce-tor-LargeMLP_adam-lr0.01-b128-e70-s0-cb785be470"
