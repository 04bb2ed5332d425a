"""The ``processes`` executor: N worker processes on this machine, the cores split between
them (each worker gets ``cores // N`` BLAS threads and sleeping, not spinning, OpenMP threads).

Workers are started with ``spawn`` (a fresh interpreter), never ``fork``: a forked copy of a
process whose OpenMP runtime is already running can hang. A worker that dies (killed, out of
memory) breaks Python's process pool; the jobs it had not finished are then retried on a fresh
pool, a bounded number of times, and resume from their checkpoints.

Workers end with the sweep: each watches its parent (``exit_with_parent``) and stops itself
when the parent is gone, however it went (a SIGKILLed ``rsc sweep`` left its workers training
on, holding their runs' locks). The worker's runs keep their last checkpoints."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from rsc_core.errors import ConfigError
from rsc_core.sweeps.executors import (Executor, ExecutorSettings, JobResult, OnDone, capture,
    thread_share, use_threads, worker_count, worker_environment)

#: How many times the jobs of a broken pool are retried on a fresh one.
POOL_RESTARTS = 3


class ProcessesExecutor(Executor):
    """Runs jobs in N worker processes on this machine (--workers; default cores // 4)."""

    name = "processes"
    aliases = ("pool",)

    def __init__(self, settings: ExecutorSettings | None = None) -> None:
        super().__init__(settings)
        self.workers = worker_count(self.settings)
        self.threads = thread_share(self.workers, self.settings.threads)

    @property
    def slots(self) -> int:
        return self.workers

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker,
                                   initargs=(self.threads, os.getpid()))

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Sequence[Any]:
        fn = _portable(fn)
        with worker_environment(self.threads), self._pool() as pool:
            return list(pool.map(fn, jobs))

    def run_jobs(self, fn: Callable[[Any], Any], jobs: Sequence[Any],
                 on_done: OnDone | None = None) -> list[JobResult | None]:
        task = capture(_portable(fn))
        results: list[JobResult | None] = [None] * len(jobs)
        todo = list(range(len(jobs)))
        for attempt in range(POOL_RESTARTS + 1):
            todo = self._run_pool(task, jobs, todo, results, on_done,
                                  last=attempt == POOL_RESTARTS)
            if not todo:
                break
            self.notify(f"a worker process died; {len(todo)} unfinished job(s) start again on "
                        f"fresh workers (restart {attempt + 1} of {POOL_RESTARTS}), resuming "
                        f"from their checkpoints")
        return results

    def _run_pool(self, task, jobs, todo: list[int], results: list, on_done: OnDone | None,
                  last: bool) -> list[int]:
        """Run ``todo`` on one pool; the indices left unfinished when it broke."""
        broken: list[int] = []
        with worker_environment(self.threads):
            pool = self._pool()
            try:
                futures: dict[Future, int] = {pool.submit(task, jobs[i]): i for i in todo}
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = futures[future]
                    try:
                        result = future.result()
                    except BrokenProcessPool as exc:
                        if not last:
                            broken.append(index)
                            continue
                        result = JobResult(error=f"a worker process died ({exc}); run the "
                                                 f"sweep again to resume")
                    except Exception as exc:  # noqa: BLE001 - unpicklable result and such
                        result = JobResult(error=f"{type(exc).__name__}: {exc}")
                    results[index] = result
                    if on_done is not None:
                        on_done(index, result)
        except BaseException:
            _stop(pool)  # interrupted: stop the workers; their runs resume next time
            raise
        pool.shutdown(wait=True)
        return sorted(broken)


#: How often a worker checks that its parent is alive (seconds).
PARENT_POLL_S = 1.0


def _start_worker(threads: int, parent: int) -> None:
    """A worker's first act: its thread share, and the watch on its parent."""
    use_threads(threads)
    exit_with_parent(parent)


def exit_with_parent(parent: int, poll: float = PARENT_POLL_S) -> threading.Thread:
    """Watch from a daemon thread that process ``parent`` is still this process's parent; once
    it is not (it died and this process was handed to another), send this process SIGTERM,
    which ends it as soon as an epoch being saved is saved (``saving_together``)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="rsc-parent-watch", daemon=True)
    thread.start()
    return thread


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (a killed run keeps its last
    checkpoint and resumes from it)."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public way to reach them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def _portable(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` as it can travel to a spawned worker: itself when it pickles, else through
    cloudpickle (a local function, as ``rsc quickstart`` passes) when that is installed."""
    try:
        pickle.dumps(fn)
        return fn
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    try:
        import cloudpickle
    except ImportError:
        raise ConfigError("the processes executor needs a function it can send to other "
                          "processes (a module-level function), or cloudpickle installed "
                          "(pip install 'rsc[dask]')") from None
    return _CloudPickled(cloudpickle.dumps(fn))


@dataclass(frozen=True)
class _CloudPickled:
    payload: bytes

    def __call__(self, job: Any) -> Any:
        return pickle.loads(self.payload)(job)
