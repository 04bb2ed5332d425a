"""Built-in auditors (issue 23, docs/audit.md), one per module: ``self-influence`` (the
inverse-Hessian self-influence with EK-FAC, Arnoldi, CG or LiSSA), ``memorisation`` (offline
LiRA or the loss gap against reference models), ``saliency`` (saliency concentrated in a small
shared region) and ``neural-cleanse`` (trigger reconstruction)."""
from __future__ import annotations

from rsc_core import hookimpl

from .memorisation import MemorisationAuditor
from .neural_cleanse import NeuralCleanseAuditor
from .saliency import SaliencyConcentrationAuditor
from .self_influence import SelfInfluenceAuditor

__all__ = ["MemorisationAuditor", "NeuralCleanseAuditor", "SaliencyConcentrationAuditor",
           "SelfInfluenceAuditor"]


@hookimpl
def register_auditors(register) -> None:
    register(SelfInfluenceAuditor)
    register(MemorisationAuditor)
    register(SaliencyConcentrationAuditor)
    register(NeuralCleanseAuditor)
