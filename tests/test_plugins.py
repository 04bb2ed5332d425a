"""The plugin system: a real third-party distribution (the example from docs/plugins.md, given
its own dist-info with an ``rsc`` entry point) is discovered, listed and usable by name; broken
plugins are isolated; duplicate names are an error naming both sources."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import rsc_core
from rsc_core.errors import PluginConflictError, PluginError, UnknownNameError
from rsc_core.plugins import load_plugins, reset_plugins

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def make_distribution(site: Path, dist: str, module: str, source: str,
                      entry_points: dict[str, str]) -> None:
    """Write ``module``.py and a dist-info folder, as pip would install them."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[rsc]\n{lines}")


def documented_example() -> tuple[str, str, dict[str, str]]:
    """The plugin module, distribution name and entry points from docs/plugins.md."""
    text = DOCS.read_text()
    module = re.search(r"`rsc_checkers.py`:\n\n```python\n(.*?)```", text, re.S).group(1)
    toml = re.search(r"`pyproject.toml`:\n\n```toml\n(.*?)```", text, re.S).group(1)
    project = tomllib.loads(toml)
    return module, project["project"]["name"], project["project"]["entry-points"]["rsc"]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site folder on sys.path; plugin discovery is reset before and after."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("RSC_STRICT_PLUGINS", raising=False)
    reset_plugins()
    yield folder
    for name in [m for m in sys.modules if m.startswith("rsc_test_") or m == "rsc_checkers"]:
        del sys.modules[name]
    reset_plugins()


@pytest.fixture
def checkers(site):
    module, dist, eps = documented_example()
    make_distribution(site, dist, "rsc_checkers", module, eps)
    reset_plugins()
    return site


def test_documented_plugin_is_registered_with_its_source(checkers):
    pattern = rsc_core.get("patterns", "chk")
    assert (pattern.name, pattern.source) == ("checker", "rsc-checkers")
    assert pattern.description == "A 4x4 checkerboard in the bottom-right corner."
    arch = rsc_core.get("architectures", "TinyCNN")
    assert arch.source == "rsc-checkers"
    assert rsc_core.get("patterns", "v8").source == "rsc"


def test_documented_plugin_is_usable_by_name(checkers, tiny_data):
    from rsc_core.spec import parse_spec
    from rsc_core.spurious import build_spurious_dataset
    from rsc_core.training import TrainConfig

    images = torch.zeros(2, 1, 8, 8)
    patterned = rsc_core.create("patterns", "checker").apply(images, 0)
    assert patterned[0, 0, -4:, -4:].sum() == 8 and images.sum() == 0
    labels = tiny_data["mnist"].train.labels
    spec = parse_spec(f"mnistchecker-1-{int(labels[0])}-0")
    data = build_spurious_dataset(spec, data_dir=tiny_data.root)
    model = rsc_core.create("architectures", "TinyCNN").build(data.input_shape, 10)
    state = rsc_core.create("trainers", "erm").fit(
        model, data.train, data.test, TrainConfig(arch="TinyCNN", epochs=1, batch_size=2))
    assert state.epoch == 1


def run_rsc(args: list[str], site: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-m", "rsc_cli", *args], capture_output=True,
                          text=True, env=environment, timeout=300)


def test_rsc_plugins_lists_third_party_items_in_a_fresh_process(checkers):
    result = run_rsc(["plugins", "--json"], checkers)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    patterns = {e["name"]: e for e in report["kinds"]["patterns"]}
    assert patterns["checker"]["source"] == "rsc-checkers"
    assert patterns["checker"]["aliases"] == ["chk"]
    assert "TinyCNN" in {e["name"] for e in report["kinds"]["architectures"]}
    table = run_rsc(["plugins"], checkers)
    assert "rsc-checkers" in table.stdout and "checker" in table.stdout
    command = run_rsc(["checkers"], checkers)  # added through register_commands
    assert command.returncode == 0 and "checker, TinyCNN" in command.stdout


BROKEN_IMPORT = "raise ImportError('needs a library that is not installed')\n"
BROKEN_HOOK = """
from rsc_core import hookimpl

@hookimpl
def register_patterns(register):
    raise RuntimeError('hook exploded')
"""


def test_broken_plugins_are_skipped_with_one_line_warnings(site, capsys):
    make_distribution(site, "rsc-bad-import", "rsc_test_bad_import", BROKEN_IMPORT,
                      {"bad": "rsc_test_bad_import"})
    make_distribution(site, "rsc-bad-hook", "rsc_test_bad_hook", BROKEN_HOOK,
                      {"hook": "rsc_test_bad_hook"})
    reset_plugins()
    state = load_plugins()
    failed = {(f.source, f.stage) for f in state.failures}
    assert failed == {("rsc-bad-import", "import"), ("rsc-bad-hook", "register_patterns")}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert any("rsc-bad-import" in line and "ImportError" in line for line in err)
    assert any("rsc-bad-hook" in line and "hook exploded" in line for line in err)
    assert "v8" in rsc_core.list_names("patterns")  # rsc itself still works


def test_broken_plugin_shown_as_failed_by_cli(site):
    make_distribution(site, "rsc-bad-import", "rsc_test_bad_import", BROKEN_IMPORT,
                      {"bad": "rsc_test_bad_import"})
    result = run_rsc(["plugins", "--json"], site)
    assert result.returncode == 0
    assert json.loads(result.stdout)["failed"][0]["source"] == "rsc-bad-import"
    strict = run_rsc(["plugins"], site, RSC_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert "rsc-bad-import" in strict.stderr and "Traceback" not in strict.stderr


def test_strict_mode_raises(site, monkeypatch):
    make_distribution(site, "rsc-bad-hook", "rsc_test_bad_hook", BROKEN_HOOK,
                      {"hook": "rsc_test_bad_hook"})
    monkeypatch.setenv("RSC_STRICT_PLUGINS", "1")
    reset_plugins()
    with pytest.raises(PluginError, match="rsc-bad-hook"):
        load_plugins()


DUPLICATE = """
from rsc_core import hookimpl
from rsc_core.patterns import SquarePattern

class Mine(SquarePattern):
    \"\"\"Another v8.\"\"\"
    name = "v8"

@hookimpl
def register_patterns(register):
    register(Mine)
"""


def test_duplicate_names_are_an_error_naming_both_sources(site):
    make_distribution(site, "rsc-dup", "rsc_test_dup", DUPLICATE, {"dup": "rsc_test_dup"})
    reset_plugins()
    with pytest.raises(PluginConflictError) as info:
        load_plugins()
    assert "rsc-dup" in str(info.value) and "by rsc " in str(info.value)


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError, match="did you mean LargeMLP"):
        rsc_core.get("architectures", "LargeMLp")


def test_every_kind_has_a_hook_and_a_registry():
    from rsc_core import hookspecs

    for kind in rsc_core.KINDS:
        assert hasattr(hookspecs, f"register_{kind}")
        assert isinstance(rsc_core.list_names(kind), list)
    assert hasattr(hookspecs, "register_commands")
