"""Executors: the same grid gives the same run folders and numbers on every executor; a
worker killed mid-run has its run finished elsewhere from its checkpoint; a missing extra or
an unknown executor is one line. Worker processes are real (spawned processes, a Dask
LocalCluster on loopback, submitit's local executor), so these tests take some seconds."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import rsc_core
from rsc_cli.main import cli
from rsc_core.errors import ConfigError, OptionalDependencyError, RscError
from rsc_core.sweeps.executors import (ExecutorSettings, JobResult, thread_environment,
    thread_share, worker_environment)
from rsc_core.sweeps.grid import parse_grid
from rsc_core.sweeps.sweep import make_jobs, plan_sweep, run_sweep

sys.path.insert(0, str(Path(__file__).parent))  # worker processes inherit sys.path
from executor_jobs import current_task_key, die_once, reciprocal  # noqa: E402

GRID = """
dataset = "mnist"
pattern = ["v8", "v20"]
n = [0, 1, 3]
seed = [0, 1]
arch = "MLP"
batch_size = 16
epochs = 2
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """MNIST-format files with 60 training images (class 0 has enough for n = 3)."""
    from conftest import write_idx_dataset

    root = tmp_path_factory.mktemp("data")
    dataset = write_idx_dataset(root, "MNIST", seed=1, n_train=60, n_test=20)
    assert (dataset.train.labels == 0).sum() >= 3
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Dask LocalCluster (2 worker processes on loopback), started as the dask executor
    starts its own, and shared by this module's tests through its scheduler address."""
    pytest.importorskip("distributed")
    cache = tmp_path_factory.mktemp("worker-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RSC_CACHE_DIR", str(cache))  # the workers inherit it
        executor = rsc_core.create("executors", "dask", settings=ExecutorSettings(workers=2))
        with executor.local_cluster() as local:
            yield local.scheduler_address


def sweep(executor, runs: Path, data_root: Path, grid: str = GRID, group_size: int = 4):
    planned = plan_sweep(parse_grid(grid, "grid.toml").requests(), runs)
    jobs = make_jobs(planned, group_size, runs_dir=runs, data_dir=data_root, device="cpu")
    return run_sweep(planned, jobs, executor)


def test_the_same_grid_gives_the_same_runs_and_numbers_on_every_executor(
        data_root, cluster, tmp_path):
    """9 MNIST runs train; the 9 Fashion-MNIST runs fail (no such data under the root) and
    are reported, while the others go on, on every executor alike."""
    grid = GRID.replace('dataset = "mnist"', 'dataset = ["mnist", "fashion"]')
    threads = torch.get_num_threads()
    settings = {"local": ExecutorSettings(threads=1), "processes": ExecutorSettings(workers=2),
                "dask": ExecutorSettings(scheduler=cluster),
                "slurm": ExecutorSettings(slurm={"cluster": "local"},
                                          log_folder=str(tmp_path / "slurm-jobs"))}
    results, reports = {}, {}
    try:
        for name, setting in settings.items():
            executor = rsc_core.create("executors", name, settings=setting)
            outcome = sweep(executor, tmp_path / name, data_root, grid, group_size=9)  # 2 jobs
            reports[name] = outcome.reports
            results[name] = numbers(tmp_path / name)
    finally:
        torch.set_num_threads(threads)
    states = [r.state for r in reports["local"]]
    assert states == ["trained"] * 9 + ["failed"] * 9
    assert all(r.run.startswith("fashion") and "dataset 'fashion'" in r.error
               for r in reports["local"][9:])
    assert len(results["local"]) == 9  # 1 clean run + 2 patterns x 2 n x 2 seeds
    for name in ("processes", "dask", "slurm"):
        assert reports[name] == reports["local"], name
        assert results[name].keys() == results["local"].keys(), name
        assert results[name] == results["local"], name
    # Run again: the finished runs are reused, only the failed ones are tried again.
    again = sweep(rsc_core.create("executors", "dask", settings=settings["dask"]),
                  tmp_path / "dask", data_root, grid, group_size=9)
    assert [r.state for r in again.reports] == ["reused"] * 9 + ["failed"] * 9


