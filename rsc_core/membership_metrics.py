"""The field's membership-inference metrics, shared by every attack: balanced accuracy of the
attack's own decisions, ROC AUC of its scores, TPR at low FPR (Carlini et al. 2022 argue this is
what matters: an attack that confidently identifies a few members is a privacy breach even at
an AUC near 0.5), and the study's slice: how often the spurious training images are called
members compared with members of the same class that carry no pattern.

Scores: higher means "more likely a member". ROC points come from scikit-learn
(``roc_curve`` with ``drop_intermediate=False``, an example counted positive when its score is
``>=`` the threshold); TPR at FPR a is the highest TPR among points with FPR <= a. The
threshold that reaches it is also applied to slices of the members, so "TPR at 1% FPR over the
spurious examples" uses the same threshold as over all members.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from .errors import RscError

LOW_FPRS = (0.001, 0.01)


def fpr_key(fpr: float) -> str:
    """``0.001`` -> ``tpr_at_0.1%_fpr``, the metric's name in metrics.json."""
    return f"tpr_at_{fpr * 100:g}%_fpr"


def roc_points(member: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """FPR, TPR and thresholds of every distinct score (first point: nothing called member)."""
    member, scores = _check(member, scores)
    return roc_curve(member, scores, drop_intermediate=False)


def threshold_at_fpr(member: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The lowest score threshold whose FPR stays <= ``fpr`` (inf: call nothing a member)."""
    false_pos, _, thresholds = roc_points(member, scores)
    allowed = np.flatnonzero(false_pos <= fpr)
    return float(thresholds[allowed[-1]])


def tpr_at_fpr(member: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    false_pos, true_pos, _ = roc_points(member, scores)
    return float(true_pos[np.flatnonzero(false_pos <= fpr)[-1]])


def _check(member: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    member = np.asarray(member, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if member.shape != scores.shape or member.ndim != 1:
        raise RscError(f"membership labels and scores differ in shape ({member.shape} vs "
                       f"{scores.shape})")
    if member.all() or not member.any():
        raise RscError("membership metrics need both members and non-members")
    if not np.isfinite(scores).all():
        raise RscError("an attack produced a NaN or infinite score; check its inputs")
    return member, scores


def slice_rates(scores: np.ndarray, decisions: np.ndarray, rows: np.ndarray,
                thresholds: dict[float, float]) -> dict[str, Any]:
    """How often the examples ``rows`` (positions) are called members: by the attack's own
    decision, and at the thresholds that give each low FPR over all non-members."""
    if rows.size == 0:
        return {"count": 0, "member_rate": None, **{fpr_key(f): None for f in thresholds}}
    out: dict[str, Any] = {"count": int(rows.size),
                           "member_rate": float(np.mean(decisions[rows]))}
    for fpr, threshold in thresholds.items():
        out[fpr_key(fpr)] = float(np.mean(scores[rows] >= threshold))
    return out


def membership_metrics(member: np.ndarray, scores: np.ndarray, decisions: np.ndarray,
                       spurious: np.ndarray | None = None,
                       same_class: np.ndarray | None = None) -> dict[str, Any]:
    """Every metric of one attack on one target. ``spurious`` and ``same_class`` are boolean
    masks over the examples (planted members; unplanted members of the planted class)."""
    member, scores = _check(member, scores)
    decisions = np.asarray(decisions, dtype=bool)
    thresholds = {fpr: threshold_at_fpr(member, scores, fpr) for fpr in LOW_FPRS}
    metrics: dict[str, Any] = {
        "members": int(member.sum()), "non_members": int((~member).sum()),
        "balanced_accuracy": float(balanced_accuracy_score(member, decisions)),
        "auc": float(roc_auc_score(member, scores)),
        **{fpr_key(fpr): tpr_at_fpr(member, scores, fpr) for fpr in LOW_FPRS},
        "false_positive_rate": float(np.mean(decisions[~member])),
    }
    for name, mask in (("spurious", spurious), ("same_class_members", same_class)):
        rows = np.flatnonzero(mask) if mask is not None else np.empty(0, dtype=np.int64)
        metrics[name] = slice_rates(scores, decisions, rows, thresholds)
    return metrics
