"""Built-in data-removal methods (PROTOCOL.md section 7), one per module:
``incremental-retraining``, ``group-influence`` (with the LiSSA, CG and EK-FAC solvers of
``rsc_core.lissa``, ``rsc_core.conjugate_gradient`` and ``rsc_core.ekfac`` over the
Hessian-vector products of ``rsc_core.hessian``, shared with the self-influence auditor) and
``retrain``."""
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
