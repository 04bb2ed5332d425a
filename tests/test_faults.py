"""Faults that must leave neither a wrong number nor a stuck process (issue 25, part A): an
interrupted attack, groups that share runs, a lost scheduler, sweeps started together, huge
grids, a locked index, a deleted run folder, a killed parent, a killed removal, a file in the
way. Each test fails on the code before its fix."""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import ONE_THREAD_ENV
from test_privacy import base_args, mem_data, rsc  # noqa: F401 - mem_data is a fixture
from test_removal import env, remove, world  # noqa: F401 - env, world are fixtures

from rsc_cli.main import cli
from rsc_core.runs import groups as group_runs
from rsc_core.runs import index as results_index
from rsc_core.runs.checkpoints import read_checkpoint
from rsc_core.sweeps.executors import Executor, JobResult
from rsc_core.runs.groups import RunRequest, train_runs
from rsc_core.removal.runs import remove_run
from rsc_core.runs.index import list_runs
from rsc_core.runs.locks import RunLock
from rsc_core.runs.folder import Run
from rsc_core.runs.training import find_run
from rsc_core.data.spec import SpuriousSpec
from rsc_core.sweeps.sweep import (FINISHED, RunReport, SweepOutcome, make_jobs, plan_sweep,
    run_sweep, write_sweep_record)
from rsc_core.training.trainer import TrainConfig

RECIPE = TrainConfig(arch="MLP", epochs=1, batch_size=2)


def tiny_requests(tiny_data, seeds=(0, 1)) -> list[RunRequest]:
    target = int(tiny_data["mnist"].train.labels[0])
    return [RunRequest(SpuriousSpec.build("mnist", "v8", 1, target, seed), RECIPE)
            for seed in seeds]


# --- groups that share runs take their locks in one order ---------------------------------------

def test_groups_asking_for_shared_runs_in_opposite_orders_never_deadlock(tiny_data, tmp_path,
                                                                         monkeypatch):
    """The issue's case: `rsc train --spec a --spec b` and `--spec b --spec a` while a third
    process holds b's lock. Both must finish once b is free; each group takes its locks in
    one global order, so neither can hold one lock while waiting for the other's."""
    runs = tmp_path / "runs"
    a, b = tiny_requests(tiny_data)
    path_b = find_run(b.spec, b.config, runs).path
    taken: dict[str, list[str]] = {}
    real_enter = RunLock.__enter__

    def recording_enter(self):
        taken.setdefault(threading.current_thread().name, []).append(self.run_path.name)
        return real_enter(self)

    monkeypatch.setattr(RunLock, "__enter__", recording_enter)
    waiting = threading.Semaphore(0)
    results: dict[str, list] = {}

    def train(name: str, requests: list[RunRequest]) -> None:
        results[name] = train_runs(requests, runs_dir=runs, data_dir=tiny_data.root,
                                   progress=False, device="cpu",
                                   on_wait=lambda line: waiting.release())

    holder = RunLock(path_b)
    real_enter(holder)
    threads = [threading.Thread(target=train, args=(name, order), name=name, daemon=True)
               for name, order in (("ab", [a, b]), ("ba", [b, a]))]
    try:
        for thread in threads:
            thread.start()
            assert waiting.acquire(timeout=60)  # each waits for a lock before the next starts
    finally:
        holder.__exit__(None, None, None)
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "the two groups deadlocked"
    assert taken["ab"][0] == taken["ba"][0]  # one global order
    outcomes = [r.outcome for name in ("ab", "ba") for r in results[name]]
    assert all(outcome is not None for outcome in outcomes)
    assert sorted(outcome.reused for outcome in outcomes) == [False, False, True, True]
    assert group_runs.lock_order([find_run(r.spec, r.config, runs) for r in (b, a)]) == \
        group_runs.lock_order([find_run(r.spec, r.config, runs) for r in (a, b)])


# --- an interrupted attack reports exactly the uninterrupted result -------------------------------

