"""The ``dask`` executor: jobs on a Dask cluster (dask.distributed), on this machine or many.

* ``--scheduler tcp://HOST:PORT``: use a running cluster (``dask scheduler`` on one machine,
  ``dask worker tcp://HOST:PORT`` on each of the others). Workers read datasets from their own
  data root (their RSC_DATA_DIR) and write run folders to the runs root, a path that must
  name the same shared folder on every machine.
* no scheduler: a LocalCluster of ``--workers`` processes on the loopback interface.

Each worker process gets its share of its machine's cores as BLAS threads: the cores of its
host divided among the worker threads on that host (or ``--threads``). A worker that dies
mid-job has its job rescheduled by Dask on another worker (up to Dask's
``distributed.scheduler.allowed-failures``, 3 by default); the job resumes its runs from
their last checkpoints, and the run lock keeps two workers from training one run at once.
Each such death is told through ``notify`` as it happens, naming the job's runs (tasks are
keyed ``rsc-job-<index>-<random>``, short enough to read in Dask's own logs and errors).

A lost scheduler cancels every job not yet reported; the error says what to do (Dask workers
do not reconnect to a new scheduler: restart them), and ``rsc sweep`` counts the runs the
workers finished meanwhile from their folders."""
from __future__ import annotations

import logging
import os
import uuid
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from rsc_core.errors import RscError
from rsc_core.sweeps.executors import (WORKER_THREADS_ENV, Executor, ExecutorSettings, JobResult,
    OnDone, available_cores, capture, check_count, failure, require_extra, thread_environment,
    thread_share, worker_count, worker_environment)


class DaskExecutor(Executor):
    """Runs jobs on a Dask cluster (--scheduler tcp://HOST:PORT, or a local one)."""

    name = "dask"
    aliases = ("distributed",)

    def __init__(self, settings: ExecutorSettings | None = None) -> None:
        super().__init__(settings)
        require_extra("distributed", "dask", "dask")
        self.workers = worker_count(self.settings)
        if self.settings.threads is not None:
            check_count(self.settings.threads, "threads per worker")

    @property
    def slots(self) -> int:
        return self._slots if hasattr(self, "_slots") else self.workers

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Sequence[Any]:
        with self._client() as client:
            return client.gather(client.map(fn, list(jobs), pure=False))

    def run_jobs(self, fn: Callable[[Any], Any], jobs: Sequence[Any],
                 on_done: OnDone | None = None) -> list[JobResult | None]:
        from distributed import as_completed

        results: list[JobResult | None] = [None] * len(jobs)
        with self._client() as client:
            futures = {client.submit(capture(fn), job, pure=False, key=task_key(index)): index
                       for index, job in enumerate(jobs)}
            labels = {future.key: job_label(jobs[index], index)
                      for future, index in futures.items()}
            client.subscribe_topic("all", WorkerNews(labels, self.notify))
            try:
                for future in as_completed(list(futures)):
                    index = futures[future]
                    try:
                        result = future.result()
                    except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker
                        result = self.job_failure(exc)
                    results[index] = result
                    if on_done is not None:
                        on_done(index, result)
            except BaseException:
                client.cancel(list(futures))
                raise
        return results

    def job_failure(self, exc: Exception) -> JobResult:
        """A job Dask gave up on, in words: what happened and what to do, never Dask's
        task key."""
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        if isinstance(exc, KilledWorker):
            return JobResult(
                error=f"every worker that ran this job died ({exc.allowed_failures + 1} "
                      f"tries, the last on {exc.last_worker.address}); the workers' logs say "
                      f"why (out of memory?); run the sweep again to resume its runs",
                detail=str(exc))
        if isinstance(exc, FutureCancelledError) and exc.reason == "scheduler-connection-lost":
            where = self.settings.scheduler or "this machine"
            return JobResult(
                error=f"lost the Dask scheduler ({where}) before this job reported; start it "
                      f"again, restart the workers (Dask workers do not reconnect to a new "
                      f"scheduler) and run the same sweep again: finished runs are kept",
                detail=str(exc))
        result = failure(exc)
        key = getattr(exc, "key", None)
        if isinstance(key, str):
            return JobResult(error=result.error.replace(key, "this job"), detail=result.detail)
        return result

    @contextmanager
    def _client(self) -> Iterator[Any]:
        from distributed import Client

        if self.settings.scheduler:
            try:
                client = Client(self.settings.scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise RscError(f"cannot reach the Dask scheduler at {self.settings.scheduler}"
                               f" ({type(exc).__name__}); start one with `dask scheduler`, or "
                               f"leave out --scheduler for a cluster on this machine") from None
            with client:
                self._share_threads(client)
                yield client
            return
        with self.local_cluster() as cluster, Client(cluster) as client:
            yield client

    @contextmanager
    def local_cluster(self) -> Iterator[Any]:
        """A LocalCluster of ``workers`` processes on loopback, each with its thread share
        (also for starting one to share between several sweeps or tests)."""
        import dask
        from distributed import LocalCluster

        threads = thread_share(self.workers, self.settings.threads)
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"),
                   **thread_environment(threads)}
        # Dask sets these before it spawns each worker process, restarts included.
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
                worker_environment(threads):
            cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                   processes=True, host="127.0.0.1", dashboard_address=None,
                                   silence_logs=logging.ERROR)
        self._slots = self.workers
        with cluster:
            yield cluster

    def _share_threads(self, client: Any) -> None:
        """Tell each worker of a running cluster its share of its host's cores."""
        workers = client.scheduler_info(n_workers=-1)["workers"]
        if not workers:
            raise RscError(f"the Dask cluster at {self.settings.scheduler} has no workers; "
                           f"start some with `dask worker {self.settings.scheduler}`")
        self._slots = sum(info.get("nthreads", 1) for info in workers.values())
        per_host = Counter()
        for info in workers.values():
            per_host[info["host"]] += info.get("nthreads", 1)
        cores = client.run(available_cores)
        for address, info in workers.items():
            share = thread_share(per_host[info["host"]], self.settings.threads,
                                 cores.get(address))
            client.run(_set_worker_threads, share, workers=[address])


