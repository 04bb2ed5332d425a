"""``roc.png`` of ``rsc mia``: on the left the ROC curve of every attack as the field plots it
since Carlini et al. 2022 (true- against false-positive rate on log-log axes, so the low-FPR
regime where an attack identifies members confidently is visible; the diagonal is a guessing
attack); on the right, per attack, the share of each slice above the threshold that gives 1%
FPR over the pool's non-members: the planted images, the same-class members, and the control
(the pattern on images no model saw), with 95% Clopper-Pearson intervals, on a fixed 0-1 axis.
If the control bar is as high as the planted one, the attack detects the pattern, not
membership."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rsc_core.privacy.metrics import SLICES, clopper_pearson, fpr_key, roc_points
from rsc_core.plots import fit_title, plt, save_figure

SLICE_LABELS = {"planted": "planted (members)", "same_class_members": "same-class members",
                "patterned_nonmembers": "control: pattern, never trained on"}
BAR_FPR = 0.01


def save_roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]],
                  attack_metrics: dict[str, dict[str, Any]], title: str,
                  path: str | Path) -> Path:
    """``curves``: ``name: (member flags, scores)`` over the pool; ``attack_metrics``: each
    attack's metrics (its slices)."""
    fig, (roc, bars) = plt.subplots(1, 2, figsize=(11, 5.6))
    _roc_panel(roc, curves)
    _slice_panel(bars, attack_metrics)
    fig.suptitle(fit_title(title, fig.get_figwidth(), font_size=9), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _roc_panel(axis, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    from sklearn.metrics import roc_auc_score

    lowest = 1.0
    for name, (member, scores) in curves.items():
        fpr, tpr, _ = roc_points(member, scores)
        lowest = min(lowest, 1.0 / max(1, int((~np.asarray(member, bool)).sum())))
        axis.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(member, scores):.3f})")
    axis.plot([lowest, 1], [lowest, 1], linestyle="--", color="grey", label="chance")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(lowest, 1)
    axis.set_ylim(lowest, 1)
    axis.set_xlabel("false-positive rate")
    axis.set_ylabel("true-positive rate")
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title("ROC over the target's pool", fontsize=9)


def _slice_panel(axis, attack_metrics: dict[str, dict[str, Any]]) -> None:
    """Grouped bars: per attack, each slice's share above the 1%-FPR threshold."""
    names = list(attack_metrics)
    width = 0.8 / len(SLICES)
    key = fpr_key(BAR_FPR)
    for k, slice_name in enumerate(SLICES):
        heights, errors, positions = [], [[], []], []
        for i, name in enumerate(names):
            part = attack_metrics[name].get(slice_name, {})
            rate, count = part.get(key), part.get("count", 0)
            if rate is None or not count:
                continue
            low, high = clopper_pearson(round(rate * count), count)
            positions.append(i + (k - (len(SLICES) - 1) / 2) * width)
            heights.append(rate)
            errors[0].append(rate - low)
            errors[1].append(high - rate)
        counts = {attack_metrics[n].get(slice_name, {}).get("count", 0) for n in names}
        label = f"{SLICE_LABELS[slice_name]} (n = {', '.join(map(str, sorted(counts)))})"
        bars = axis.bar(positions, heights, width, yerr=np.array(errors) if heights else None,
                        capsize=3, label=label)
        # a dot at each value, so that a rate of exactly 0 is seen as measured, not missing
        axis.plot(positions, heights, "o", markersize=3, color=bars.patches[0].get_facecolor()
                  if heights else "none")
    axis.axhline(BAR_FPR, color="grey", linestyle="--", linewidth=1, label="1% (the FPR)")
    axis.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("share above the 1%-FPR threshold")
    axis.set_title("slices at 1% FPR, 95% Clopper-Pearson intervals (unscored: no bar)",
                   fontsize=9)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2, fontsize=7)
