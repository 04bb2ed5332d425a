"""The results index (rsc_core.results_index, `rsc runs`): rows follow the run folders (added,
changed, removed, index deleted or corrupt), --where is parsed safely, record_run never fails
a run, and several processes may update the index at once. Run folders are written directly
(config.json, metrics.json, a model file) so these tests train nothing."""
from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from rsc_cli.main import cli
from rsc_core.errors import ConfigError, RscError
from rsc_core.runs.index import (COLUMNS, INDEX_NAME, INDEX_VERSION, ResultsIndex, get_run,
    list_runs, record_run, where_sql)
from rsc_core.runs.folder import run_config
from rsc_core.runs.training import find_run
from rsc_core.data.spec import SpuriousSpec
from rsc_core.training.trainer import TrainConfig


def fake_run(root: Path, spec: str | SpuriousSpec, finished: bool = True, score: float = 0.5,
             subset=None, kept_spurious=None, **train) -> Path:
    """A run folder as rsc writes it, without training: config.json, and when finished
    metrics.json and a (dummy) model.pt."""
    from rsc_core.data.spec import parse_spec

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    config = TrainConfig(**{"epochs": 2, **train})
    folder = find_run(spec, config, root, subset).path
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(run_config(spec, config, subset)))
    if finished:
        (folder / "model.pt").write_bytes(b"weights")
        metrics = {"status": "finished", "epochs": config.epochs, "clean_accuracy": 0.9,
                   "train_accuracy": 0.95, "finished_at": "2026-11-29T10:00:00",
                   "score": None if spec.is_clean else {"score": score,
                                                         "patterned_accuracy": 0.8}}
        if kept_spurious is not None:  # the planted rows it trained on, as finish_run writes
            metrics["spurious_indices"] = list(kept_spurious)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    else:
        (folder / "checkpoint.pt").write_bytes(b"epoch")
        (folder / "log.txt").write_text('2026-11-29T10:00:00 start on cpu (pid 1)\n'
                                        '2026-11-29T10:00:01 {"epoch": 1, "lr": 0.01}\n')
    return folder


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "runs"
    fake_run(root, "mnist")
    for seed in (0, 1):
        fake_run(root, f"mnistv8-3-0-{seed}", score=0.1 + seed)
        fake_run(root, f"mnistv20-3-0-{seed}", score=0.9)
    fake_run(root, "mnistv8-3-0-0", lr=0.1)
    fake_run(root, "fashionv8-10-1-0", finished=False)
    return root


def names(rows) -> set[str]:
    return {r["spec"] + ("/lr" + str(r["lr"]) if r["lr"] != 0.01 else "") for r in rows}


def test_rows_hold_config_metrics_status_and_path(root):
    rows = list_runs(runs_dir=root)
    assert (root / INDEX_NAME).is_file()
    assert len(rows) == 7 and list(rows[0]) == list(COLUMNS)
    assert all(r["subset"] is None and r["removal"] is None for r in rows)
    by_spec = {(r["spec"], r["lr"]): r for r in rows}
    v8 = by_spec[("mnistv8-3-0-1", 0.01)]
    assert (v8["dataset"], v8["pattern"], v8["n"], v8["target"], v8["dataset_seed"],
            v8["train_seed"], v8["status"], v8["score"], v8["clean_accuracy"],
            v8["epochs_done"]) == ("mnist", "v8", 3, 0, 1, 0, "finished", 1.1, 0.9, 2)
    assert Path(v8["path"]).is_dir() and v8["recipe"] == "ce-tor-LargeMLP adam lr0.01 b128 e2"
    # seeds share a recipe_id; another learning rate does not
    assert v8["recipe_id"] == by_spec[("mnistv8-3-0-0", 0.01)]["recipe_id"]
    assert v8["recipe_id"] != by_spec[("mnistv8-3-0-0", 0.1)]["recipe_id"]
    clean = by_spec[("mnist", 0.01)]
    assert clean["pattern"] is None and clean["score"] is None and clean["n"] == 0
    unfinished = by_spec[("fashionv8-10-1-0", 0.01)]
    assert unfinished["status"] == "interrupted" and unfinished["epochs_done"] == 1
    assert unfinished["clean_accuracy"] is None


