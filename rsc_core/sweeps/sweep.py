"""Running a sweep: which runs of a grid are done, the rest cut into jobs of compatible runs,
the jobs run on an executor, and a record of what happened.

* ``plan_sweep`` reads each run folder: finished (skipped), interrupted (resumes from its
  checkpoint), new, or broken (a corrupt file: reported as failed, never trained over).
* ``make_jobs`` groups the runs to train by the trainer's group key, base dataset and the
  epoch reached, ``group_size`` at a time. The partition depends on the runs and
  ``group_size`` only, never on the executor, so every executor trains the same groups and
  writes the same numbers.
* ``run_sweep_job`` is what a worker runs: ``rsc_core.group_runs.train_runs`` on one job, with
  the worker's share of threads. A run's failure is reported, the others go on.
* ``run_sweep`` hands the jobs to an executor and collects one ``RunReport`` per run; a job
  whose worker died (or whose report was lost with the Dask scheduler) is reported from its
  run folders: a run whose folder says it finished is ``finished``, the others failed, and
  the sweep goes on.
* ``write_sweep_record`` saves the outcome under ``<runs root>/.sweeps/``, in a file of its
  own even for sweeps started in the same second."""
from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rsc_core import registry
from rsc_core.storage.atomic import new_file, write_json
from rsc_core.runs.checkpoints import read_checkpoint
from rsc_core.errors import CheckpointError, RscError
from rsc_core.sweeps.executors import Executor, JobResult, failure, use_threads, worker_threads
from rsc_core.runs.groups import RunRequest, check_group_size, train_runs
from rsc_core.training.multi_model import GroupTrainer
from rsc_core.storage.paths import runs_dir as resolve_runs_dir
from rsc_core.runs.folder import Run
from rsc_core.runs.training import find_run

DONE, INTERRUPTED, NEW, BROKEN = "done", "interrupted", "new", "broken"


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid and where it stands: ``state`` is done, interrupted (``epoch``
    epochs checkpointed), new, or broken (``problem`` says why)."""

    request: RunRequest
    run: Run
    state: str
    epoch: int = 0
    problem: str = ""


@dataclass(frozen=True)
class SweepJob:
    """What one worker trains: compatible runs, and where to read data and write runs. The
    runs root is absolute, and must be the same path on every worker (a shared file system);
    ``data_dir`` None means each worker's own data root (its RSC_DATA_DIR)."""

    requests: tuple[RunRequest, ...]
    runs_dir: str
    data_dir: str | None = None
    download: bool | None = None
    device: str = "auto"

    @property
    def label(self) -> str:
        """The job in words, for executors' news: ``run NAME`` or ``run NAME and 3 more``."""
        names = [find_run(r.spec, r.config, self.runs_dir).name for r in self.requests]
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        return f"run {names[0]}{more}" if names else "an empty job"


#: A run whose job's report was lost (its worker, or the Dask scheduler, went away) but whose
#: folder says it finished.
FINISHED = "finished"


@dataclass(frozen=True)
class RunReport:
    """What happened to one run: ``state`` trained, resumed, reused, finished (its job's
    report was lost, its folder says it finished) or failed."""

    run: str
    state: str
    resumed_from: int = 0
    error: str | None = None
    group_size: int = 1


@dataclass
class SweepOutcome:
    """Every run's report, in plan order (done runs included, as ``reused``)."""

    reports: list[RunReport] = field(default_factory=list)

    @property
    def failed(self) -> list[RunReport]:
        return [r for r in self.reports if r.state == "failed"]


def plan_sweep(requests: Sequence[RunRequest],
               runs_dir: str | Path | None = None) -> list[PlannedRun]:
    """Where every run stands; reads files, writes nothing."""
    return [_plan_one(request, runs_dir) for request in requests]


def _plan_one(request: RunRequest, runs_dir: str | Path | None) -> PlannedRun:
    run = find_run(request.spec, request.config, runs_dir)
    try:
        if run.finished:
            return PlannedRun(request, run, DONE, request.config.epochs)
    except RscError as exc:
        return PlannedRun(request, run, BROKEN, problem=str(exc))
    checkpoint = run.path / "checkpoint.pt"
    if checkpoint.is_file():
        try:
            epoch = int(read_checkpoint(checkpoint).get("epoch", 0))
        except CheckpointError:
            return PlannedRun(request, run, NEW)  # train_run ignores it and starts again
        return PlannedRun(request, run, INTERRUPTED, epoch)
    if (run.path / "model.pt").is_file():  # a finish cut short: only the finish is left
        return PlannedRun(request, run, INTERRUPTED, request.config.epochs)
    return PlannedRun(request, run, NEW)


def make_jobs(planned: Sequence[PlannedRun], group_size: int, *, runs_dir: str | Path | None,
              data_dir: str | Path | None = None, download: bool | None = None,
              device: str = "auto") -> list[SweepJob]:
    """The runs still to train, cut into jobs of up to ``group_size`` compatible runs."""
    check_group_size(group_size)
    root = str(resolve_runs_dir(runs_dir).resolve())
    keyed: dict[Any, list[RunRequest]] = {}
    for index, item in enumerate(planned):
        if item.state in (NEW, INTERRUPTED):
            keyed.setdefault(_job_key(item, index), []).append(item.request)
    return [SweepJob(tuple(members[i:i + group_size]), root,
                     None if data_dir is None else str(Path(data_dir).resolve()), download,
                     device)
            for members in keyed.values() for i in range(0, len(members), group_size)]


