"""How well an audit found what was planted (issue 23's measurements, docs/results.md): only
ever computed AFTER the auditors ran, from their ranking and the run's planted indices, which
no auditor sees.

* recall at k: the share of planted examples among the k most suspicious;
* AUROC: the probability that a random planted example scores above a random clean one
  (ties count half), from each auditor's scores (and from the two combinations of several
  auditors: the rank average and the best rank);
* for a proposed pattern: whether its class was flagged, and the intersection over union of
  its mask (pixels with mask >= 0.5) with the planted pattern's support (the pixels the
  pattern changes on some image)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rsc_core import registry
from rsc_core.audit.runner import COMBINED, Ranking, max_rank, rank_average

MASK_THRESHOLD = 0.5
#: The evaluation's name for the max-rank combination (``combined`` is the rank average).
MAX_RANK = "combined-max-rank"


def ranking_metrics(ranking: Ranking, planted: np.ndarray,
                    ks: tuple[int, ...] = (10, 100)) -> dict[str, dict[str, Any]]:
    """Per auditor (and, when there are several, ``combined``, their rank average, and
    ``combined-max-rank``, their best rank): recall at each k, AUROC and the best rank of a
    planted example. ``planted``: original training indices. Empty when
    nothing was planted (a clean run has nothing to find)."""
    from sklearn.metrics import roc_auc_score

    is_planted = np.isin(ranking.indices, planted)
    if not is_planted.any():
        return {}
    columns = dict(ranking.scores)
    if len(columns) > 1:  # both combinations, whichever the audit ranked by
        columns[COMBINED] = rank_average(list(ranking.scores.values()))
        columns[MAX_RANK] = max_rank(list(ranking.scores.values()))
    result = {}
    for name, column in columns.items():
        order = np.lexsort((ranking.indices, -column))
        ranks = np.empty(order.size, dtype=np.int64)
        ranks[order] = np.arange(1, order.size + 1)
        planted_ranks = np.sort(ranks[is_planted])
        result[name] = {
            **{f"recall@{k}": float((planted_ranks <= k).mean()) for k in ks},
            "auroc": float(roc_auc_score(is_planted, column)),
            "best_rank": int(planted_ranks[0]), "median_rank": float(np.median(planted_ranks))}
    return result


def pattern_support(pattern: str, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """H x W: the pixels ``pattern`` (with ``seed``) changes on a black or a mid-grey image."""
    instance = registry("patterns").create(pattern)
    images = torch.stack([torch.zeros(shape), torch.full(shape, 0.5)])
    changed = instance.apply(images, seed) != images
    return changed.any(0).any(0).numpy()


def mask_iou(mask: np.ndarray, support: np.ndarray) -> float:
    """IoU of the binarised mask (>= 0.5) with a support (0 when both are empty)."""
    found = np.asarray(mask) >= MASK_THRESHOLD
    union = np.logical_or(found, support).sum()
    return float(np.logical_and(found, support).sum() / union) if union else 0.0