def test_runs_on_part_of_the_training_set_have_their_own_recipe(root):
    """``--exclude spurious`` removes other rows for every dataset seed but is one experiment;
    explicit rows are an experiment of their own, never pooled with it (issue 26)."""
    from rsc_core.data.subsets import TrainSubset

    for seed, rows in ((0, (4, 9, 17)), (1, (2, 5, 30))):  # each seed's planted rows
        fake_run(root, f"mnistv8-3-0-{seed}", subset=TrainSubset("exclude", rows),
                 kept_spurious=[])
    rows = list_runs("subset != null", root)
    assert len(rows) == 2 and all(r["subset"].startswith("minus3-") for r in rows)
    assert rows[0]["subset"] != rows[1]["subset"]  # the rows differ with the seed...
    assert rows[0]["recipe_id"] == rows[1]["recipe_id"]  # ...the experiment does not
    full = list_runs("pattern=v8 and subset=null and lr=0.01 and dataset=mnist", root)
    assert {r["recipe_id"] for r in full} != {rows[0]["recipe_id"]}
    assert rows[0]["recipe"].endswith(" minus-spurious")
    # the clean baseline of runs without their planted rows is the whole-set clean run
    clean = list_runs("pattern=null and lr=0.01", root)[0]
    assert rows[0]["baseline_id"] == clean["recipe_id"]


def test_excluding_explicit_rows_is_not_excluding_the_spurious_rows(root):
    """Issue 26: ``--exclude spurious`` (seed 0) and ``--exclude 1,2,3`` (seed 1) have
    subsets of one size but are different experiments; explicit rows kept every planted row."""
    from rsc_core.data.subsets import TrainSubset

    fake_run(root, "mnistv8-3-0-0", subset=TrainSubset("exclude", (4, 9, 17)), kept_spurious=[])
    fake_run(root, "mnistv8-3-0-1", subset=TrainSubset("exclude", (1, 2, 3)),
             kept_spurious=[5, 8, 30])
    fake_run(root, "mnistv8-3-0-2", subset=TrainSubset("exclude", (1, 2, 3)),
             kept_spurious=[6, 7, 31])
    rows = {r["dataset_seed"]: r for r in list_runs("subset != null", root)}
    assert rows[0]["recipe_id"] != rows[1]["recipe_id"]
    assert rows[1]["recipe_id"] == rows[2]["recipe_id"]  # the same explicit rows pool
    assert rows[0]["recipe"] != rows[1]["recipe"]
    assert rows[1]["recipe"].endswith(" " + TrainSubset("exclude", (1, 2, 3)).tag())
    # a kept-rows subset (an rsc mia target) is identified by its rows, not its size
    fake_run(root, "mnistv8-3-0-3", subset=TrainSubset("keep", (1, 2, 3, 4)), kept_spurious=[])
    fake_run(root, "mnistv8-3-0-4", subset=TrainSubset("keep", (5, 6, 7, 8)), kept_spurious=[])
    kept = list_runs("subset ~ 'keep*'", root)
    assert len({r["recipe_id"] for r in kept}) == 2


def test_removal_runs_have_their_own_recipe(root):
    source = next(r for r in list_runs("spec=mnistv8-3-0-0 and lr=0.01", root))
    for method, tag in (("retrain", ""), ("group-influence", "lissa-reference")):
        folder = root / f"{source['name']}_rm-{method}"
        folder.mkdir()
        config = json.loads((Path(source["path"]) / "config.json").read_text())
        config["removal"] = {"method": method, "options": {"steps": 3}, "forget": [4],
                             "tag": tag, "source": {"name": source["name"]}}
        (folder / "config.json").write_text(json.dumps(config))
    rows = list_runs("removal != null", root)
    assert {r["removal"] for r in rows} == {"retrain", "group-influence-lissa-reference"}
    assert {r["removal_of"] for r in rows} == {source["name"]}
    assert len({r["recipe_id"] for r in rows} | {source["recipe_id"]}) == 3
    assert any(" rm-retrain" in r["recipe"] for r in rows)


def test_index_follows_the_folders(root):
    index = ResultsIndex(root)
    assert len(index.rows()) == 7
    new = fake_run(root, "mnistv8-3-0-2")
    assert any(r["name"] == new.name for r in index.rows())  # a new folder is added
    import shutil
    shutil.rmtree(new)
    assert all(r["name"] != new.name for r in index.rows())  # a removed one goes
    # a run that finishes after it was indexed (metrics.json appears) is re-read
    unfinished = next(r for r in index.rows() if r["status"] != "finished")
    folder = Path(unfinished["path"])
    (folder / "model.pt").write_bytes(b"w")
    (folder / "metrics.json").write_text(json.dumps({"status": "finished", "epochs": 2,
                                                     "clean_accuracy": 0.5, "score": None}))
    assert index.row(folder.name)["status"] == "finished"
    # metrics.json rewritten (rsc train --force) with the same size: the mtime differs
    v20 = index.row(next(r["name"] for r in index.rows() if r["pattern"] == "v20"))
    metrics = Path(v20["path"]) / "metrics.json"
    data = json.loads(metrics.read_text())
    data["score"]["score"] = 0.7  # same length as 0.9
    metrics.write_text(json.dumps(data))
    os.utime(metrics, ns=(metrics.stat().st_atime_ns, metrics.stat().st_mtime_ns + 10**9))
    assert index.row(v20["name"])["score"] == 0.7


