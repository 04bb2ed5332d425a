"""What every command prints (issue 25): strict RFC 8259 JSON from every ``--json`` (never a
bare NaN; a missing number is null with its reason), whole tables when the output is not a
terminal, and one convention per option across commands (``-o``, ``--seed``, ranges,
``train_seed``, run names). One small world of real runs, trained once on a tiny MNIST copy,
serves every command."""
from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np
import pytest
import strict_json
from click.testing import CliRunner

from rsc_cli.main import cli
from rsc_core.json_output import WHY_NULL, to_json
from rsc_core.removal.runs import remove_run
from rsc_core.runs.training import train_run
from rsc_core.data.spec import SpuriousSpec, parse_int_list
from rsc_core.training.trainer import TrainConfig

TINY = TrainConfig(arch="MLP", epochs=1, batch_size=16)
TINY_FLAGS = ["--arch", "MLP", "--epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data root (24 training images per class, so `rsc mia` can split it), a clean run, a
    v8 run at n = 1 (one run per n: its SEM is undefined), and a removal of the v8 run."""
    from conftest import write_idx

    base = tmp_path_factory.mktemp("cli-output")
    rng = np.random.RandomState(7)
    data = base / "data"
    for prefix, per_class in (("train", 24), ("t10k", 4)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = rng.randint(0, 256, size=(labels.size, 28, 28)).astype(np.uint8)
        write_idx(data / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(data / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    runs = base / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RSC_CACHE_DIR", str(base / "cache"))
        clean = train_run(SpuriousSpec.build("mnist"), TINY, runs_dir=runs, data_dir=data,
                          progress=False, device="cpu").run
        v8 = train_run(SpuriousSpec.build("mnist", "v8", 1, (0,), 0), TINY, runs_dir=runs,
                       data_dir=data, progress=False, device="cpu").run
        removal = remove_run(v8.path, "incremental-retraining", "spurious",
                             {"extra_epochs": 1}, runs_dir=runs, data_dir=data,
                             device="cpu").run
    return {"base": base, "data": data, "runs": runs, "clean": clean, "v8": v8,
            "removal": removal, "cache": base / "cache"}


@pytest.fixture
def env(world, monkeypatch):
    monkeypatch.setenv("RSC_DATA_DIR", str(world["data"]))
    monkeypatch.setenv("RSC_RUNS_DIR", str(world["runs"]))
    monkeypatch.setenv("RSC_CACHE_DIR", str(world["cache"]))
    return world


def rsc(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# --- every --json is RFC 8259 JSON -------------------------------------------------------------

JSON_COMMANDS = ("train", "score", "compare", "report", "sensitivity", "runs list", "runs show",
                 "remove", "weights", "data summary", "patterns list", "plugins", "theory",
                 "quickstart", "sweep", "mia", "audit", "import")


def _json_commands(w: dict, tmp: Path) -> dict[str, list]:
    """Each command with --json, and arguments that make it print on the tiny world."""
    v8, clean, removal = w["v8"].path, w["clean"].path, w["removal"].path
    return {
        "train": ["train", "--spec", "mnistv8-1-0-0", *TINY_FLAGS, "-q", "--json"],
        "score": ["score", v8, "--device", "cpu", "--json"],
        "compare": ["compare", v8, "--baseline", clean, "--device", "cpu", "--json"],
        "report": ["report", "-o", tmp / "report", "--device", "cpu", "--json"],
        "sensitivity": ["sensitivity", v8, "--images", "4", "--steps", "3", "-o",
                        tmp / "s.png", "--device", "cpu", "--json"],
        "runs list": ["runs", "list", "--json"],
        "runs show": ["runs", "show", w["v8"].name, "--json"],
        "remove": ["remove", v8, "-m", "incremental-retraining", "--extra-epochs", "1", "-q",
                   "--json"],
        "weights": ["weights", v8, removal, "--json"],
        "data summary": ["data", "summary", "--spec", "mnistv8-1-0-0", "--json"],
        "patterns list": ["patterns", "list", "--json"],
        "plugins": ["plugins", "--json"],
        "theory": ["theory", "--points", "3", "--json"],
        "quickstart": ["quickstart", "--epochs", "1", "-n", "1", "-q", "--runs-dir",
                       tmp / "quick", "-o", tmp / "q.png", "--json"],
        "sweep": ["sweep", "--preset", "score-vs-n", "--n", "0,1", "--seeds", "0",
                  "--dry-run", "--json"],
        "mia": ["mia", "--spec", "memmnistv20-1-0-0", "--attack", "loss-threshold",
                *TINY_FLAGS, "--runs-dir", tmp / "mia-runs", "-o", tmp / "mia", "-q",
                "--json"],
        "audit": ["audit", v8, "-a", "saliency", "-o", tmp / "audit", "--device", "cpu", "-q",
                  "--json"],
        "import": ["import", _state_dict_file(w["v8"], tmp), "--arch", "MLP", "--spec",
                   "mnistv8-1-0-0", "--runs-dir", tmp / "imported", "--json"],
    }


def _state_dict_file(run, tmp: Path) -> Path:
    """The v8 run's weights as a plain state dict, as a user trained elsewhere would save."""
    import torch

    path = tmp / "weights.pt"
    torch.save(run.load_model().state_dict(), path)
    return path


def _commands_with_json(group: click.Group, prefix: str = "") -> set[str]:
    found = set()
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found |= _commands_with_json(command, path + " ")
        elif any("--json" in p.opts for p in command.params):
            found.add(path)
    return found


def test_every_command_with_json_is_checked(tmp_path, world):
    assert _commands_with_json(cli) == set(JSON_COMMANDS)
    assert tuple(_json_commands(world, tmp_path)) == JSON_COMMANDS


@pytest.mark.parametrize("command", JSON_COMMANDS)
def test_json_output_is_rfc_8259(command, env, tmp_path):
    result = rsc(*_json_commands(env, tmp_path)[command])
    assert result.exit_code == 0, result.output
    strict_json.loads(result.stdout)  # no NaN, Infinity, or stray lines on stdout


def test_a_number_that_cannot_be_given_is_null_with_its_reason(env):
    """One run per n has no standard error; the baseline row has no p-value."""
    result = rsc("compare", env["v8"].path, "--baseline", env["clean"].path, "--device", "cpu",
                 "--json")
    baseline, row = strict_json.loads(result.stdout)["rows"]
    assert row["score_sem"] is None and "one run" in row[WHY_NULL]["score_sem"]
    assert baseline["p_value"] is None and "baseline row" in baseline[WHY_NULL]["p_value"]
    alone = strict_json.loads(rsc("compare", env["v8"].path, "--device", "cpu",
                                  "--json").stdout)["rows"][0]
    assert alone["p_value"] is None and "no clean baseline" in alone[WHY_NULL]["p_value"]
    assert 0 <= row["p_value"] <= 1 and "p_value" not in row[WHY_NULL]


def test_the_json_writer_never_writes_nan_or_infinity():
    data = {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32("nan"),
            "d": {"e": -math.inf, WHY_NULL: {"e": "given reason"}}, "f": np.arange(2),
            "g": np.int64(3), "h": Path("x")}
    parsed = strict_json.loads(to_json(data))
    assert parsed["a"] is None and parsed["b"] == [1.0, None] and parsed["c"] is None
    assert parsed["d"] == {"e": None, WHY_NULL: {"e": "given reason"}}
    assert parsed[WHY_NULL] == {"a": "not a finite number (nan)",
                                "b": "entries that are not finite numbers are null",
                                "c": "not a finite number (nan)"}
    assert parsed["f"] == [0, 1] and parsed["g"] == 3 and parsed["h"] == "x"


# --- tables are whole when piped ------------------------------------------------------------

def _whole(output: str, *texts: str) -> None:
    assert "…" not in output, output  # rich's ellipsis: a cell was cut
    for text in texts:
        assert text in output, (text, output)


def test_runs_list_with_every_column_is_whole_when_piped(env):
    """CliRunner's stdout is not a terminal: rich used to assume 80 columns and squeeze
    twenty columns into them, down to zero width."""
    from rsc_core.runs.index import COLUMNS

    result = rsc("runs", "list", "--columns", ",".join(c for c in COLUMNS if c != "path"))
    assert result.exit_code == 0, result.output
    runs = [env["clean"], env["v8"], env["removal"]]
    _whole(result.output, *(r.name for r in runs), "ce-tor-MLP adam lr0.01 b16 e1",
           "incremental-retraining-e1")
    row = next(line for line in result.output.splitlines() if env["v8"].name + " " in line)
    assert "finished" in row and "mnistv8-1-0-0" in row  # one line per run


def test_show_score_and_sensitivity_tables_are_whole_when_piped(env, tmp_path):
    name = env["removal"].name
    _whole(rsc("runs", "show", name).output, name, str(env["removal"].path))
    _whole(rsc("score", env["removal"].path, "--device", "cpu").output,
           name, "patterned accuracy (y != target)")
    result = rsc("sensitivity", env["v8"].path, env["removal"].path, "--images", "4",
                 "--steps", "3", "-o", tmp_path / "s.png", "--device", "cpu")
    _whole(result.output, env["v8"].name, name, "p=0.4")


# --- one convention per option --------------------------------------------------------------

def _options(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _options(command, f"{prefix}{name} ")
        else:
            for param in command.params:
                if isinstance(param, click.Option):
                    yield f"{prefix}{name}", param


def test_dash_o_is_output_everywhere():
    spelled = {(command, tuple(p.opts)) for command, p in _options(cli) if "-o" in p.opts}
    assert spelled and all("--output" in opts for _, opts in spelled), spelled


def test_seed_is_the_dataset_seed_everywhere():
    """--seed names the dataset seed (the spec's last number) in every command; other seeds
    are named for what they draw (--train-seed, --hessian-seed, --image-seed)."""
    seeds = [(command, p) for command, p in _options(cli) if "--seed" in p.opts and not p.hidden]
    assert len(seeds) >= 4
    for command, param in seeds:
        assert "dataset seed" in (param.help or "").lower(), command


def test_old_spellings_still_work_with_a_note(env, tmp_path):
    new = rsc("sensitivity", env["v8"].path, "--images", "3", "--steps", "2", "--image-seed",
              "5", "-o", tmp_path / "a.png", "--device", "cpu", "--json")
    old = rsc("sensitivity", env["v8"].path, "--images", "3", "--steps", "2", "--seed", "5",
              "-o", tmp_path / "b.png", "--device", "cpu", "--json")
    assert old.exit_code == 0 and "--seed is now spelled --image-seed" in old.stderr
    curves = [strict_json.loads(r.stdout)["curves"][0]["indices"] for r in (new, old)]
    assert curves[0] == curves[1]
    both = rsc("sensitivity", env["v8"].path, "--seed", "1", "--image-seed", "2")
    assert both.exit_code == 2 and "old spelling" in both.output
    assert "--out " not in rsc("mia", "--help").output and "--output" in rsc("mia",
                                                                              "--help").output
    assert "--image-seed" in rsc("sensitivity", "--help").output


def test_train_seed_is_one_name(env):
    """The option is --train-seed, the grid key train_seed: so is the index column and every
    JSON key; the index's earlier name still filters."""
    rows = strict_json.loads(rsc("runs", "list", "--json").stdout)
    assert all("train_seed" in row and "training_seed" not in row for row in rows)
    by_new = strict_json.loads(rsc("runs", "list", "--where", "train_seed=0", "--json").stdout)
    by_old = strict_json.loads(rsc("runs", "list", "--where", "training_seed=0",
                                   "--json").stdout)
    assert by_new == by_old == rows
    assert "train seed" in rsc("runs", "list", "--columns", "spec,training_seed").output


@pytest.mark.parametrize("text", ["0-2", "0..2", "{0..2}", "{0,1,2}", "0,1-2"])
def test_a_range_is_read_in_every_spelling(text):
    assert parse_int_list(text) == [0, 1, 2]


def test_sweep_seeds_take_the_brace_range(env):
    result = rsc("sweep", "--preset", "score-vs-n", "--n", "1", "--seeds", "{0..1}",
                 "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert {r["spec"].rsplit("-", 1)[1] for r in strict_json.loads(result.stdout)} == {"0", "1"}


def test_score_takes_a_run_name(env):
    by_path = strict_json.loads(rsc("score", env["v8"].path, "--device", "cpu",
                                    "--json").stdout)
    named = rsc("score", env["v8"].name, "--device", "cpu", "--json")
    assert named.exit_code == 0, named.output
    by_name = strict_json.loads(named.stdout)
    assert by_name == by_path
    clean = ["--pattern", "v8", "--target", "0", "--device", "cpu", "--json"]
    by_start = strict_json.loads(rsc("score", "mnist_ce", *clean).stdout)  # a unique start
    assert by_start == strict_json.loads(rsc("score", env["clean"].path, *clean).stdout)
    ambiguous = rsc("score", "mnistv8-1", "--device", "cpu")  # the run and its removal
    assert ambiguous.exit_code == 2 and "give more of the name" in ambiguous.output


def test_compare_selects_runs_from_the_index(env):
    """The README's first comparison: --where picks the runs, the baseline is every clean
    run trained like them."""
    by_where = rsc("compare", "--where", "pattern=v8 and removal=null", "--device", "cpu",
                   "--json")
    assert by_where.exit_code == 0, by_where.output
    by_path = rsc("compare", env["v8"].path, "--baseline", env["clean"].path, "--device", "cpu",
                  "--json")
    assert strict_json.loads(by_where.stdout) == strict_json.loads(by_path.stdout)
    none = rsc("compare", "--where", "pattern=v20")
    assert none.exit_code == 2 and "no finished spurious runs match" in none.output
    nothing = rsc("compare")
    assert nothing.exit_code == 2 and "--where" in nothing.output
