"""Built-in executors, one per module: ``local`` (one job after another in this process)."""
from __future__ import annotations

from rsc_core import hookimpl

from .local import LocalExecutor

__all__ = ["LocalExecutor"]


@hookimpl
def register_executors(register) -> None:
    register(LocalExecutor)
