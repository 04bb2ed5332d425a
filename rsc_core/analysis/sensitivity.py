"""Input sensitivity (PROTOCOL.md section 9): how fast a model's confidence in the true class
falls as the image's ink is erased.

Exactly what is computed, so that a curve can be reproduced:

* **Images**: the run's own training set, as it was trained (the spurious images carry the
  pattern; a run trained on a subset, that subset), rebuilt from its spec. One ``numpy.random.RandomState(seed)`` draws
  ``choice(N, size=min(images, N), replace=False)``: those training indices, in that order.
* **Pixels**: a pixel is an image position (row, column); it is non-zero when any channel is
  non-zero there, and zeroing it sets every channel to 0. For each chosen image, in order, the
  same RandomState then draws ``permutation(k)`` of its k non-zero positions (listed in
  row-major order). At fraction p the first ``round(p * k)`` positions of that permutation are
  zeroed (numpy's round, half to even), so the erased set only grows with p and p = 1 erases
  every non-zero pixel.
* **Fractions**: p in {0, 0.02, ..., 1} (``numpy.linspace(0, 1, 51)`` by default).
* **Measure**: the mean over the images of the softmax probability of each image's true label,
  with its standard error over images (``scipy.stats.sem``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from rsc_core.runs.checkpoints import build_model_from_checkpoint, read_checkpoint
from rsc_core.errors import ConfigError
from rsc_core.runs.folder import Run, resolve_device
from rsc_core.evaluation.predictions import predict_proba
from rsc_core.data.planting import build_spurious_dataset
from rsc_core.data.subsets import apply_subset

DEFAULT_IMAGES = 500
DEFAULT_STEPS = 51  # p = 0, 0.02, ..., 1


@dataclass(frozen=True)
class SensitivityCurve:
    run: str
    epochs: int
    seed: int
    indices: np.ndarray  # the training images used, in draw order
    fractions: np.ndarray
    mean_probability: np.ndarray
    sem: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "epochs": self.epochs, "seed": self.seed,
                "images": len(self.indices), "indices": self.indices.tolist(),
                "fractions": self.fractions.tolist(),
                "mean_probability": self.mean_probability.tolist(), "sem": self.sem.tolist()}


def erasure_order(images: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Per image (N x C x H x W), the rank at which each position is erased (a random
    permutation of its non-zero positions; zero positions get rank H*W, never erased), and
    per image its number of non-zero positions, as ``(ranks N x H*W, counts N)``."""
    nonzero = (images != 0).any(axis=1).reshape(len(images), -1)
    size = nonzero.shape[1]
    ranks = np.full(nonzero.shape, size, dtype=np.int64)
    for i, row in enumerate(nonzero):
        positions = np.flatnonzero(row)
        ranks[i, positions[rng.permutation(len(positions))]] = np.arange(len(positions))
    return ranks, nonzero.sum(axis=1)


def erased(images: torch.Tensor, ranks: torch.Tensor, counts: torch.Tensor,
           fraction: float) -> torch.Tensor:
    """The images with the first ``round(fraction * k)`` positions of their order zeroed."""
    keep = torch.from_numpy(np.round(fraction * counts.numpy()).astype(np.int64))
    mask = ranks < keep[:, None]  # N x H*W: erase these
    n, c, h, w = images.shape
    return images.masked_fill(mask.view(n, 1, h, w), 0.0)


def sensitivity_curve(run: Run, *, images: int = DEFAULT_IMAGES, seed: int = 0,
                      steps: int = DEFAULT_STEPS, data_dir: str | Path | None = None,
                      download: bool | None = None, device: str = "auto") -> SensitivityCurve:
    """The input-sensitivity curve of a finished run (see the module docstring)."""
    if images < 1:
        raise ConfigError(f"--images must be at least 1, got {images}")
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2 (p = 0 and 1), got {steps}")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be in [0, 2^32 - 1], got {seed}")
    run.model_sha256()  # verified before anything is loaded
    torch_device = resolve_device(device)
    data = build_spurious_dataset(run.spec, data_dir, download)
    if run.subset is not None:  # a run trained on part of the training set: that part
        data = apply_subset(data, run.subset)
    train = data.train
    rng = np.random.RandomState(seed)
    indices = rng.choice(len(train), size=min(images, len(train)), replace=False)
    chosen = train.images[torch.from_numpy(indices)]
    labels = train.labels[torch.from_numpy(indices)]
    ranks, counts = erasure_order(chosen.numpy(), rng)
    ranks_t, counts_t = torch.from_numpy(ranks), torch.from_numpy(counts)
    model = build_model_from_checkpoint(read_checkpoint(run.path / "model.pt"))
    fractions = np.linspace(0.0, 1.0, steps)
    means, sems = [], []
    for fraction in fractions:
        probs = predict_proba(model, erased(chosen, ranks_t, counts_t, float(fraction)),
                              torch_device)
        true = probs[torch.arange(len(labels)), labels].double().numpy()
        means.append(float(true.mean()))
        sems.append(float(stats.sem(true)) if len(true) > 1 else float("nan"))
    epochs = int((run.metrics or {}).get("epochs") or run.train_config.epochs)
    return SensitivityCurve(run.name, epochs, seed, indices, fractions, np.array(means),
                            np.array(sems))
