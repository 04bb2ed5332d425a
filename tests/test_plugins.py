"""The plugin system: a real third-party distribution (the example from docs/plugins.md, given
its own dist-info with an ``rsc`` entry point) is discovered, listed and usable by name; broken
plugins are isolated per hook; a name clash keeps the first registration (rsc's own first) and
warns, or is an error under RSC_STRICT_PLUGINS; RSC_DISABLE_PLUGINS / RSC_LOAD_PLUGINS choose
what loads; ``rsc plugins`` lists packages and, piped, prints plain untruncated lines."""
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
    for variable in ("RSC_STRICT_PLUGINS", "RSC_DISABLE_PLUGINS", "RSC_LOAD_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
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
    from rsc_core.data.spec import parse_spec
    from rsc_core.data.planting import build_spurious_dataset
    from rsc_core.training.trainer import TrainConfig

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

class Unique(SquarePattern):
    \"\"\"A name nobody else uses.\"\"\"
    name = "rsc-test-unique"

@hookimpl
def register_patterns(register):
    register(Mine)
    register(Unique)
"""


def clash_plugin(item: str) -> str:
    """A plugin module registering one pattern called ``item``."""
    return f"""
from rsc_core import hookimpl
from rsc_core.patterns import SquarePattern

class Clash(SquarePattern):
    \"\"\"Clashing pattern.\"\"\"
    name = "zz-clash"

@hookimpl
def register_patterns(register):
    register(Clash, description="{item}")
"""


def test_clash_with_a_builtin_keeps_the_builtin_and_warns(site, capsys):
    # site comes first on sys.path, so without rsc's ordering rsc-dup would load first
    make_distribution(site, "rsc-dup", "rsc_test_dup", DUPLICATE, {"dup": "rsc_test_dup"})
    reset_plugins()
    state = load_plugins()
    assert rsc_core.get("patterns", "v8").source == "rsc"
    assert rsc_core.get("patterns", "rsc-test-unique").source == "rsc-dup"  # only v8 skipped
    [conflict] = state.conflicts
    assert (conflict.kind, conflict.name, conflict.kept_source, conflict.skipped_source) == (
        "patterns", "v8", "rsc", "rsc-dup")
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: ") and "rsc-dup" in line and "by both rsc (v8)" in line


def test_clash_between_third_party_packages_first_by_name_wins(site, tmp_path, monkeypatch,
                                                                capsys):
    make_distribution(site, "rsc-alpha", "rsc_test_alpha", clash_plugin("from alpha"),
                      {"alpha": "rsc_test_alpha"})
    earlier = tmp_path / "earlier"  # before site on sys.path: sys.path order must not matter
    earlier.mkdir()
    monkeypatch.syspath_prepend(str(earlier))
    make_distribution(earlier, "rsc-zeta", "rsc_test_zeta", clash_plugin("from zeta"),
                      {"zeta": "rsc_test_zeta"})
    reset_plugins()
    state = load_plugins()
    entry = rsc_core.get("patterns", "zz-clash")
    assert (entry.source, entry.description) == ("rsc-alpha", "from alpha")
    assert [(c.kept_source, c.skipped_source) for c in state.conflicts] == [
        ("rsc-alpha", "rsc-zeta")]
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "rsc-alpha" in line and "rsc-zeta" in line


def test_strict_mode_makes_a_clash_a_one_line_error(site, monkeypatch):
    make_distribution(site, "rsc-dup", "rsc_test_dup", DUPLICATE, {"dup": "rsc_test_dup"})
    monkeypatch.setenv("RSC_STRICT_PLUGINS", "1")
    reset_plugins()
    with pytest.raises(PluginConflictError) as info:
        load_plugins()
    message = str(info.value)
    assert "\n" not in message and "rsc-dup" in message and "rsc (v8)" in message


def test_builtins_never_clash_in_strict_mode(site, monkeypatch):
    """CI runs with RSC_STRICT_PLUGINS=1, so rsc's own plugins must load cleanly under it. The
    built-ins alone are under test: a third-party plugin installed in the environment (here
    one that would clash) is not loaded, only listed as disabled."""
    make_distribution(site, "rsc-dup", "rsc_test_dup", DUPLICATE, {"dup": "rsc_test_dup"})
    monkeypatch.setenv("RSC_STRICT_PLUGINS", "1")
    monkeypatch.setenv("RSC_LOAD_PLUGINS", "")
    reset_plugins()
    state = load_plugins()
    assert not state.conflicts and not state.failures
    assert [p.name for p in state.packages.values() if p.status != "disabled"] == ["rsc"]


def test_a_clash_does_not_break_help_version_or_plugins(site):
    make_distribution(site, "rsc-dup", "rsc_test_dup", DUPLICATE, {"dup": "rsc_test_dup"})
    for args in (["--help"], ["--version"], ["plugins"]):
        result = run_rsc(args, site)
        assert result.returncode == 0, (args, result.stderr)
        assert "rsc-dup" in result.stderr and "by both rsc (v8)" in result.stderr
    assert "patterns\tv8\trsc (v8)\trsc-dup (v8)" in result.stdout  # the conflicts section
    report = json.loads(run_rsc(["plugins", "--json"], site).stdout)
    assert [(c["name"], c["kept_source"], c["skipped_source"]) for c in report["conflicts"]] \
        == [("v8", "rsc", "rsc-dup")]
    strict = run_rsc(["--help"], site, RSC_STRICT_PLUGINS="1")
    assert strict.returncode != 0 and "Traceback" not in strict.stderr
    [line] = strict.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "rsc-dup" in line


COMMAND_CLASH = """
import click
from rsc_core import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command("train")
    def train():
        \"\"\"Would replace rsc train.\"\"\"

    @cli.command("rsc-test-extra")
    def extra():
        \"\"\"A new command.\"\"\"
"""


def test_a_plugin_command_cannot_replace_a_builtin_command(site):
    import click

    from rsc_core.plugins import add_commands

    make_distribution(site, "rsc-cmd", "rsc_test_cmd", COMMAND_CLASH, {"cmd": "rsc_test_cmd"})
    reset_plugins()
    builtin = click.Command("train")
    group = click.Group(commands={"train": builtin})
    add_commands(group)
    assert group.commands["train"] is builtin and "rsc-test-extra" in group.commands
    state = load_plugins()
    assert [(c.kind, c.name, c.kept_source) for c in state.conflicts] == [
        ("commands", "train", "rsc")]
    assert state.packages["rsc-cmd"].commands == ["rsc-test-extra"]


PARTLY_BROKEN = """
import click
from rsc_core import hookimpl
from rsc_core.architectures import Architecture
from rsc_core.patterns import SquarePattern

class Early(SquarePattern):
    \"\"\"Registered just before the hook raises.\"\"\"
    name = "rsc-test-early"

class Net(Architecture):
    \"\"\"Registered by a hook that works.\"\"\"
    name = "RscTestNet"

@hookimpl
def register_patterns(register):
    register(Early)
    raise RuntimeError("patterns hook exploded")

@hookimpl
def register_architectures(register):
    register(Net)

@hookimpl
def register_commands(cli):
    @cli.command("rsc-test-partly")
    def partly():
        \"\"\"Still added.\"\"\"
"""


def test_isolation_is_per_hook(site):
    """A raising hook registers nothing; the same plugin's other hooks still run."""
    import click

    from rsc_core.plugins import add_commands

    make_distribution(site, "rsc-partly", "rsc_test_partly", PARTLY_BROKEN,
                      {"partly": "rsc_test_partly"})
    reset_plugins()
    state = load_plugins()
    assert [(f.source, f.stage) for f in state.failures] == [("rsc-partly", "register_patterns")]
    assert "rsc-test-early" not in rsc_core.list_names("patterns")
    assert rsc_core.get("architectures", "RscTestNet").source == "rsc-partly"
    group = click.Group()
    add_commands(group)
    assert "rsc-test-partly" in group.commands


def test_disable_plugins_skips_a_package_and_keeps_rsc(checkers, monkeypatch, capsys):
    monkeypatch.setenv("RSC_DISABLE_PLUGINS", "rsc_checkers, rsc")  # any spelling pip accepts
    reset_plugins()
    state = load_plugins()
    assert "checker" not in rsc_core.list_names("patterns")
    assert "v8" in rsc_core.list_names("patterns")
    package = state.packages["rsc-checkers"]
    assert (package.status, package.reason) == ("disabled", "RSC_DISABLE_PLUGINS")
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "cannot disable rsc" in line


def test_load_plugins_variable_loads_only_the_named_packages(checkers, monkeypatch, capsys):
    make_distribution(checkers, "rsc-dup", "rsc_test_dup", DUPLICATE, {"dup": "rsc_test_dup"})
    monkeypatch.setenv("RSC_LOAD_PLUGINS", "rsc-checkers")
    reset_plugins()
    state = load_plugins()
    assert rsc_core.get("patterns", "checker").source == "rsc-checkers"
    assert "rsc-test-unique" not in rsc_core.list_names("patterns") and not state.conflicts
    assert state.packages["rsc-dup"].reason == "RSC_LOAD_PLUGINS"
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RSC_LOAD_PLUGINS", "")  # set but empty: rsc's own plugins only
    reset_plugins()
    assert {e.source for k in rsc_core.KINDS for e in rsc_core.registry(k).entries()} == {"rsc"}


def test_unknown_names_in_the_variables_are_one_line_warnings(checkers, monkeypatch, capsys):
    monkeypatch.setenv("RSC_DISABLE_PLUGINS", "rsc-nope,rsc-checkers")
    monkeypatch.setenv("RSC_LOAD_PLUGINS", "rsc-missing")
    reset_plugins()
    load_plugins()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert any(l.startswith("warning: ") and "RSC_LOAD_PLUGINS names rsc-missing," in l
               for l in err)
    assert any("RSC_DISABLE_PLUGINS names rsc-nope," in l and "rsc-checkers" in l for l in err)


def test_packages_show_version_hooks_and_commands(checkers):
    from click.testing import CliRunner

    from rsc_cli.plugin_commands import plugins_command

    report = json.loads(CliRunner().invoke(plugins_command, ["--json"]).stdout)
    packages = {p["name"]: p for p in report["packages"]}
    assert list(packages)[0] == "rsc" and packages["rsc"]["builtin"]
    mine = packages["rsc-checkers"]
    assert (mine["version"], mine["status"], mine["commands"]) == ("0.1.0", "loaded",
                                                                   ["checkers"])
    assert mine["hooks"] == ["register_patterns", "register_architectures",
                             "register_commands"]
    assert mine["entry_points"] == ["checkers = rsc_checkers"]
    text = CliRunner().invoke(plugins_command, []).stdout
    assert ("rsc-checkers\t0.1.0\tloaded\tregister_patterns, register_architectures, "
            "register_commands\tcheckers") in text.splitlines()


LONG_NAME = "rsc-test-" + "long" * 48 + "-end"  # 201 characters
LONG = f"""
from rsc_core import hookimpl
from rsc_core.patterns import SquarePattern

class Long(SquarePattern):
    name = "{LONG_NAME}"
    description = "A very long description " + "that goes on " * 20 + "DESCRIPTION-END"

@hookimpl
def register_patterns(register):
    register(Long)
"""


def test_piped_listing_is_plain_and_never_truncated(site):
    from click.testing import CliRunner

    from rsc_cli.plugin_commands import plugins_command

    make_distribution(site, "rsc-long", "rsc_test_long", LONG, {"long": "rsc_test_long"})
    reset_plugins()
    result = CliRunner().invoke(plugins_command, [])  # not a terminal, as under a pipe
    assert result.exit_code == 0
    [line] = [l for l in result.stdout.splitlines() if LONG_NAME in l]  # `grep LONGNAME`
    assert line.startswith(f"patterns\t{LONG_NAME}\t-\trsc-long\tA very long")
    assert line.endswith("DESCRIPTION-END") and "\x1b" not in result.stdout
    assert not set("│┃─━") & set(result.stdout)  # no rich table borders


def test_interfaces_doc_examples_run(tiny_data, tmp_path, monkeypatch):
    """Every python block of docs/interfaces.md runs, in order, against a real tiny run."""
    from rsc_core.runs.training import train_run
    from rsc_core.data.spec import parse_spec
    from rsc_core.training.trainer import TrainConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RSC_DATA_DIR", str(tiny_data.root))
    label = int(tiny_data["mnist"].train.labels[0])
    run = train_run(parse_spec(f"mnistv8-1-{label}-0"), TrainConfig(epochs=1),
                    runs_dir="runs", progress=False).run
    text = (DOCS.parent / "interfaces.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for number, block in enumerate(blocks):
        code = block.replace("runs/<folder>", f"runs/{run.name}")
        exec(compile(code, f"docs/interfaces.md python block {number + 1}", "exec"), namespace)
    assert namespace["result"].pattern == "v8"


def _documented_items() -> dict[str, set[str]]:
    """Registered ``name`` -> the distinct class definitions using it, over docs/*.md."""
    import ast

    found: dict[str, set[str]] = {}
    for doc in sorted(DOCS.parent.glob("*.md")):
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S):
            for node in ast.walk(ast.parse(block)):
                if not isinstance(node, ast.ClassDef):
                    continue
                for statement in node.body:
                    if not isinstance(statement, ast.Assign):
                        continue
                    target, value = statement.targets[0], statement.value
                    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                        target, value = target.elts[0], value.elts[0]
                    if getattr(target, "id", None) == "name" and isinstance(value, ast.Constant):
                        found.setdefault(value.value, set()).add(ast.dump(node))
    return found


def test_docs_never_define_two_different_items_under_one_name():
    """Two docs' examples installed together must not clash (e.g. two different TinyCNNs)."""
    items = _documented_items()
    assert "TinyCNN" in items and "checker" in items
    assert {name for name, classes in items.items() if len(classes) > 1} == set()


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError, match="did you mean LargeMLP"):
        rsc_core.get("architectures", "LargeMLp")


