"""Built-in trainers: ``erm`` (plain empirical risk minimisation, ``erm.py``), which can also
train several compatible runs at once in lockstep (``erm_group.py``)."""
from __future__ import annotations

from rsc_core import hookimpl

from .erm import ErmTrainer, epoch_seed

__all__ = ["ErmTrainer", "epoch_seed"]


@hookimpl
def register_trainers(register) -> None:
    register(ErmTrainer)
