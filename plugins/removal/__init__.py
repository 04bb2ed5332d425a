"""Built-in data-removal methods (PROTOCOL.md section 7), one per module:
``incremental-retraining``, ``group-influence`` (with the LiSSA and CG solvers of ``lissa.py``
and ``cg.py`` over the Hessian-vector products of ``hessian.py``) and ``retrain``."""
from __future__ import annotations

from rsc_core import hookimpl

from .group_influence import GroupInfluenceRemover
from .incremental_retraining import IncrementalRetrainingRemover
from .retrain import RetrainRemover

__all__ = ["GroupInfluenceRemover", "IncrementalRetrainingRemover", "RetrainRemover"]


@hookimpl
def register_removers(register) -> None:
    register(IncrementalRetrainingRemover)
    register(GroupInfluenceRemover)
    register(RetrainRemover)