def test_a_resumed_attack_reports_exactly_the_uninterrupted_result(mem_data, tmp_path,
                                                                   monkeypatch):
    """Ctrl-C while a group saves its epoch's checkpoints (here: right after the first
    member's): the members must still all save that epoch, so that they resume in the same
    group. A member left one epoch behind trained on alone, and a group's rounding depends on
    its members: the issue's resumed `rsc mia` reported other numbers."""
    def mia(name: str):
        return rsc(*base_args(mem_data, tmp_path / name, "--arch", "LargeMLP", "--epochs", "2",
                              "--batch-size", "16", "--spec", "memmnistv20-1-0-0", "--attack",
                              "shadow-lr", "--attack", "lira-offline", "--shadows", "4",
                              "--json", "--output", str(tmp_path / name / "result")))

    plain = mia("plain")
    assert plain.exit_code == 0, plain.output
    real_save = group_runs.save_checkpoint_states

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        monkeypatch.setattr(group_runs, "save_checkpoint_states", real_save)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, after the first member's checkpoint

    monkeypatch.setattr(group_runs, "save_checkpoint_states", save_then_interrupt)
    # A shell starts a background job (`cmd &`, nohup) with SIGINT ignored, and Python then
    # installs no Ctrl-C handler: the kill above would be dropped and the run go on. Give
    # this process Python's own handler, as in a terminal, whatever started the suite.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert mia("resumed").exit_code == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    epochs = [read_checkpoint(path)["epoch"]
              for path in (tmp_path / "resumed" / "runs").glob("*/checkpoint.pt")]
    assert epochs == [1] * 6  # every member (target, pool shadow, 4 halves) saved epoch 1
    resumed = mia("resumed")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output)["attacks"] == json.loads(plain.output)["attacks"]
    for name in ("scores.csv", "split.json"):
        assert (tmp_path / "resumed" / "result" / name).read_bytes() == \
            (tmp_path / "plain" / "result" / name).read_bytes()
    for folder in (tmp_path / "plain" / "runs").glob("*_keep*"):
        ours = Run(tmp_path / "resumed" / "runs" / folder.name).load_model().state_dict()
        for key, value in Run(folder).load_model().state_dict().items():
            assert torch.equal(ours[key], value), (folder.name, key)


# --- workers end with their sweep --------------------------------------------------------------

WORKER_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from executor_jobs import sleep_and_tell
from rsc_core import create
from rsc_core.executors import ExecutorSettings

if __name__ == "__main__":
    executor = create("executors", "processes", settings=ExecutorSettings(workers=1))
    executor.run_jobs(sleep_and_tell, [{pid_file!r}])
"""


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_the_workers_of_a_killed_sweep_stop(tmp_path):
    """SIGKILL the process that runs the processes executor: its worker, mid-job, must stop
    by itself (it used to train on, holding its runs' locks)."""
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "sweep.py"
    script.write_text(WORKER_SCRIPT.format(tests=str(Path(__file__).parent),
                                           pid_file=str(pid_file)))
    parent = subprocess.Popen([sys.executable, str(script)], env=ONE_THREAD_ENV)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None, "no worker started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        parent.kill()
        parent.wait(30)
        deadline = time.monotonic() + 30
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(worker), "the worker of a killed sweep is still running"
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)


# --- a sweep counts what the run folders say ----------------------------------------------------

class LostReports(Executor):
    """Runs the first job, never the others, and loses every report: a Dask client whose
    scheduler went away after one job's worker finished it and before the others ran."""

    name = "lost-reports"

    def map(self, fn, jobs):
        return [fn(job) for job in jobs]

    def run_jobs(self, fn, jobs, on_done=None):
        results = []
        for index, job in enumerate(jobs):
            if index == 0:
                fn(job)
            results.append(JobResult(error="lost the Dask scheduler"))
            if on_done is not None:
                on_done(index, results[-1])
        return results