def test_missing_corrupt_or_old_index_is_rebuilt(root):
    assert len(list_runs(runs_dir=root)) == 7
    (root / INDEX_NAME).unlink()
    assert len(list_runs(runs_dir=root)) == 7
    for suffix in ("-wal", "-shm"):
        Path(f"{root / INDEX_NAME}{suffix}").unlink(missing_ok=True)
    (root / INDEX_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        assert len(list_runs(runs_dir=root)) == 7
    with sqlite3.connect(root / INDEX_NAME) as conn:
        conn.execute("DELETE FROM runs")
        conn.execute(f"PRAGMA user_version={INDEX_VERSION + 1}")
    assert len(list_runs(runs_dir=root)) == 7  # another version: rebuilt from scratch


def test_unwritable_index_falls_back_to_memory(root):
    (root / INDEX_NAME).mkdir()  # sqlite cannot open a folder as its database
    with pytest.warns(UserWarning, match="in-memory index"):
        assert len(list_runs(runs_dir=root)) == 7


def test_unreadable_folder_is_a_row_not_an_error(root):
    broken = fake_run(root, "mnistv8-3-0-7")
    (broken / "config.json").write_text("{ not json")
    row = get_run(broken.name, root)
    assert row["status"] == "unreadable" and "corrupt" in row["error"]


def test_running_status_comes_from_the_lock_owner(root):
    row = next(r for r in list_runs(runs_dir=root) if r["status"] == "interrupted")
    owner = root / ".locks" / f"{row['name']}.owner"
    owner.parent.mkdir()
    owner.write_text(f"process {os.getpid()} on {os.uname().nodename} since now\n")
    assert get_run(row["name"], root)["status"] == "running"
    dead = multiprocessing.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    owner.write_text(f"process {dead.pid} on {os.uname().nodename} since now\n")
    assert get_run(row["name"], root)["status"] == "interrupted"  # its owner has died
    with open(Path(row["path"]) / "log.txt", "a") as log:
        log.write("2026-11-29T10:00:02 sweep: failed: loss became NaN at epoch 2\n")
    failed = get_run(row["name"], root)
    assert failed["status"] == "failed" and failed["error"] == "loss became NaN at epoch 2"
    assert failed["epochs_done"] == 1


@pytest.mark.parametrize("expr, expected", [
    ("pattern=v8", {"mnistv8-3-0-0", "mnistv8-3-0-1", "mnistv8-3-0-0/lr0.1",
                    "fashionv8-10-1-0"}),
    ("pattern=S3 and lr<0.05 and dataset_seed in (1, 5)", {"mnistv8-3-0-1"}),
    ("pattern = null", {"mnist"}),
    ("not (pattern=v8 or pattern=null)", {"mnistv20-3-0-0", "mnistv20-3-0-1"}),
    ("spec~'mnistv*-3-0-0' and status=finished and lr=0.01",
     {"mnistv8-3-0-0", "mnistv20-3-0-0"}),
    ("n>=10 or score>1", {"fashionv8-10-1-0", "mnistv8-3-0-1"}),
    ("score != null and clean_accuracy > 0.95", set()),
])
def test_where_filters(root, expr, expected):
    assert names(list_runs(expr, root)) == expected


@pytest.mark.parametrize("expr, message", [
    ("patern=v8", "unknown column 'patern' in --where; columns: name, status, dataset"),
    ("n>=three", "n takes whole numbers"),
    ("pattern=v8 and", "expected a column name"),
    ("(n=3", "expected )"),
    ("n=3 ; drop table runs", "unexpected ';'"),
    ("name='x' or 1=1", "unknown column '1'"),
    ("lr<nan", "finite numbers"),
    ("n<null", "null can only be compared with = or !="),
    ("", "it is empty"),
])
def test_bad_where_is_one_clear_error(root, expr, message):
    with pytest.raises(ConfigError) as info:
        list_runs(expr, root)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_where_values_are_parameters_never_sql(root):
    sql, params = where_sql("name=\"x'; DROP TABLE runs; --\" or spec~'*'")
    assert "DROP" not in sql and params == ["x'; DROP TABLE runs; --", "*"]
    assert len(list_runs("name=\"x'; DROP TABLE runs; --\"", root)) == 0
    assert len(list_runs(None, root)) == 7  # the table is still there


def test_show_by_name_prefix_or_path(root):
    target = next(r for r in list_runs(runs_dir=root) if r["spec"] == "mnistv20-3-0-1")
    assert get_run(target["name"], root) == target
    assert get_run("mnistv20-3-0-1", root)["name"] == target["name"]
    assert get_run(target["path"], root)["name"] == target["name"]
    with pytest.raises(RscError, match="matches 2 runs"):
        get_run("mnistv20-3", root)
    with pytest.raises(RscError, match="no run named"):
        get_run("cifar10", root)


def test_record_run_updates_one_row_and_never_raises(root):
    list_runs(runs_dir=root)
    folder = fake_run(root, "mnistv8-3-0-3", score=0.25)
    assert record_run(folder) is True
    with sqlite3.connect(root / INDEX_NAME) as conn:
        score, = conn.execute("SELECT score FROM runs WHERE name = ?", (folder.name,)).fetchone()
    assert score == 0.25
    other = fake_run(root / "elsewhere", "mnistv8-3-0-4")
    (other.parent / INDEX_NAME).mkdir()  # an index that cannot be opened
    with pytest.warns(UserWarning, match="could not update the results index"):
        assert record_run(other) is False


def _record_many(args) -> int:
    root, names = args
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed update would show here
        for name in names:
            assert record_run(Path(root) / name)
            assert list_runs(runs_dir=root)
    return len(names)


def test_concurrent_updates_from_several_processes(tmp_path):
    root = tmp_path / "runs"
    folders = [fake_run(root, f"mnistv8-3-0-{seed}") for seed in range(12)]
    chunks = [(str(root), [f.name for f in folders[i::4]]) for i in range(4)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        assert sum(pool.map(_record_many, chunks)) == 12
    with sqlite3.connect(root / INDEX_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 12
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def rsc(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_cli_list_json_csv_and_show(root):
    result = rsc("runs", "list", "--runs-dir", str(root), "--where", "pattern=r3", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["spec"] for r in rows} == {"mnistv20-3-0-0", "mnistv20-3-0-1"}
    assert rows == list_runs("pattern=v20", root)  # the library API returns the same rows
    result = rsc("runs", "list", "--runs-dir", str(root), "--csv", "--columns", "spec,score",
                 "--where", "pattern=v20")
    assert result.output.splitlines() == ["spec,score", "mnistv20-3-0-0,0.9",
                                          "mnistv20-3-0-1,0.9"]
    table = rsc("runs", "list", "--runs-dir", str(root))
    assert table.exit_code == 0 and "7 run(s)" in table.output and "interrupted" in table.output
    show = rsc("runs", "show", "mnistv20-3-0-1", "--runs-dir", str(root), "--json")
    assert json.loads(show.output)["spec"] == "mnistv20-3-0-1"


@pytest.mark.parametrize("args, message", [
    (("list", "--where", "colour=red"), "unknown column 'colour' in --where; columns:"),
    (("list", "--columns", "spec,colour"), "unknown column(s) colour in --columns"),
    (("list", "--json", "--csv"), "give --json or --csv, not both"),
    (("show", "nothing-like-this"), "no run named"),
])
def test_cli_errors_are_one_line(root, args, message):
    result = rsc("runs", *args, "--runs-dir", str(root))
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and message in result.output
    assert result.output.count("\n") == 1


def test_cli_missing_runs_root(tmp_path):
    result = rsc("runs", "list", "--runs-dir", str(tmp_path / "none"))
    assert result.exit_code == 2 and "does not exist" in result.output


def test_docs_python_example_runs(root, monkeypatch):
    import re

    monkeypatch.chdir(root.parent)  # the example reads runs_dir="runs"
    text = (Path(__file__).parent.parent / "docs" / "reports.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/reports.md", "exec"), namespace)
    assert namespace["row"]["spec"] == "mnistv20-3-0-1" and len(namespace["rows"]) == 2


def test_record_run_at_the_end_of_finish_run(tiny_data, tmp_path, monkeypatch):
    """What the one-line hook in runs.finish_run does: the finished run's row is written
    while its lock is still held, and reads back as finished."""
    from rsc_core.runs import training as runs_module
    from rsc_core.runs.training import train_run

    finish = runs_module.finish_run

    def finish_and_record(run, *args, **kwargs):
        finish(run, *args, **kwargs)
        assert record_run(run)

    monkeypatch.setattr(runs_module, "finish_run", finish_and_record)
    label = int(tiny_data["mnist"].train.labels[0])
    run = train_run(SpuriousSpec.build("mnist", "v20", 1, (label,), 0), TrainConfig(epochs=1),
                    runs_dir=tmp_path / "runs", data_dir=tiny_data.root, progress=False,
                    device="cpu").run
    with sqlite3.connect(tmp_path / "runs" / INDEX_NAME) as conn:
        status, score = conn.execute("SELECT status, score FROM runs WHERE name = ?",
                                     (run.name,)).fetchone()
    assert status == "finished" and score == run.metrics["score"]["score"]
