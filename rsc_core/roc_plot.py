"""The ROC curve of membership-inference attacks as the field plots it since Carlini et al.
2022: true-positive rate against false-positive rate on log-log axes, so the low-FPR regime
(where an attack identifies members confidently) is visible; a linear plot hides it near the
origin. The diagonal is a guessing attack."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .membership_metrics import roc_points
from .plots import plt, save_figure


def save_roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str,
                  path: str | Path) -> Path:
    """One curve per attack (``name: (member flags, scores)``), both axes from 1 / (number of
    non-members) to 1, the AUC in the legend."""
    from sklearn.metrics import roc_auc_score

    fig, axis = plt.subplots(figsize=(5.2, 4.8))
    lowest = 1.0
    for name, (member, scores) in curves.items():
        fpr, tpr, _ = roc_points(member, scores)
        lowest = min(lowest, 1.0 / max(1, int((~np.asarray(member, bool)).sum())))
        auc = roc_auc_score(member, scores)
        axis.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    axis.plot([lowest, 1], [lowest, 1], linestyle="--", color="grey", label="chance")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(lowest, 1)
    axis.set_ylim(lowest, 1)
    axis.set_xlabel("false-positive rate")
    axis.set_ylabel("true-positive rate")
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
