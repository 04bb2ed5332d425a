"""Figures rsc writes (PNG via matplotlib's Agg backend, so no display is needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _as_picture(image: torch.Tensor):
    """C x H x W in [0, 1] -> what imshow wants (H x W grey, or H x W x 3)."""
    image = image.detach().cpu()
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def _save(fig, title: str, path: str | Path) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_pattern_grid(clean: torch.Tensor, patterned: torch.Tensor, title: str,
                      path: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Two rows: clean images above, the same images with the pattern below."""
    count = clean.shape[0]
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.6), squeeze=False)
    for column in range(count):
        for row, images in enumerate((clean, patterned)):
            axis = axes[row][column]
            axis.imshow(_as_picture(images[column]), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        if labels is not None:
            axes[0][column].set_title(labels[column], fontsize=8)
    axes[0][0].set_ylabel("clean")
    axes[1][0].set_ylabel("patterned")
    return _save(fig, title, path)


def save_comparison_plot(rows: Sequence[dict], title: str, path: str | Path) -> Path:
    """Spurious score and clean accuracy against n (error bars: SEM where available)."""
    import math

    ns = [row["n"] for row in rows]
    positions = list(range(len(ns)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    for axis, key, label in ((left, "score", "spurious score"),
                             (right, "clean_accuracy", "clean test accuracy")):
        means = [row[f"{key}_mean"] for row in rows]
        sems = [0.0 if math.isnan(row[f"{key}_sem"]) else row[f"{key}_sem"] for row in rows]
        axis.errorbar(positions, means, yerr=sems, marker="o", capsize=3)
        axis.set_xticks(positions, [str(n) for n in ns])
        axis.set_xlabel("number of spurious examples n")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    return _save(fig, title, path)
