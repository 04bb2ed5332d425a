"""``rsc sweep``: grid files and presets are validated (errors name the line), expanded into
the runs ``rsc train`` would make, the finished runs are skipped and the interrupted ones
resumed, failures are recorded while the sweep goes on, and --dry-run trains nothing. These
tests use the local executor; tests/test_executors.py runs the others."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ONE_THREAD_ENV

from rsc_cli.main import cli
from rsc_cli.train_options import build_train_config
from rsc_core.errors import RscError
from rsc_core.runs.groups import train_runs
from rsc_core.runs.folder import Run
from rsc_core.runs.training import find_run
from rsc_core.data.spec import SpuriousSpec
from rsc_core.sweeps.grid import GridError, load_grid, parse_grid
from rsc_core.sweeps.presets import PRESETS, STUDY_PATTERNS, preset_grid
from rsc_core.storage.toml_writer import to_toml
from rsc_core.sweeps.sweep import plan_sweep
from rsc_core.training.recipe import RECIPE_DEFAULTS

GRID = """\
# a small grid
dataset = "mnist"
pattern = ["v8", "v20"]
n = [0, 3]
seed = "0-1"
arch = "MLP"
batch-size = 16
epochs = 2
"""


@pytest.fixture
def root(tmp_path, dataset_writers) -> Path:
    """A data root with MNIST only (60 training images; class 0 has enough for n = 3)."""
    data = tmp_path / "data"
    dataset = dataset_writers.idx_dataset(data, "MNIST", seed=1, n_train=60, n_test=20)
    assert (dataset.train.labels == 0).sum() >= 3
    return data


def rsc(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("text, message", [
    ('dataset = "mnist"\n\nlearning_rate = 0.1\n', "g.toml line 3: unknown key 'learning_rate'"),
    ('dataset = "mnist"\npattern = ["v8", "v99"]\n', "g.toml line 2: pattern = 'v99': unknown "
                                                   "pattern 'v99'"),
    ('dataset = "mnist"\nepochs = 2\nlr = "fast"\n', "g.toml line 3: lr = 'fast': must be a "
                                                    "number, got str"),
    ('dataset = "mnist"\noptimizer = ["adam", "nadam"]\n', "g.toml line 2: optimizer = 'nadam': "
                                                          "unknown optimizer"),
    ('dataset = "mnistt"\n', "g.toml line 1: dataset = 'mnistt': unknown dataset"),
    ('dataset = "mnist"\n[sweep]\nexecutor = "local"\nworkrs = 2\n',
     "g.toml line 4: unknown key 'workrs' in [sweep]"),
    ('dataset = "mnist"\nseed = "4-2"\n', "g.toml line 2: bad seeds range"),
    ('dataset = "mnist"\nn = [1]\ntarget = 10\n', "g.toml lines 1, 2, 3: dataset 'mnist', "
                                                 "pattern None, n 1, target 10"),
    ('dataset = "mnist"\nloss = "mse"\nregularisers = ["label-smoothing:eps=0.1"]\n',
     "g.toml lines 2, 3: the recipe loss = 'mse', regularisers"),
    ('dataset = "mnist"\nepochs = [2, 2]\n', "g.toml line 2: epochs lists a value twice"),
    ('dataset = "mnist"\nmilestones = [[5, 3]]\n', "g.toml line 2: milestones = [5, 3]: "
                                                    "milestones must be strictly increasing"),
    ('dataset = "mnist"\nrecipe = [{optimizer = "sgd", momentum = "high"}]\n',
     "g.toml line 2: recipe = {'optimizer': 'sgd', 'momentum': 'high'}: momentum: must be"),
    ('dataset = "mnist"\nrecipe = [{lr = [0.1, 0.2]}]\n',
     "g.toml line 2: recipe = {'lr': [0.1, 0.2]}: lr: a recipe sets one value"),
    ('dataset = "mnist"\nepochs = \n', "g.toml: not valid TOML: Invalid value (at line 2"),
    ('n = [0, 1]\n', "g.toml: the grid names no dataset"),
])
def test_grid_errors_are_one_line_naming_the_line(text, message, tmp_path):
    with pytest.raises(GridError) as error:
        parse_grid(text, "g.toml").requests()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    grid = tmp_path / "g.toml"
    grid.write_text(text)
    result = rsc("sweep", str(grid), "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"Error: {grid} line") or "no dataset" in result.output \
        or "not valid TOML" in result.output


def test_a_grid_expands_into_the_runs_rsc_train_would_make(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID + 'weight_decay = [1e-3, 1e-4]\n')
    requests = load_grid(grid).requests()
    # n = 0 is the clean dataset: one run per recipe, whatever the pattern and seed.
    assert len(requests) == 2 * (1 + 2 * 2)
    names = {(r.spec.name, r.config.regularisers[0]["params"]["value"]) for r in requests}
    assert ("mnist", 1e-3) in names and ("mnistv20-3-0-1", 1e-4) in names
    # The same options as rsc train's give the same run (folder), the study's training seed 0.
    option_config = build_train_config(**{**RECIPE_DEFAULTS, "arch": "MLP", "batch_size": 16,
                                          "epochs": 2, "weight_decay": 1e-4})
    spec = SpuriousSpec.build("mnist", "v8", 3, 0, 1)
    assert any(find_run(r.spec, r.config) == find_run(spec, option_config) for r in requests)
    assert {r.config.seed for r in requests} == {0}


def test_recipe_and_list_valued_axes(tmp_path):
    text = ('dataset = "mnist"\nepochs = 3\nmilestones = [[1, 2], [2]]\n'
            'regularisers = [[], ["grad-clip:value=0.1", "weight-decay:value=0.01"]]\n'
            'recipe = [{optimizer = "adam"}, {optimizer = "sgd", momentum = 0.9}]\n')
    configs = [r.config for r in parse_grid(text).requests()]
    assert len(configs) == 8
    assert {(c.optimizer, c.momentum) for c in configs} == {("adam", 0.0), ("sgd", 0.9)}
    assert {c.milestones for c in configs} == {(1, 2), (2,)}
    assert {len(c.regularisers) for c in configs} == {0, 2}


def test_presets_follow_the_protocol_and_can_be_narrowed():
    score = parse_grid(to_toml(preset_grid("score-vs-n", "mnist")), "p.toml")
    assert score.axes["pattern"].values == tuple(STUDY_PATTERNS)
    assert len(score.requests()) == 1 + 7 * 7 * 5  # n > 0 x patterns x seeds 0-4, + clean
    score.override("n", [0, 1, 3, 10, 100], "--n")
    score.override("seed", "0-2", "--seeds")
    requests = score.requests()
    assert len(requests) == 1 + 7 * 4 * 3
    assert {(r.config.arch, r.config.optimizer, r.config.lr, r.config.epochs, r.config.seed)
            for r in requests} == {("LargeMLP", "adam", 0.01, 70, 0)}
    cifar = parse_grid(to_toml(preset_grid("score-vs-n", "cifar10"))).requests()[0].config
    assert (cifar.arch, cifar.aug, cifar.optimizer, cifar.momentum) == \
        ("altResNet20Norm02", "aug01", "sgd", 0.9)
    mitigations = parse_grid(to_toml(preset_grid("mitigations", "mnist"))).requests()
    levels = {tuple((g["name"], *g["params"].values()) for g in r.config.regularisers)
              for r in mitigations}
    assert (("weight-decay", 0.05),) in levels and (("input-noise", 5.0),) in levels
    assert (("grad-clip", 1e-5),) in levels and () in levels and len(levels) == 19
    optimizers = parse_grid(to_toml(preset_grid("optimizers", "fashion"))).requests()
    assert {(r.config.optimizer, r.config.momentum) for r in optimizers} == \
        {("adam", 0.0), ("sgd", 0.9)} and {r.spec.n for r in optimizers} == {0, 3, 10}
    archs = parse_grid(to_toml(preset_grid("architectures", "mnist"))).requests()
    assert {r.config.arch for r in archs} == {"MLP", "LargeMLP", "LargeMLPv2", "CNN002"}
    assert set(PRESETS) == {"score-vs-n", "optimizers", "architectures", "mitigations"}


def test_show_grid_prints_a_grid_file_that_reads_back(tmp_path):
    result = rsc("sweep", "--preset", "score-vs-n", "--dataset", "fashion", "--n", "0,3",
                 "--seeds", "0-2", "--set", "arch=MLP", "--show-grid")
    assert result.exit_code == 0, result.output
    assert 'n = [0, 3]' in result.output and 'arch = "MLP"' in result.output
    path = tmp_path / "g.toml"
    path.write_text(result.output)
    requests = load_grid(path).requests()
    assert len(requests) == 1 + 7 * 3 and requests[0].spec.dataset == "fashion"


def test_dry_run_lists_every_run_and_its_state_and_trains_nothing(root, tmp_path,
                                                                  monkeypatch):
    runs = tmp_path / "runs"
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    requests = load_grid(grid).requests()
    train_runs(requests[:1], runs_dir=runs, data_dir=root, progress=False, device="cpu")
    interrupt_after_first_epoch(requests[1], runs, root, monkeypatch)
    before = sorted(p.name for p in runs.rglob("*"))
    result = rsc("sweep", str(grid), "--dry-run", "--runs-dir", str(runs), "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [r["state"] for r in listed] == ["done", "interrupted", "new", "new", "new"]
    assert listed[1]["epoch"] == 1 and listed[0]["spec"] == "mnist"
    table = rsc("sweep", str(grid), "--dry-run", "--runs-dir", str(runs))
    assert "resume from epoch 1" in table.output
    assert "5 runs, 1 done, 1 interrupted (resume), 3 to start" in table.output
    assert sorted(p.name for p in runs.rglob("*")) == before  # nothing written
    empty = rsc("sweep", str(grid), "--dry-run", "--runs-dir", str(tmp_path / "none"))
    assert empty.exit_code == 0 and not (tmp_path / "none").exists()


def interrupt_after_first_epoch(request, runs: Path, root: Path, monkeypatch) -> None:
    """Train ``request`` alone and stop it right after its first checkpoint."""
    real_log = Run.log

    def log_then_stop(self, line):
        real_log(self, line)
        if '"epoch": 1' in line:
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "log", log_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_runs([request], runs_dir=runs, data_dir=root, progress=False, device="cpu")
    monkeypatch.setattr(Run, "log", real_log)


def test_a_sweep_skips_done_runs_resumes_interrupted_ones_and_trains_the_rest(
        root, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    requests = load_grid(grid).requests()
    train_runs(requests[:1], runs_dir=runs, data_dir=root, progress=False, device="cpu")
    interrupt_after_first_epoch(requests[1], runs, root, monkeypatch)
    result = rsc("sweep", str(grid), "--runs-dir", str(runs), "--data-dir", str(root),
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output[result.output.index("["):])
    assert [r["state"] for r in reports] == ["reused", "resumed", "trained", "trained",
                                             "trained"]
    assert reports[1]["resumed_from"] == 1
    assert all(plan.state == "done" for plan in plan_sweep(requests, runs))
    [record] = (runs / ".sweeps").glob("*.json")
    assert json.loads(record.read_text())["failed"] == 0
    # With the progress display (the default), a second sweep reuses everything.
    again = rsc("sweep", str(grid), "--runs-dir", str(runs), "--data-dir", str(root))
    assert again.exit_code == 0, again.output
    assert "5 runs in" in again.output and "5 reused" in again.output


def test_failed_runs_are_recorded_the_sweep_goes_on_and_the_exit_names_them(root, tmp_path):
    runs = tmp_path / "runs"
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.replace('dataset = "mnist"', 'dataset = ["fashion", "mnist"]')
                    .replace('n = [0, 3]', 'n = 3').replace('"0-1"', '0')
                    .replace('["v8", "v20"]', '"v8"'))
    result = rsc("sweep", str(grid), "--runs-dir", str(runs), "--data-dir", str(root))
    assert result.exit_code == 2
    # not a terminal: instead of the live display, one progress line per finished job
    assert re.search(r"^runs 2/2 ended \(1 done, 1 failed, 0 running\), \d+ min so far$",
                     result.output, re.M), result.output
    error = result.output.strip().splitlines()[-1]
    assert re.match(r"Error: 1 of 2 runs failed: fashionv8-3-0-0_\S+: dataset 'fashion'", error)
    assert str(runs / ".sweeps") in error
    [record] = (runs / ".sweeps").glob("*.json")
    data = json.loads(record.read_text())
    states = {r["spec"]: (r["state"], r["error"]) for r in data["runs"]}
    assert states["mnistv8-3-0-0"] == ("trained", None)
    assert states["fashionv8-3-0-0"][0] == "failed" and "fashion" in states["fashionv8-3-0-0"][1]
    assert data["failed"] == 1


def test_command_line_narrowing_and_option_errors(tmp_path):
    runs = str(tmp_path / "runs")
    result = rsc("sweep", "--preset", "score-vs-n", "--dataset", "mnist,fashion", "--patterns",
                 "v8", "--n", "0,3", "--seeds", "0-2", "--epochs", "5", "--dry-run", "--json",
                 "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert len(listed) == 2 * (1 + 3) and all("-e5-" in r["run"] for r in listed)
    for args, message in (
            ((), "give a grid file or --preset NAME"),
            (("--preset", "score-vs-n", "--n", "0,x"), "bad n values"),
            (("--preset", "score-vs-n", "--set", "lrr=0.1"), "--set lrr: unknown key 'lrr'; "
                                                             "did you mean lr?"),
            (("--preset", "score-vs-n", "--set", "lr"), "expected KEY=VALUE"),
            (("--preset", "score-vs-n", "--dataset", "mnistt"), "unknown dataset 'mnistt'"),
            (("--preset", "score-vs-n", "--device", "tpu"), "unknown device 'tpu'"),
            (("missing.toml",), "grid file missing.toml does not exist")):
        result = rsc("sweep", *args, "--dry-run", "--runs-dir", runs)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert result.output.count("\n") == 1


def test_rsc_train_options_and_grid_keys_share_one_mapping():
    from rsc_cli.train_options import split_train_kwargs
    from rsc_core.sweeps.grid import RECIPE_KEYS

    train, other = split_train_kwargs({**RECIPE_DEFAULTS, "spec": None})
    assert set(train) == set(RECIPE_DEFAULTS) and other == {"spec": None}
    assert set(RECIPE_KEYS.values()) == set(RECIPE_DEFAULTS)
    help_text = rsc("train", "--help").output
    for key in RECIPE_KEYS:  # each grid key is an rsc train option (-r is --regulariser)
        option = "regulariser" if key == "regularisers" else key
        assert f"--{option.replace('_', '-')} " in help_text, key
    with pytest.raises(RscError):
        parse_grid('dataset = "mnist"\nregularisers = ["bogus"]\n').requests()
    assert sys.modules["rsc_core.training.recipe"].build_train_config is build_train_config


def test_the_python_example_in_the_docs_runs_as_a_script(root, tmp_path):
    """As a user runs it: a file, `python sweep.py`, with the processes executor it names
    (whose workers import the script: without its __main__ guard it failed)."""
    text = (Path(__file__).parent.parent / "docs" / "sweeps.md").read_text()
    code = re.search(r"## From Python\n\n```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "sweep.py").write_text(code)
    (tmp_path / "grid.toml").write_text(GRID.replace("[0, 3]", "3").replace('"0-1"', "0"))
    result = subprocess.run([sys.executable, "sweep.py"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**ONE_THREAD_ENV,
                                                         "RSC_DATA_DIR": str(root)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"  # no run failed
    assert len(list((tmp_path / "runs").glob("*/metrics.json"))) == 2


def test_every_bad_key_of_a_grid_is_reported_in_one_call_as_the_docs_show(tmp_path,
                                                                           monkeypatch):
    text = (Path(__file__).parent.parent / "docs" / "sweeps.md").read_text()
    grid = re.search(r"```toml\n# grids/typos.toml\n(.*?)```", text, re.S).group(1)
    shown = re.search(r"\$ rsc sweep grids/typos.toml --dry-run\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "typos.toml").write_text(f"# grids/typos.toml\n{grid}")
    result = rsc("sweep", "grids/typos.toml", "--dry-run")
    assert result.exit_code == 2
    assert result.output == shown  # three errors, one line each, from one call
    combos = 'dataset = "mnist"\nloss = ["ce", "mse"]\nlr = [0.1, 0.01]\n' \
             'regularisers = ["label-smoothing:eps=0.1"]\n'
    (tmp_path / "mse.toml").write_text(combos)
    result = rsc("sweep", "mse.toml", "--dry-run")
    lines = result.output.splitlines()
    assert result.exit_code == 2 and len(lines) == 2, result.output  # mse with both lrs
    assert all(line.startswith("Error: mse.toml lines 2, 3, 4: the recipe loss = 'mse'")
               for line in lines)


def test_a_huge_grid_is_refused_before_it_is_expanded(tmp_path):
    """10^8 runs hung --dry-run (killed after 120 s, 6 GB); the size is the product of the
    axes' lengths, checked before a single run is built."""
    grid = tmp_path / "huge.toml"
    grid.write_text('dataset = "mnist"\npattern = "v8"\nn = 3\nseed = "0-9999"\n'
                    'train_seed = "0-9999"\nlr = [0.1, 0.01]\n')
    result = rsc("sweep", str(grid), "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"{grid} line 4: the grid has 200,000,000 combinations, more than the 100,000" \
        in result.output and "largest axis is seed (10,000 values)" in result.output
    assert not (tmp_path / "runs").exists()


def test_the_log_progress_line_estimates_the_time_left_at_the_pace_so_far():
    from rsc_cli.sweep_commands import _progress_line

    assert _progress_line(2, 0, 8, "2 done, 0 failed, 6 running", 600.0) == \
        "runs 2/8 ended (2 done, 0 failed, 6 running), 10 min so far, about 30 min left"
    # failed runs end the sweep as surely as done ones, but are never counted as done
    assert _progress_line(6, 2, 8, "6 done, 2 failed, 0 running", 900.0) == \
        "runs 8/8 ended (6 done, 2 failed, 0 running), 15 min so far"