def test_every_kind_has_a_hook_and_a_registry():
    from rsc_core import hookspecs

    for kind in rsc_core.KINDS:
        assert hasattr(hookspecs, f"register_{kind}")
        assert isinstance(rsc_core.list_names(kind), list)
    assert hasattr(hookspecs, "register_commands")


EXITING_IMPORT = "raise SystemExit(0)\n"
EXITING_HOOKS = """
import sys

from rsc_core import hookimpl

@hookimpl
def register_patterns(register):
    sys.exit(0)

@hookimpl
def register_commands(cli):
    raise SystemExit(3)
"""


def test_a_plugin_that_exits_is_a_broken_plugin_not_the_end_of_rsc(site, capsys):
    """Issue 26: ``SystemExit(0)`` at import or in a hook made every rsc command exit 0 with
    no output. It is caught like any failure (only KeyboardInterrupt passes through)."""
    import click

    from rsc_core.plugins import add_commands

    make_distribution(site, "rsc-exit-import", "rsc_test_exit_import", EXITING_IMPORT,
                      {"exit": "rsc_test_exit_import"})
    make_distribution(site, "rsc-exit-hooks", "rsc_test_exit_hooks", EXITING_HOOKS,
                      {"hooks": "rsc_test_exit_hooks"})
    reset_plugins()
    state = load_plugins()
    add_commands(click.Group())
    failed = {(f.source, f.stage, f.error) for f in state.failures}
    assert failed == {("rsc-exit-import", "import", "SystemExit: 0"),
                      ("rsc-exit-hooks", "register_patterns", "SystemExit: 0"),
                      ("rsc-exit-hooks", "register_commands", "SystemExit: 3")}
    assert len(capsys.readouterr().err.strip().splitlines()) == 3
    result = run_rsc(["plugins", "--json"], site)
    assert result.returncode == 0 and json.loads(result.stdout)["failed"]
    assert "rsc-exit-import" in result.stderr


