"""The ``local`` executor: runs jobs one after another in this process (the right choice
on a single GPU or a small CPU, where parallel runs would only compete for the same cores)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from rsc_core.sweeps.executors import Executor, use_threads


class LocalExecutor(Executor):
    """Runs jobs one after another in this process."""

    name = "local"
    aliases = ("sequential",)

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Sequence[Any]:
        use_threads(self.settings.threads)  # None: this process's own setting stands
        return [fn(job) for job in jobs]