def task_key(index: int) -> str:
    """A job's Dask key: short and readable (Dask's default names it by the function's
    repr, hundreds of characters), unique across sweeps sharing a scheduler."""
    return f"rsc-job-{index}-{uuid.uuid4().hex[:8]}"


def job_label(job: Any, index: int) -> str:
    """How a job is named in news: its own ``label`` (a sweep job: its runs), else its
    number."""
    label = getattr(job, "label", None)
    return label if isinstance(label, str) and label else f"job {index + 1}"


class WorkerNews:
    """The scheduler's events about workers, told in words through ``notify``: a worker that
    died while running jobs of ours (Dask retries them on another worker), one that joined.
    Called in the client's event-loop thread."""

    def __init__(self, labels: dict[str, str], notify: Callable[[str], None]) -> None:
        import dask

        self.labels = labels
        self.notify = notify
        self.allowed = int(dask.config.get("distributed.scheduler.allowed-failures"))
        self.deaths: Counter = Counter()

    def __call__(self, event: tuple[float, dict]) -> None:
        message = event[1] if isinstance(event, tuple) and len(event) == 2 else event
        if not isinstance(message, dict):
            return
        action, worker = message.get("action"), message.get("worker", "a worker")
        if action == "add-worker":
            self.notify(f"Dask: worker {worker} joined")
        if action != "remove-worker" or message.get("expected"):
            return
        ours = [key for key in message.get("processing-tasks", ()) if key in self.labels]
        if not ours:
            self.notify(f"Dask: worker {worker} left")
        for key in ours:
            self.deaths[key] += 1
            retry = ("Dask runs it again on another worker (its checkpoints resume it)"
                     if self.deaths[key] <= self.allowed else "Dask gives up on it")
            self.notify(f"Dask: worker {worker} died while running {self.labels[key]} "
                        f"(death {self.deaths[key]} of at most {self.allowed + 1}); {retry}")


def _set_worker_threads(threads: int) -> None:
    """In a worker process: the share its jobs take (``rsc_core.executors.worker_threads``)."""
    os.environ[WORKER_THREADS_ENV] = str(threads)
