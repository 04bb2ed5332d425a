"""Built-in trainers: ``erm`` (plain empirical risk minimisation, ``erm.py``), which can also
train several compatible runs at once in lockstep (``erm_group.py``); the recipe details both
must share exactly (epoch seeds, Adam kernel, the one-image-batch error) are in
``erm_recipe.py``. Imports run one way: ``erm`` -> ``erm_group`` -> ``erm_recipe``."""
from __future__ import annotations

from rsc_core import hookimpl

from .erm import ErmTrainer
from .erm_recipe import epoch_seed

__all__ = ["ErmTrainer", "epoch_seed"]


@hookimpl
def register_trainers(register) -> None:
    register(ErmTrainer)
