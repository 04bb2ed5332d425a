"""The field's membership-inference metrics, shared by every attack: balanced accuracy of the
attack's own decisions, ROC AUC of its scores, TPR at low FPR (Carlini et al. 2022 argue this is
what matters: an attack that confidently identifies a few members is a privacy breach even at
an AUC near 0.5), and three slices: how often the planted training images are called members,
against members of the same class that carry no pattern (the study's comparison) and against
the control, the same pattern drawn on images of the class that no model trained on. Only the
control separates membership from the learned pattern: an attack that calls patterned
non-members members as often as the planted images detects the pattern, not membership.

Scores: higher means "more likely a member". ROC points come from scikit-learn
(``roc_curve`` with ``drop_intermediate=False``, an example counted positive when its score is
``>=`` the threshold); TPR at FPR a is the highest TPR among points with FPR <= a. The
threshold that reaches it is also applied to every slice, so "TPR at 1% FPR over the planted
images" uses the same threshold as over all members (over the control it is the share above
that threshold: a false-positive rate).

The difference planted - patterned_nonmembers comes with a 95% interval built from the two
exact (Clopper-Pearson) intervals by the MOVER method (Newcombe 1998, method 10; Zou and
Donner 2008): with n = 3 planted images it is wide, and it says so.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from rsc_core.errors import RscError

LOW_FPRS = (0.001, 0.01)
SLICES = ("planted", "same_class_members", "patterned_nonmembers")
DIFFERENCE = "planted_minus_patterned_nonmembers"
CONFIDENCE = 0.95


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
    decision, and at the thresholds that give each low FPR over all non-members. An attack
    that cannot score these examples (NaN scores) leaves the rates unscored (None)."""
    rates = (None,) * (1 + len(thresholds))
    if rows.size and np.isfinite(scores[rows]).all():
        rates = (float(np.mean(decisions[rows])),
                 *(float(np.mean(scores[rows] >= t)) for t in thresholds.values()))
    out: dict[str, Any] = {"count": int(rows.size), "member_rate": rates[0]}
    out.update({fpr_key(fpr): rate for fpr, rate in zip(thresholds, rates[1:])})
    if rows.size and rates[0] is None:
        out["unscored"] = "the attack cannot score these examples (see its documentation)"
    return out


def clopper_pearson(hits: int, count: int, confidence: float = CONFIDENCE) -> tuple[float,
                                                                                   float]:
    """The exact binomial interval for ``hits`` of ``count``."""
    from scipy.stats import beta

    tail = (1 - confidence) / 2
    low = 0.0 if hits == 0 else float(beta.ppf(tail, hits, count - hits + 1))
    high = 1.0 if hits == count else float(beta.ppf(1 - tail, hits + 1, count - hits))
    return low, high


def rate_difference(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """first - second for every rate of two slices, each with its MOVER interval from the
    slices' Clopper-Pearson intervals (None where either slice has no rate)."""
    out: dict[str, Any] = {"confidence": CONFIDENCE,
                           "method": "MOVER from Clopper-Pearson intervals"}
    for key in ("member_rate", *(fpr_key(f) for f in LOW_FPRS)):
        a, b = first.get(key), second.get(key)
        if a is None or b is None:
            out[key] = None
            continue
        (la, ha), (lb, hb) = (clopper_pearson(round(rate * part["count"]), part["count"])
                              for rate, part in ((a, first), (b, second)))
        difference = a - b
        out[key] = {"difference": difference,
                    "low": difference - float(np.hypot(a - la, hb - b)),
                    "high": difference + float(np.hypot(ha - a, b - lb))}
    return out


def membership_metrics(member: np.ndarray, scores: np.ndarray, decisions: np.ndarray,
                       planted: np.ndarray | None = None,
                       same_class: np.ndarray | None = None,
                       control_scores: np.ndarray | None = None,
                       control_decisions: np.ndarray | None = None) -> dict[str, Any]:
    """Every metric of one attack on one target's pool. ``planted`` and ``same_class`` are
    boolean masks over the pool (planted members; unplanted members of the planted class);
    ``control_scores`` and ``control_decisions`` are the attack's output on the control
    images, scored like the pool but outside it (they enter no pool metric)."""
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
    for name, mask in (("planted", planted), ("same_class_members", same_class)):
        rows = np.flatnonzero(mask) if mask is not None else np.empty(0, dtype=np.int64)
        metrics[name] = slice_rates(scores, decisions, rows, thresholds)
    control = np.asarray([] if control_scores is None else control_scores, dtype=np.float64)
    metrics["patterned_nonmembers"] = slice_rates(
        control, np.asarray([] if control_decisions is None else control_decisions, bool),
        np.arange(control.size), thresholds)
    metrics[DIFFERENCE] = rate_difference(metrics["planted"], metrics["patterned_nonmembers"])
    return metrics
