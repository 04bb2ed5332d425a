"""The ``local`` executor: runs jobs one after another in this process (the right choice
on a single GPU or a small CPU, where parallel runs would only compete for the same cores)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from rsc_core.executors import Executor


class LocalExecutor(Executor):
    """Runs jobs sequentially in the current process."""

    name = "local"
    aliases = ("sequential",)

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Sequence[Any]:
        return [fn(job) for job in jobs]
