"""The executor interface: run many independent jobs (for example groups of training runs) and
report each job's result or failure. ``local`` runs them one after another in this process;
plugins run them in worker processes, on a Dask cluster or as Slurm array jobs.

Two methods:

* ``map(fn, jobs)``: ``fn(job)`` for every job, results in order; an exception propagates.
  The simple form (``rsc quickstart``).
* ``run_jobs(fn, jobs, on_done)``: what ``rsc sweep`` uses. A job that raises, or whose worker
  dies, becomes a ``JobResult`` with an error and the other jobs go on; ``on_done(index,
  result)`` is called in this process as each job ends, in whatever order they end, so a
  progress display can follow. The default runs the jobs through ``map`` one at a time.

An executor tells its caller what the results alone do not (a worker that died, a job retried
on another) through ``notify(line)``. A job's ``label`` attribute, when it has one (a sweep
job: its runs), names it in such lines and in errors.

Every executor that starts worker processes gives each its share of the BLAS/OpenMP threads
(``thread_share``, ``worker_environment``): several processes each using every core, with
OpenMP's default busy-waiting, are 10-40x slower each than one process."""
from __future__ import annotations

import os
import sys
import traceback
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

from rsc_core.errors import ConfigError, OptionalDependencyError, RscError

#: Set in a worker process's environment by the executor that started it: the BLAS threads
#: its jobs may use (``worker_threads``).
WORKER_THREADS_ENV = "RSC_WORKER_THREADS"


@dataclass(frozen=True)
class ExecutorSettings:
    """What a user may say about where jobs run; each executor reads the fields it needs.

    ``workers``: parallel worker processes (None: the executor's default). ``threads``: BLAS
    threads per worker (None: this machine's cores divided among the workers). ``scheduler``:
    a Dask scheduler address. ``slurm``: submitit parameters (``partition``, ``time`` in
    minutes, ``cpus_per_task``, ``mem_gb``, ``gpus_per_node``, ``array_parallelism``, ...).
    ``log_folder``: where a cluster executor keeps its job files."""

    workers: int | None = None
    threads: int | None = None
    scheduler: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    log_folder: str | None = None


@dataclass(frozen=True)
class JobResult:
    """One job's return value, or the one-line error that stopped it (``detail``: the
    traceback, for a log)."""

    value: Any = None
    error: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


OnDone = Callable[[int, JobResult], None]


def _ignore(line: str) -> None:
    """The default ``Executor.notify``: news go nowhere."""


class Executor(ABC):
    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    #: Where an executor tells what the results alone do not: a worker that died, a job
    #: retried elsewhere (one line each). The caller sets it (``rsc sweep``: its display).
    notify: Callable[[str], None] = staticmethod(_ignore)

    def __init__(self, settings: ExecutorSettings | None = None) -> None:
        self.settings = settings or ExecutorSettings()

    @property
    def slots(self) -> int:
        """How many jobs run at the same time (for progress displays)."""
        return 1

    def check_ready(self) -> None:
        """Raise an ``RscError`` if the jobs cannot run here (e.g. no Slurm), before anything
        is started or drawn; by default they can."""

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Sequence[Any]:
        """Apply ``fn`` to every job; results in the order of ``jobs``."""

    def run_jobs(self, fn: Callable[[Any], Any], jobs: Sequence[Any],
                 on_done: OnDone | None = None) -> list[JobResult]:
        """Run every job, catching each job's failure; see the module docstring."""
        results = []
        for index, job in enumerate(jobs):
            result = self.map(capture(fn), [job])[0]
            results.append(result)
            if on_done is not None:
                on_done(index, result)
        return results


def capture(fn: Callable[[Any], Any]) -> Callable[[Any], JobResult]:
    """``fn`` wrapped so that an exception becomes a ``JobResult`` error (picklable when
    ``fn`` is)."""
    return _Captured(fn)


@dataclass(frozen=True)
class _Captured:
    fn: Callable[[Any], Any]

    def __call__(self, job: Any) -> JobResult:
        try:
            return JobResult(self.fn(job))
        except Exception as exc:  # noqa: BLE001 - a job's failure is reported, not raised
            return failure(exc)


def failure(exc: BaseException) -> JobResult:
    """A ``JobResult`` for an exception: its one-line message and its traceback."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, RscError):  # rsc's own errors are written for users already
        message = f"{type(exc).__name__}: {message}"
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return JobResult(error=message, detail=detail)


def available_cores() -> int:
    """The cores this process may use (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_count(settings: ExecutorSettings) -> int:
    """Worker processes: ``settings.workers`` if given, else a quarter of the cores (at least
    one), so each worker's training gets a few BLAS threads."""
    workers = settings.workers
    return check_count(workers if workers is not None else max(1, available_cores() // 4),
                       "workers")


def thread_share(workers: int, threads: int | None = None, cores: int | None = None) -> int:
    """BLAS threads per worker: ``threads`` if given, else the cores divided among the
    workers (at least 1)."""
    if threads is not None:
        return check_count(threads, "threads per worker")
    return max(1, (cores or available_cores()) // max(1, workers))


def check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a whole number, at least 1, got {value!r}")
    return value


def thread_environment(threads: int) -> dict[str, str]:
    """The environment a worker process needs before it starts: its thread count for every
    BLAS/OpenMP runtime, and OpenMP threads that sleep instead of spinning when idle (with
    spinning, workers sharing cores steal each other's time)."""
    count = str(threads)
    return {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "OPENBLAS_NUM_THREADS": count,
            "OMP_WAIT_POLICY": "PASSIVE", WORKER_THREADS_ENV: count}


@contextmanager
def worker_environment(threads: int) -> Iterator[dict[str, str]]:
    """Set ``thread_environment(threads)`` in this process's environment while worker
    processes are started (they inherit it), and restore it afterwards. This process's own
    OpenMP runtime read its settings at start-up and is not affected."""
    values = thread_environment(threads)
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def worker_threads() -> int | None:
    """The thread share the executor gave this worker process, or None (not in a worker)."""
    text = os.environ.get(WORKER_THREADS_ENV, "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def use_threads(threads: int | None) -> None:
    """In a worker, before any work: limit torch's intra-op threads (``None``: leave them).
    Called from the thread that runs the job, since OpenMP's setting is per thread."""
    torch = sys.modules.get("torch")
    if threads is None or torch is None:  # torch not loaded yet: it will read OMP_NUM_THREADS
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def require_extra(module: str, extra: str, executor: str) -> None:
    """Import ``module`` or raise a one-line error naming the extra that provides it."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise OptionalDependencyError(
            f"the {executor} executor needs {module}, which is not installed: "
            f"pip install 'rsc[{extra}]'") from None
