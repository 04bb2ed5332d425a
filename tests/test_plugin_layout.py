"""The layout of rsc's own plugins (``plugins/``, the ``rsc_plugins`` package): imports between
its modules run one way (no module imports, however indirectly, a module that imports it), and
a plugin kind that has grown keeps one plugin per module instead of many in one long file.

Both checks read the source files with ``ast`` (imports inside functions count too: a lazy
import only hides a circle until someone moves it to the top)."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import rsc_core
import rsc_plugins

ROOT = Path(rsc_plugins.__file__).resolve().parent
PACKAGE = "rsc_plugins"

#: A module registering several plugins must stay short: past this many lines it is split into
#: one module per plugin (or per network definition, as ``architectures/``).
MAX_LINES_WITH_SEVERAL_PLUGINS = 250


def module_name(path: Path, root: Path = ROOT, package: str = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    return {module_name(path, root, package): path for path in sorted(root.rglob("*.py"))}


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


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    found = modules(root, package)
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


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


def test_rsc_plugins_modules_import_each_other_one_way():
    graph = import_graph()
    assert "rsc_plugins.trainers.erm_recipe" in graph["rsc_plugins.trainers.erm_group"]
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle among rsc_plugins modules: {' -> '.join(cycle)}"


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
    graph = import_graph(package, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"},
                     "pkg.sub": {"pkg.sub.c", "pkg.b"}, "pkg.sub.c": {"pkg.a", "pkg.sub.d"},
                     "pkg.sub.d": set()}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (package / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(package, "pkg")) is None


def test_a_module_holding_several_registered_plugins_is_short():
    """A plugin kind that grows gets a subpackage with one plugin per module; several in one
    module are fine only while they are a few lines each (variants of one network, the
    patterns, the CIFAR datasets)."""
    per_module = Counter(
        entry.obj.__module__
        for kind in rsc_core.KINDS for entry in rsc_core.registry(kind).entries()
        if entry.source == "rsc")
    assert per_module["rsc_plugins.architectures.resnet"] == 6  # the count is of real entries
    paths = modules()
    too_long = {name: (count, len(paths[name].read_text().splitlines()))
                for name, count in per_module.items() if count > 1
                and len(paths[name].read_text().splitlines()) > MAX_LINES_WITH_SEVERAL_PLUGINS}
    assert not too_long, (f"modules holding several plugins past "
                          f"{MAX_LINES_WITH_SEVERAL_PLUGINS} lines (plugins, lines): {too_long}; "
                          f"give each plugin a module of its own")
