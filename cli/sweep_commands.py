"""``rsc sweep``: expand a grid (a TOML file or a preset) into runs, skip the finished ones,
resume the interrupted ones, and train the rest on an executor, with a progress display."""
from __future__ import annotations

import datetime as _dt
import time
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from rsc_core import registry
from rsc_core.errors import RscError
from rsc_core.sweeps.executors import ExecutorSettings
from rsc_core.runs.groups import DEFAULT_GROUP_SIZE, RunRequest
from rsc_core.storage.paths import runs_dir as resolve_runs_dir
from rsc_core.runs.folder import config_hash, resolve_device, run_config
from rsc_core.data.spec import parse_int_list
from rsc_core.sweeps.grid import Grid, GridError, grid_from_dict, load_grid
from rsc_core.sweeps.presets import PRESETS, preset_grid
from rsc_core.storage.toml_writer import to_toml
from rsc_core.sweeps.sweep import (BROKEN, DONE, FINISHED, INTERRUPTED, NEW, PlannedRun, RunReport,
    SweepJob, make_jobs, plan_sweep, run_sweep, write_sweep_record)

from .options import data_options
from .output import echo_json, table_console

_PRESET_HELP = "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())


@click.command("sweep")
@click.argument("grid_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help=f"A study experiment instead of a grid file ({_PRESET_HELP}).")
@click.option("--dataset", "datasets", default=None, metavar="NAMES",
              help="Dataset(s), comma-separated (a preset's recipe follows each dataset; "
                   "default for presets: mnist).")
@click.option("--patterns", default=None, metavar="NAMES",
              help="Only these patterns, comma-separated (e.g. v8,v20).")
@click.option("--n", "ns", default=None, metavar="LIST",
              help="Only these n, e.g. 0,1,3,10,100 (0 is the clean baseline).")
@click.option("--seeds", default=None, metavar="SEEDS",
              help="Dataset seeds, e.g. 0-2 (the training seed stays 0: the study's "
                   "protocol).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs of every run.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Set any grid key, e.g. --set lr=0.1 or --set 'arch=[\"MLP\",\"CNN002\"]' "
                   "(VALUE is TOML; a bare word is a string). Repeatable.")
@click.option("--show-grid", is_flag=True,
              help="Print the grid (preset and changes applied) as a grid file and stop.")
@click.option("--dry-run", is_flag=True,
              help="List every run and whether it is done; train nothing.")
@click.option("--executor", default=None,
              help="local, processes, dask or slurm (`rsc plugins` lists them; default: the "
                   "grid's [sweep] executor, else local).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes (processes, dask local cluster; default cores // 4).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="BLAS threads per worker (default: the cores divided among the workers).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Dask: use this running scheduler (default: a cluster on this machine).")
@click.option("--group-size", type=click.IntRange(1), default=None,
              help=f"Compatible runs per job, trained in lockstep by one worker (default: "
                   f"the grid's, else {DEFAULT_GROUP_SIZE}). The groups, and so the numbers, "
                   f"depend on this alone, never on the executor.")
@click.option("--slurm-partition", default=None, help="Slurm partition.")
@click.option("--slurm-time", type=click.IntRange(1), default=None,
              help="Slurm time limit per array task, minutes.")
@click.option("--slurm-cpus", type=click.IntRange(1), default=None,
              help="Slurm CPUs per task (also its BLAS threads).")
@click.option("--slurm-mem-gb", type=float, default=None, help="Slurm memory per task, GB.")
@click.option("--slurm-gpus", type=click.IntRange(0), default=None, help="Slurm GPUs per task.")
@click.option("--slurm-array-parallelism", type=click.IntRange(1), default=None,
              help="Slurm array tasks running at once.")
@click.option("--slurm-cluster", type=click.Choice(["slurm", "local", "debug"]), default=None,
              help="slurm (default); local: the array tasks as processes on this machine; "
                   "debug: one after another in this process (to debug a job).")
@click.option("--job-folder", type=click.Path(file_okay=False), default=None,
              help="Slurm job files (default: <runs root>/.slurm; must be shared).")
@click.option("--runs-dir", type=click.Path(file_okay=False), default=None,
              help="Runs root (default: RSC_RUNS_DIR, else ./runs); shared by all workers.")
@data_options
@click.option("--device", default=None, help="cpu, cuda, cuda:1, ... or auto (default).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Print every run's state as JSON.")
def sweep_command(grid_file, preset, datasets, patterns, ns, seeds, epochs, sets, show_grid,
                  dry_run, executor, workers, threads, scheduler, group_size, slurm_partition,
                  slurm_time, slurm_cpus, slurm_mem_gb, slurm_gpus, slurm_array_parallelism,
                  slurm_cluster, job_folder, runs_dir, data_dir, download, device, quiet,
                  as_json) -> None:
    """Train every run of a grid: a TOML file (GRID_FILE) or a study preset (--preset).

    Finished runs are skipped, interrupted ones resume from their checkpoint, the rest train
    on the executor in jobs of compatible runs. A failed run is recorded (in
    <runs root>/.sweeps/) and the sweep goes on; the exit code is non-zero at the end if any
    failed. Grids are checked before anything runs; docs/sweeps.md describes them.

    Example: rsc sweep --preset score-vs-n --dataset mnist --seeds 0-2 --dry-run
    """
    grids = _grids(grid_file, preset, datasets, _overrides(patterns, ns, seeds, epochs, sets))
    if show_grid:
        click.echo("\n".join(to_toml(grid.raw) for grid in grids), nl=False)
        return
    requests = _requests(grids)
    options = {**grids[0].sweep}
    flags = {"executor": executor, "workers": workers, "threads": threads,
             "scheduler": scheduler, "group_size": group_size, "device": device}
    options.update({k: v for k, v in flags.items() if v is not None})
    slurm = {**grids[0].slurm}
    slurm.update({k: v for k, v in {
        "partition": slurm_partition, "time": slurm_time, "cpus_per_task": slurm_cpus,
        "mem_gb": slurm_mem_gb, "gpus_per_node": slurm_gpus,
        "array_parallelism": slurm_array_parallelism, "cluster": slurm_cluster}.items()
        if v is not None})
    device = options.get("device", "auto")
    resolve_device(device)
    name = options.get("executor", "local")
    root = resolve_runs_dir(runs_dir)
    settings = ExecutorSettings(workers=options.get("workers"), threads=options.get("threads"),
                                scheduler=options.get("scheduler"), slurm=slurm,
                                log_folder=job_folder or str(root / ".slurm"))
    runner = registry("executors").create(name, settings=settings)
    planned = plan_sweep(requests, runs_dir)
    label = " + ".join(grid.name for grid in grids)
    if dry_run:
        _print_plan(planned, label, name, as_json)
        return
    jobs = make_jobs(planned, options.get("group_size", DEFAULT_GROUP_SIZE), runs_dir=runs_dir,
                     data_dir=data_dir, download=download, device=device)
    if jobs:
        runner.check_ready()  # before anything is drawn: one error line, no progress bar
    console = Console(stderr=True)
    if not as_json:
        console.print(f"{label}: {_counts(planned)}; {len(jobs)} jobs on the {name} executor",
                      soft_wrap=True, highlight=False)
    started = _dt.datetime.now()
    clock = time.monotonic()
    outcome = _run(planned, jobs, runner, quiet or as_json, console)
    record = write_sweep_record(outcome, planned, name=_safe(label), executor=name,
                                runs_dir=runs_dir, started=started)
    if as_json:
        echo_json([asdict(r) for r in outcome.reports])
    else:
        _print_summary(outcome.reports, time.monotonic() - clock, record, console)
    failed = outcome.failed
    if failed:
        shown = "; ".join(f"{r.run}: {r.error}" for r in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise RscError(f"{len(failed)} of {len(outcome.reports)} runs failed: {shown}{more} "
                       f"(all recorded in {record}); fix the cause and run the sweep again")


def _overrides(patterns, ns, seeds, epochs, sets) -> list[tuple[str, Any, str]]:
    """(key, value, where) for every grid change asked for on the command line."""
    changes: list[tuple[str, Any, str]] = []
    if patterns:
        changes.append(("pattern", [p.strip() for p in patterns.split(",") if p.strip()],
                        "--patterns"))
    if ns:
        changes.append(("n", parse_int_list(ns, "n values", 10**9), "--n"))
    if seeds:
        changes.append(("seed", seeds, "--seeds"))
    if epochs:
        changes.append(("epochs", epochs, "--epochs"))
    for text in sets:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise GridError(f"--set {text!r}: expected KEY=VALUE, e.g. --set lr=0.1")
        changes.append((key.strip(), _toml_value(value.strip()), f"--set {key.strip()}"))
    return changes


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: --set arch=MLP


def _grids(grid_file, preset, datasets, changes) -> list[Grid]:
    if bool(grid_file) == bool(preset):
        raise RscError("give a grid file or --preset NAME (one of them); e.g. rsc sweep "
                       "--preset score-vs-n --dataset mnist --dry-run")
    names = [d.strip() for d in (datasets or "").split(",") if d.strip()]
    if grid_file:
        grids = [load_grid(grid_file)]
        if names:
            changes = [("dataset", names, "--dataset"), *changes]
    else:
        for dataset in names or ["mnist"]:
            registry("datasets").get(dataset)
        grids = [grid_from_dict(preset_grid(preset, d), preset) for d in names or ["mnist"]]
    for grid in grids:
        for key, value, where in changes:
            grid.override(key, value, where)
    return grids


def _requests(grids: list[Grid]) -> list[RunRequest]:
    seen, requests = set(), []
    for grid in grids:
        for request in grid.requests():
            key = config_hash(run_config(request.spec, request.config))
            if key not in seen:
                seen.add(key)
                requests.append(request)
    return requests


def _counts(planned: list[PlannedRun]) -> str:
    count = {state: sum(p.state == state for p in planned)
             for state in (DONE, INTERRUPTED, NEW, BROKEN)}
    text = (f"{len(planned)} runs, {count[DONE]} done, {count[INTERRUPTED]} interrupted "
            f"(resume), {count[NEW]} to start")
    return text + (f", {count[BROKEN]} broken" if count[BROKEN] else "")


def _print_plan(planned: list[PlannedRun], label: str, executor: str, as_json: bool) -> None:
    if as_json:
        echo_json([{"run": p.run.name, "path": str(p.run.path),
                    "spec": p.request.spec.name,
                    "train_seed": p.request.config.seed, "state": p.state,
                    "epoch": p.epoch, "problem": p.problem or None}
                   for p in planned])
        return
    table = Table("#", "spec", "train seed", "state", "run folder",
                  title=f"{label}: {len(planned)} runs (dry run: nothing is trained)")
    for number, item in enumerate(planned, 1):
        state = {DONE: "done", NEW: "to train",
                 INTERRUPTED: f"resume from epoch {item.epoch}",
                 BROKEN: f"broken: {item.problem}"}[item.state]
        table.add_row(str(number), item.request.spec.name, str(item.request.config.seed),
                      state, item.run.name)
    console = table_console()
    console.print(table)
    console.print(f"{_counts(planned)}; executor {executor}; runs root "
                  f"{planned[0].run.path.parent if planned else '-'}",
                  soft_wrap=True, highlight=False)


def _run(planned, jobs: list[SweepJob], runner, quiet: bool, console: Console):
    """Run the jobs with a live display of runs done / failed / running and the time left
    (the bar counts the runs that ended, done or failed). The executor's own news (a worker
    that died, a job retried) is printed above it."""
    total = sum(len(job.requests) for job in jobs)
    state = {"done": 0, "failed": 0, "open": list(range(len(jobs)))}
    started = time.monotonic()
    progress = Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                        console=console, disable=quiet)

    def status() -> str:
        running = sum(len(jobs[i].requests) for i in state["open"][:runner.slots])
        return f"{state['done']} done, {state['failed']} failed, {running} running"

    def on_reports(job: SweepJob, reports: list[RunReport]) -> None:
        state["open"].remove(jobs.index(job))
        failed = sum(r.state == "failed" for r in reports)
        state["failed"] += failed
        state["done"] += len(reports) - failed
        progress.update(task, advance=len(reports), status=status())
        for report in reports:
            if report.state == "failed":
                progress.console.print(f"[red]failed[/red] {report.run}: {report.error}",
                                       highlight=False, soft_wrap=True)
        if not quiet and not console.is_terminal:
            # no live display in a log file (nohup, Slurm, CI): one line per finished job
            console.print(_progress_line(state["done"], state["failed"], total, status(),
                                         time.monotonic() - started), highlight=False)

    def notify(line: str) -> None:
        if not quiet:
            progress.console.print(line, highlight=False, soft_wrap=True, markup=False)

    runner.notify = notify
    with progress:
        task = progress.add_task("runs", total=total, status=status())
        return run_sweep(planned, jobs, runner, on_reports)


def _progress_line(done: int, failed: int, total: int, status: str, elapsed: float) -> str:
    """One log line, e.g. ``runs 16/58 ended (16 done, 0 failed, 16 running), 31 min so far,
    about 82 min left``: the share of this sweep's runs that ended, done or failed, and the
    time left at that pace."""
    ended = done + failed
    left = elapsed / ended * (total - ended) if ended else None
    tail = f", about {left / 60:.0f} min left" if left is not None and ended < total else ""
    return f"runs {ended}/{total} ended ({status}), {elapsed / 60:.0f} min so far{tail}"


def _print_summary(reports: list[RunReport], seconds: float, record: Path,
                   console: Console) -> None:
    count: dict[str, int] = {}
    for report in reports:
        count[report.state] = count.get(report.state, 0) + 1
    order = ("trained", "resumed", "reused", FINISHED, "failed")
    parts = [f"{count[s]} {s}" for s in order if count.get(s)]
    console.print(f"{len(reports)} runs in {seconds:.0f} s: {', '.join(parts)}; record: "
                  f"{record}", soft_wrap=True, highlight=False)
    if count.get(FINISHED):
        console.print(f"{count[FINISHED]} {FINISHED}: their jobs' reports were lost (a worker "
                      f"or the Dask scheduler went away), their folders say they finished",
                      soft_wrap=True, highlight=False)


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)[:80]


COMMANDS = [sweep_command]