def test_keyboard_interrupt_in_a_plugin_still_stops_rsc(site):
    make_distribution(site, "rsc-interrupt", "rsc_test_interrupt",
                      "raise KeyboardInterrupt\n", {"stop": "rsc_test_interrupt"})
    reset_plugins()
    with pytest.raises(KeyboardInterrupt):
        load_plugins()


THIRD_PARTY_METHODS = """
from rsc_core import hookimpl
from rsc_core.attacks import Attack, AttackOutput
from rsc_core.removal import Remover, RemovalResult

class Forgetful(Remover):
    \"\"\"A remover from another package.\"\"\"
    name = "rsc-test-forgetful"
    defaults = {"steps": 1}

    def remove(self, request):
        return RemovalResult(request.source.load_model().state_dict())

class Guess(Attack):
    \"\"\"An attack from another package.\"\"\"
    name = "rsc-test-guess"

    def attack(self, target, shadows):
        return AttackOutput(target.losses(), target.losses() < 1)

@hookimpl
def register_removers(register):
    register(Forgetful)

@hookimpl
def register_attacks(register):
    register(Guess)
"""


def test_method_and_attack_help_list_installed_plugins(site):
    """--method and --attack list what is registered, a third-party package's items too,
    not a fixed list of rsc's own."""
    make_distribution(site, "rsc-test-methods", "rsc_test_methods", THIRD_PARTY_METHODS,
                      {"methods": "rsc_test_methods"})
    remove = run_rsc(["remove", "--help"], site)
    mia = run_rsc(["mia", "--help"], site)
    assert remove.returncode == 0 and mia.returncode == 0, remove.stderr + mia.stderr
    for text, names in ((remove.stdout, ("rsc-test-forgetful", "incremental-retraining",
                                         "group-influence", "retrain")),
                        (mia.stdout, ("rsc-test-guess", "shadow-lr", "lira-offline", "rmia"))):
        flat = " ".join(text.split()).replace("- ", "-")  # undo Click's wrapping at hyphens
        for name in names:
            assert name in flat, (name, flat)