def test_a_lost_scheduler_does_not_fail_the_runs_that_finished(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    planned = plan_sweep(tiny_requests(tiny_data), runs)
    jobs = make_jobs(planned, 1, runs_dir=runs, data_dir=tiny_data.root, device="cpu")
    outcome = run_sweep(planned, jobs, LostReports())
    assert [(r.state, r.error) for r in outcome.reports] == [
        (FINISHED, None), ("failed", "lost the Dask scheduler")]
    assert Run(planned[0].run.path).finished and not planned[1].run.path.exists()
    record = write_sweep_record(outcome, planned, name="g", executor="dask", runs_dir=runs,
                                started=datetime.datetime.now())
    assert json.loads(record.read_text())["failed"] == 1


def test_sweeps_started_in_the_same_second_keep_their_own_records(tiny_data, tmp_path):
    """8 sweeps named to the second left 7 records: each must keep its own."""
    runs = tmp_path / "runs"
    planned = plan_sweep(tiny_requests(tiny_data), runs)
    started = datetime.datetime(2026, 1, 2, 3, 4, 5)
    paths: list[Path] = []

    def record(number: int) -> None:
        outcome = SweepOutcome([RunReport(p.run.name, "failed", error=f"sweep {number}")
                                for p in planned])
        paths.append(write_sweep_record(outcome, planned, name="grid", executor="local",
                                        runs_dir=runs, started=started))

    threads = [threading.Thread(target=record, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(set(paths)) == 8 == len(list((runs / ".sweeps").iterdir()))
    errors = {json.loads(path.read_text())["runs"][0]["error"] for path in paths}
    assert errors == {f"sweep {number}" for number in range(8)}
    assert sorted(p.name for p in paths)[:2] == ["20260102T030405-grid-2.json",
                                                 "20260102T030405-grid-3.json"]


# --- a locked results index -------------------------------------------------------------------

def test_runs_list_reads_the_folders_when_the_index_stays_locked(tiny_data, tmp_path,
                                                                 monkeypatch):
    """Another process holds the index's write lock longer than the busy timeout: `rsc runs
    list` answered with a sqlite3.OperationalError traceback; it answers from the folders."""
    runs = tmp_path / "runs"
    [request] = tiny_requests(tiny_data, seeds=(0,))
    run = train_runs([request], runs_dir=runs, data_dir=tiny_data.root, progress=False,
                     device="cpu")[0].outcome.run
    started = runs / "started-run"  # an unfinished run: every query re-reads its folder
    started.mkdir()
    shutil.copy(run.path / "config.json", started / "config.json")
    assert len(list_runs(runs_dir=runs)) == 2  # the index exists
    monkeypatch.setattr(results_index, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(runs / results_index.INDEX_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.warns(UserWarning, match="stayed locked by another process for 0.2 s"):
            result = CliRunner().invoke(cli, ["runs", "list", "--runs-dir", str(runs),
                                              "--json"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {row["name"]: row["status"] for row in rows} == {run.name: "finished",
                                                            "started-run": "started"}
    assert (runs / results_index.INDEX_NAME).is_file()  # locked, not broken: kept


# --- a file where rsc keeps a folder --------------------------------------------------------------

def test_a_file_named_locks_in_the_runs_root_is_named_with_what_to_do(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / ".locks").write_text("not a folder")
    target = int(tiny_data["mnist"].train.labels[0])
    result = CliRunner().invoke(cli, ["train", "--spec", f"mnistv8-1-{target}-0", "--arch", "MLP",
                                      "--epochs", "1", "--quiet", "--data-dir",
                                      str(tiny_data.root), "--runs-dir", str(runs)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"{runs / '.locks'} is a file where rsc keeps a folder (File exists); move or " \
        "remove that file" in result.output


# --- a run folder deleted while it trains ---------------------------------------------------------

def delete_after_first_epoch(monkeypatch, victim: Path) -> None:
    """Delete ``victim`` once its log records epoch 1, as a user's `rm -r` between two
    epochs would."""
    real_log = Run.log

    def log(run: Run, line: str) -> None:
        real_log(run, line)
        if run.path == victim and '"epoch": 1' in line:
            shutil.rmtree(victim)

    monkeypatch.setattr(Run, "log", log)


def test_a_run_folder_deleted_while_it_trains_is_one_error_and_stays_gone(tiny_data, tmp_path,
                                                                          monkeypatch):
    """It used to exit 0 with a score, leaving a folder of checkpoint, model and metrics but
    no config.json."""
    runs = tmp_path / "runs"
    [request] = tiny_requests(tiny_data, seeds=(0,))
    two_epochs = TrainConfig(arch="MLP", epochs=2, batch_size=2)
    victim = find_run(request.spec, two_epochs, runs).path
    delete_after_first_epoch(monkeypatch, victim)
    result = CliRunner().invoke(cli, ["train", "--spec", request.spec.name, "--arch", "MLP",
                                      "--epochs", "2", "--batch-size", "2", "--quiet",
                                      "--data-dir", str(tiny_data.root), "--runs-dir",
                                      str(runs)])
    assert result.exit_code == 2, result.output
    assert f"run folder {victim} was deleted (or replaced) while it trained" in result.output
    assert result.output.count("\n") == 1  # the error alone: no score
    assert not victim.exists()


def test_a_group_member_whose_folder_is_deleted_fails_alone(tiny_data, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    two_epochs = TrainConfig(arch="MLP", epochs=2, batch_size=2)
    requests = [RunRequest(r.spec, two_epochs) for r in tiny_requests(tiny_data)]
    victim = find_run(requests[0].spec, two_epochs, runs).path
    delete_after_first_epoch(monkeypatch, victim)
    first, second = train_runs(requests, runs_dir=runs, data_dir=tiny_data.root,
                               progress=False, device="cpu")
    assert "was deleted (or replaced) while it trained" in str(first.error)
    assert not victim.exists()
    assert second.error is None and second.outcome.run.finished


# --- a killed rsc remove -------------------------------------------------------------------------

def test_what_a_killed_removal_left_is_cleaned_up_and_told(env):
    """Killed between its two renames, a removal left its finished result moved aside
    (.old-PID) and no result under the name; killed while writing, a temporary folder
    (.tmp-PID). The next removal puts the finished one back, removes the temporary one, and
    says both; it reuses the result instead of computing it again."""
    first = remove(env, "incremental-retraining", extra_epochs=1)
    target = first.run.path
    root = target.parent
    half = root / f".{target.name}.tmp-999999"
    shutil.copytree(target, half)
    (half / "metrics.json").unlink()
    target.replace(root / f".{target.name}.old-999998")
    heard: list[str] = []
    again = remove_run(env["source"].path, "incremental-retraining", "spurious",
                       {"extra_epochs": 1}, runs_dir=env["runs"], data_dir=env["data"],
                       device="cpu", on_wait=heard.append)
    assert again.reused and again.run.path == target and Run(target).finished
    assert [line.split(":")[0] for line in heard] == [f"put back {target.name}",
                                                      f"removed {half.name}"]
    assert not list(root.glob(f".{target.name}.*"))