def numbers(runs: Path) -> dict[str, tuple]:
    """Each finished run folder's numbers: losses per epoch, accuracy, score, weights."""
    found = {}
    for folder in sorted(runs.glob("*/metrics.json")):
        folder = folder.parent
        metrics = json.loads((folder / "metrics.json").read_text())
        weights = torch.load(folder / "model.pt", weights_only=False)["model_state_dict"]
        found[folder.name] = ([h["train_loss"] for h in metrics["history"]],
                              metrics["clean_accuracy"], (metrics["score"] or {}).get("score"),
                              [w.tolist() for w in weights.values()])
    return found


def _log_epochs(log: Path) -> list[int]:
    epochs = []
    for line in log.read_text().splitlines() if log.exists() else []:
        match = re.search(r'"epoch": (\d+)', line)
        if match:
            epochs.append(int(match.group(1)))
    return epochs


def test_a_worker_killed_mid_run_has_its_run_finished_elsewhere(data_root, cluster, tmp_path):
    grid = GRID.replace("epochs = 2", "epochs = 60").replace('["v8", "v20"]', '"v8"') \
        .replace("[0, 1, 3]", "3").replace("[0, 1]", "0")
    runs = tmp_path / "runs"
    executor = rsc_core.create("executors", "dask", settings=ExecutorSettings(scheduler=cluster))
    news: list[str] = []
    executor.notify = news.append
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=sweep(executor, runs, data_root, grid)))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the run has checkpointed 3 epochs
        logs = list(runs.glob("*/log.txt"))
        if logs and len(_log_epochs(logs[0])) >= 3:
            break
        time.sleep(0.01)
    run = logs[0].parent
    owner = (runs / ".locks" / f"{run.name}.owner").read_text()
    victim = int(re.search(r"process (\d+)", owner).group(1))
    assert victim != os.getpid()
    os.kill(victim, signal.SIGKILL)  # the worker process training the run
    killed_at = _log_epochs(run / "log.txt")[-1]
    assert killed_at < 60 and not (run / "metrics.json").exists()  # not marked finished
    thread.join(180)
    assert not thread.is_alive()

    [report] = outcome["result"].reports
    assert report.state == "resumed" and report.resumed_from >= 3, report
    # the death was told as it happened, naming the run (never Dask's task key)
    assert any(f"died while running run {run.name} " in line and "again on another worker"
               in line for line in news), news
    log = (run / "log.txt").read_text()
    starts = re.findall(r"(start|resume from epoch \d+) on cpu \(pid (\d+)", log)
    assert starts[0][0] == "start" and starts[-1][0].startswith("resume")
    assert int(starts[0][1]) == victim and int(starts[-1][1]) != victim  # elsewhere
    assert log.count("finished") == 1 and log.rstrip().endswith("finished")
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 61))  # none lost, none twice
    # The resumed run ends exactly where an uninterrupted one does.
    threads = torch.get_num_threads()
    try:
        local = rsc_core.create("executors", "local", settings=ExecutorSettings(threads=1))
        sweep(local, tmp_path / "reference", data_root, grid)
    finally:
        torch.set_num_threads(threads)
    assert numbers(runs) == numbers(tmp_path / "reference")


def test_a_job_that_fails_is_reported_and_the_others_go_on(cluster):
    executor = rsc_core.create("executors", "dask", settings=ExecutorSettings(scheduler=cluster))
    seen = []
    results = executor.run_jobs(reciprocal, [1, 0, 4], lambda i, r: seen.append(i))
    assert [r.value for r in results] == [1.0, None, 0.25]
    assert results[1].error.startswith("ZeroDivisionError") and sorted(seen) == [0, 1, 2]
    assert executor.map(reciprocal, [2, 4]) == [0.5, 0.25]