def _job_key(item: PlannedRun, index: int) -> Any:
    config = item.request.config
    trainer = registry("trainers").create(config.trainer)
    key = trainer.group_key(config) if isinstance(trainer, GroupTrainer) else None
    if key is None:
        return ("alone", index)
    return (key, item.request.spec.dataset, item.epoch)


def run_sweep_job(job: SweepJob) -> list[RunReport]:
    """Train one job's runs (in a worker); never raises for a run's own failure."""
    use_threads(worker_threads())
    try:
        results = train_runs(job.requests, group_size=len(job.requests), runs_dir=job.runs_dir,
                             data_dir=job.data_dir, download=job.download, progress=False,
                             device=job.device)
    except Exception as exc:  # noqa: BLE001 - e.g. a missing dataset: every run of the job
        error = failure(exc).error
        return [_failed(request, job.runs_dir, error) for request in job.requests]
    reports = []
    for result in results:
        if result.outcome is None:
            reports.append(_failed(result.request, job.runs_dir, failure(result.error).error,
                                   result.group_size))
            continue
        outcome = result.outcome
        state = ("reused" if outcome.reused else
                 "resumed" if outcome.resumed_from else "trained")
        reports.append(RunReport(outcome.run.name, state, outcome.resumed_from,
                                 group_size=result.group_size))
    return reports


def _failed(request: RunRequest, runs_dir: str, error: str | None,
            group_size: int = 1) -> RunReport:
    """A failed run's report; its folder's log (when it has a folder) records the error."""
    run = find_run(request.spec, request.config, runs_dir)
    if run.path.is_dir():
        try:
            run.log(f"sweep: failed: {error}")
        except OSError:
            pass
    return RunReport(run.name, "failed", error=error, group_size=group_size)


OnReport = Callable[[SweepJob, list[RunReport]], None]


def run_sweep(planned: Sequence[PlannedRun], jobs: Sequence[SweepJob], executor: Executor,
              on_reports: OnReport | None = None) -> SweepOutcome:
    """Run ``jobs`` on ``executor``; one report per planned run, in plan order. ``on_reports``
    hears each job's reports as it ends (for a progress display)."""
    reports: dict[str, RunReport] = {}
    for item in planned:
        if item.state == DONE:
            reports[item.run.name] = RunReport(item.run.name, "reused")
        elif item.state == BROKEN:
            reports[item.run.name] = RunReport(item.run.name, "failed", error=item.problem)

    def on_done(index: int, result: JobResult) -> None:
        job = jobs[index]
        job_reports = _job_reports(job, result)
        for report in job_reports:
            reports[report.run] = report
        if on_reports is not None:
            on_reports(job, job_reports)

    executor.run_jobs(run_sweep_job, list(jobs), on_done)
    return SweepOutcome([reports.get(item.run.name) or report_from_folder(item.run, "not run")
                         for item in planned])


def _job_reports(job: SweepJob, result: JobResult) -> list[RunReport]:
    if result.ok and isinstance(result.value, list):
        return result.value
    error = result.error or "the job returned nothing"
    return [report_from_folder(find_run(r.spec, r.config, job.runs_dir), error)
            for r in job.requests]


def report_from_folder(run: Run, error: str) -> RunReport:
    """The report of a run whose job ended without one (its worker died, the scheduler was
    lost): what its folder says. A worker may have finished the run before the report was
    lost, and a finished run is never counted as failed."""
    try:
        if run.finished:
            return RunReport(run.name, FINISHED)
    except RscError:  # a corrupt metrics.json: not finished
        pass
    return RunReport(run.name, "failed", error=error)


def write_sweep_record(outcome: SweepOutcome, planned: Sequence[PlannedRun], *, name: str,
                       executor: str, runs_dir: str | Path | None, started: _dt.datetime,
                       ) -> Path:
    """``<runs root>/.sweeps/<start time>-<name>.json``: every run's state and error. A sweep
    started in the same second as another gets ``-2``, ``-3``, ... (``new_file``), never the
    other's file."""
    root = resolve_runs_dir(runs_dir)
    stamp = started.strftime("%Y%m%dT%H%M%S")
    path = new_file(root / ".sweeps", f"{stamp}-{name}", ".json")
    by_name = {item.run.name: item for item in planned}
    runs = []
    for report in outcome.reports:
        item = by_name[report.run]
        runs.append({**asdict(report), "spec": item.request.spec.name,
                     "train_seed": item.request.config.seed})
    write_json(path, {
        "grid": name, "executor": executor,
        "started": started.isoformat(timespec="seconds"),
        "ended": _dt.datetime.now().isoformat(timespec="seconds"),
        "runs": runs, "failed": len(outcome.failed),
    })
    return path
