"""Built-in executors, one per module: ``local`` (one job after another in this process),
``processes`` (worker processes on this machine), ``dask`` (a Dask cluster; extra
``rsc[dask]``) and ``slurm`` (Slurm array jobs through submitit; extra ``rsc[slurm]``). The
last two import their library only when created, so they are listed without it."""
from __future__ import annotations

from rsc_core import hookimpl

from .dask import DaskExecutor
from .local import LocalExecutor
from .processes import ProcessesExecutor
from .slurm import SlurmExecutor

__all__ = ["DaskExecutor", "LocalExecutor", "ProcessesExecutor", "SlurmExecutor"]


@hookimpl
def register_executors(register) -> None:
    for executor in (LocalExecutor, ProcessesExecutor, DaskExecutor, SlurmExecutor):
        register(executor)