def test_dask_names_jobs_briefly_and_says_what_to_do_when_it_gives_up(cluster):
    """Dask's default key is the job function's repr (300 characters in its errors); a job
    Dask gave up on, or lost with the scheduler, is told in words with what to do."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    executor = rsc_core.create("executors", "dask", settings=ExecutorSettings(scheduler=cluster))
    [result] = executor.run_jobs(current_task_key, [0])
    assert re.fullmatch(r"rsc-job-0-[0-9a-f]{8}", result.value), result.value
    killed = KilledWorker("rsc-job-0-12345678", type("W", (), {"address": "tcp://h:1"})(), 3)
    error = executor.job_failure(killed).error
    assert "every worker that ran this job died (4 tries, the last on tcp://h:1)" in error
    assert "rsc-job" not in error and "run the sweep again" in error
    lost = FutureCancelledError("rsc-job-1-12345678", "scheduler-connection-lost")
    error = executor.job_failure(lost).error
    assert error.startswith(f"lost the Dask scheduler ({cluster})") and "restart the workers" \
        in error and "rsc-job" not in error


def test_the_processes_executor_retries_the_jobs_of_a_dead_worker(tmp_path):
    executor = rsc_core.create("executors", "processes", settings=ExecutorSettings(workers=1))
    seen, news = [], []
    executor.notify = news.append
    results = executor.run_jobs(die_once, [str(tmp_path / "marker")],
                                lambda i, r: seen.append((i, r)))
    assert results == [JobResult("second try")] and seen == [(0, results[0])]
    assert len(news) == 1 and news[0].startswith("a worker process died; 1 unfinished job(s)")


def test_the_local_executor_reports_each_failure_and_goes_on():
    executor = rsc_core.create("executors", "local")
    results = executor.run_jobs(reciprocal, [1, 0])
    assert results[0] == JobResult(1.0)
    assert "ZeroDivisionError" in results[1].error and "Traceback" in results[1].detail


def test_worker_threads_share_the_cores_and_sleep_when_idle(monkeypatch):
    assert thread_share(2, cores=16) == 8 and thread_share(32, cores=16) == 1
    assert thread_share(2, threads=3, cores=16) == 3
    environment = thread_environment(4)
    assert environment["OMP_NUM_THREADS"] == "4" and environment["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with worker_environment(2):
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["MKL_NUM_THREADS"] == "2"
    assert "OMP_WAIT_POLICY" not in os.environ  # restored


@pytest.mark.parametrize("name, module, extra", [("dask", "distributed", "dask"),
                                                 ("slurm", "submitit", "slurm")])
def test_a_missing_extra_is_one_line_naming_it(name, module, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(OptionalDependencyError, match=re.escape(f"pip install 'rsc[{extra}]'")):
        rsc_core.create("executors", name)
    grid = tmp_path / "grid.toml"
    grid.write_text('dataset = "mnist"\n')
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--executor", name, "--runs-dir",
                                      str(tmp_path / "runs"), "--dry-run"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert f"pip install 'rsc[{extra}]'" in result.output


def test_an_unknown_executor_is_one_line(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('dataset = "mnist"\n')
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--executor", "proceses",
                                      "--dry-run"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: unknown executor 'proceses'; did you mean "
                                    "processes?") and result.output.count("\n") == 1


def test_the_slurm_executor_needs_slurm_or_a_local_cluster(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "")  # no sbatch
    executor = rsc_core.create("executors", "slurm")
    with pytest.raises(RscError, match="no sbatch"):
        executor.run_jobs(reciprocal, [1])
    grid = tmp_path / "grid.toml"
    grid.write_text('dataset = "mnist"\narch = "MLP"\n')
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--executor", "slurm", "--runs-dir",
                                      str(tmp_path / "runs")])
    # the one error line, checked before the sweep's first line (or bar) is drawn
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: the slurm executor found no Slurm here")


def test_the_slurm_debug_cluster_runs_the_jobs_in_this_process(data_root, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace('["v8", "v20"]', '"v8"').replace("[0, 1, 3]", "3")
                    .replace("[0, 1]", "0"))
    threads = torch.get_num_threads()
    try:  # the job takes this process's cores, as it would in a worker
        result = CliRunner().invoke(cli, ["sweep", str(grid), "--executor", "slurm",
                                          "--slurm-cluster", "debug", "--runs-dir",
                                          str(tmp_path / "runs"), "--data-dir", str(data_root),
                                          "--device", "cpu", "--job-folder",
                                          str(tmp_path / "jobs"), "--json"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.output[result.output.index("["):])
    assert report["state"] == "trained"
    log = (tmp_path / "runs" / report["run"] / "log.txt").read_text()
    assert f"(pid {os.getpid()})" in log  # trained here, not in a worker process
    with pytest.raises(ConfigError, match="unknown slurm setting"):
        rsc_core.create("executors", "slurm",
                        settings=ExecutorSettings(slurm={"partitions": "gpu"}))
