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
their last checkpoints, and the run lock keeps two workers from training one run at once."""
from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from rsc_core.errors import RscError
from rsc_core.executors import (WORKER_THREADS_ENV, Executor, ExecutorSettings, JobResult,
                                OnDone, available_cores, capture, check_count, failure,
                                require_extra, thread_environment, thread_share,
                                worker_count, worker_environment)


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
            futures = {client.submit(capture(fn), job, pure=False): index
                       for index, job in enumerate(jobs)}
            try:
                for future in as_completed(list(futures)):
                    index = futures[future]
                    try:
                        result = future.result()
                    except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker
                        result = failure(exc)
                    results[index] = result
                    if on_done is not None:
                        on_done(index, result)
            except BaseException:
                client.cancel(list(futures))
                raise
        return results

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


def _set_worker_threads(threads: int) -> None:
    """In a worker process: the share its jobs take (``rsc_core.executors.worker_threads``)."""
    os.environ[WORKER_THREADS_ENV] = str(threads)
