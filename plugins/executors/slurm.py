"""The ``slurm`` executor: one Slurm array job through submitit, one array task per job.

Resources come from the grid file's ``[slurm]`` table or from flags: ``partition``, ``time``
(minutes), ``cpus_per_task`` (also each task's BLAS threads), ``mem_gb``, ``gpus_per_node``,
``array_parallelism`` (tasks running at once), ``account``, ``qos``, ``constraint``.
``cluster = "local"`` runs the tasks as processes on this machine through submitit's local
executor (all at once; for trying a sweep out and for tests), ``"debug"`` one after another in
this process (submitit's debug executor: a breakpoint in a job stops there), with every core.

submitit keeps each task's pickled job, result and logs in the job folder (default
``<runs root>/.slurm``), which, like the runs root, must be on a file system the compute
nodes share. Interrupting the sweep cancels its tasks; run it again to resume."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rsc_core.errors import ConfigError, RscError
from rsc_core.sweeps.executors import (Executor, ExecutorSettings, JobResult, OnDone, capture,
    check_count, require_extra, thread_share, worker_environment)

#: [slurm] keys -> submitit parameters (generic ones first, then slurm_-prefixed).
_GENERIC = {"time": "timeout_min", "mem_gb": "mem_gb", "gpus_per_node": "gpus_per_node"}
_SLURM_ONLY = {"partition", "array_parallelism", "account", "qos", "constraint"}
CLUSTERS = ("slurm", "local", "debug")
DEFAULT_CPUS = 4


class SlurmExecutor(Executor):
    """Runs jobs as a Slurm array job through submitit ([slurm] table or --slurm-* flags)."""

    name = "slurm"
    aliases = ("submitit",)

    def __init__(self, settings: ExecutorSettings | None = None) -> None:
        super().__init__(settings)
        require_extra("submitit", "slurm", "slurm")
        self.resources = dict(self.settings.slurm)
        self.cluster = self.resources.pop("cluster", None) or "slurm"
        if self.cluster not in CLUSTERS:
            raise ConfigError(f"unknown slurm cluster {self.cluster!r}; use one of "
                              f"{', '.join(CLUSTERS)}")
        unknown = set(self.resources) - set(_GENERIC) - _SLURM_ONLY - {"cpus_per_task"}
        if unknown:
            raise ConfigError(f"unknown slurm setting(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join([*_GENERIC, *_SLURM_ONLY, 'cpus_per_task'])}")
        cpus = self.resources.pop("cpus_per_task", None) or self.settings.threads
        self.cpus = check_count(cpus, "cpus per task") if cpus is not None else None
        self.folder = Path(self.settings.log_folder or "rsc-slurm-jobs")

    @property
    def slots(self) -> int:
        return int(self.resources.get("array_parallelism") or 1_000_000)

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Sequence[Any]:
        results = self.run_jobs(fn, list(jobs))
        for result in results:
            if not result.ok:
                raise RscError(f"a slurm job failed: {result.error}")
        return [result.value for result in results]

    def check_ready(self) -> None:
        """Slurm must be here (its ``sbatch``) unless the cluster is local or debug."""
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise RscError("the slurm executor found no Slurm here (no sbatch command); run "
                           "the sweep on a Slurm login node, or set cluster = \"local\" in "
                           "[slurm] (--slurm-cluster local) to try it on this machine")

    def run_jobs(self, fn: Callable[[Any], Any], jobs: Sequence[Any],
                 on_done: OnDone | None = None) -> list[JobResult | None]:
        if not jobs:
            return []
        self.check_ready()
        threads = self.cpus or {"local": thread_share(len(jobs)),  # all tasks at once
                                "debug": thread_share(1)}.get(self.cluster, DEFAULT_CPUS)
        executor = self._executor(threads)
        with worker_environment(threads):  # the tasks inherit it (sbatch exports it too)
            submitted = executor.map_array(capture(fn), list(jobs))
        return self._collect(submitted, on_done)

    def _executor(self, threads: int) -> Any:
        import submitit

        self.folder.mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
        parameters: dict[str, Any] = {"name": "rsc-sweep", "cpus_per_task": threads}
        for key, value in self.resources.items():
            if key in _GENERIC:
                parameters[_GENERIC[key]] = value
            elif self.cluster == "slurm":
                parameters[f"slurm_{key}"] = value
        executor.update_parameters(**parameters)
        return executor

    def _collect(self, submitted: list[Any], on_done: OnDone | None) -> list[JobResult | None]:
        results: list[JobResult | None] = [None] * len(submitted)
        pending = set(range(len(submitted)))
        poll = 15.0 if self.cluster == "slurm" else 0.2
        try:
            while pending:
                for index in sorted(pending):
                    job = submitted[index]
                    if not job.done():
                        continue
                    pending.discard(index)
                    results[index] = _result(job)
                    if on_done is not None:
                        on_done(index, results[index])
                if pending:
                    time.sleep(poll)
        except BaseException:
            for index in pending:
                submitted[index].cancel(check=False)
            raise
        return results


def _result(job: Any) -> JobResult:
    try:
        return job.result()
    except Exception as exc:  # noqa: BLE001 - the task died: killed, timed out, out of memory
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        last = lines[-1] if lines else type(exc).__name__
        return JobResult(error=f"slurm task {job.job_id} failed: {last}", detail=str(exc))
