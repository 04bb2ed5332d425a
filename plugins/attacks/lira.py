"""``lira`` and ``lira-offline``: the Likelihood Ratio Attack of Carlini et al. 2022,
"Membership Inference Attacks From First Principles".

For each example, its logit-scaled true-class confidence
    phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j   (computed from the logits)
is modelled as a Gaussian over shadow models. rsc trains the shadows as complementary random
halves (shadows 2p and 2p+1 split one permutation), so every example is in exactly half of them.

* ``lira`` (online): shadows on halves of the target's own pool, planted images included. Per
  example, one Gaussian over the shadows that trained on it (IN) and one over those that did
  not (OUT); score = log N(phi; IN) - log N(phi; OUT), a member when the score is > 0 (IN is
  the likelier explanation).
* ``lira-offline``: shadows on halves of the target pool WITHOUT planted images (the same
  shadows for every n; a planted image is OUT of all of them, other examples of half).
  Score = log Pr[phi' <= phi] under the OUT Gaussian (the one-sided test), a member when that
  test rejects "non-member" at level 5%.

Variance: per example as in the paper's Algorithm 1, or one global variance pooled over all
examples' within-example deviations, which the paper recommends below 64 shadows ("auto", the
default, picks that rule). Standard deviations use ddof = 0 (numpy's default, as in the
authors' code) and are floored at MIN_STD so a shadow set that agrees exactly stays finite.
rsc queries each image once, without the paper's augmented queries (MNIST-style data is not
augmented in training).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rsc_core.attacks import (CLEAN_HALVES, DEFAULT_SHADOWS, TARGET_HALVES, Attack,
                              AttackOutput, Observations)
from rsc_core.errors import ConfigError

VARIANCES = ("auto", "global", "per-example")
GLOBAL_BELOW = 64  # the paper: fewer shadows than this, use a global variance
MIN_STD = 1e-6
OFFLINE_ALPHA = 0.05


def logit_confidence(observations: Observations) -> np.ndarray:
    """phi = z_y - logsumexp of the other logits, per example (stable for p_y near 0 or 1)."""
    from scipy.special import logsumexp  # here: scipy.stats/special slow every plugin load

    logits = observations.logits
    rows = np.arange(len(observations))
    true = logits[rows, observations.labels]
    others = logits.copy()
    others[rows, observations.labels] = -np.inf
    return true - logsumexp(others, axis=1)


@dataclass(frozen=True)
class Gaussians:
    """Per-example mean and standard deviation of phi over one side's shadows."""

    mean: np.ndarray
    std: np.ndarray


def fit_gaussian(phi: np.ndarray, use: np.ndarray, pooled: bool) -> Gaussians:
    """Fit phi[k, i] over the shadows k with ``use[k, i]``, per example i. ``pooled``: one
    standard deviation for all examples, the root mean square of every used observation's
    deviation from its example's mean."""
    counts = use.sum(axis=0)
    if (counts == 0).any():
        raise ConfigError("an example has no shadow model on this side; train more shadows")
    mean = np.where(use, phi, 0.0).sum(axis=0) / counts
    squared = np.where(use, (phi - mean) ** 2, 0.0)
    if pooled:
        std = np.full(mean.shape, np.sqrt(squared.sum() / counts.sum()))
    else:
        if (counts < 2).any():
            raise ConfigError("a per-example variance needs at least 2 shadow models on each "
                              "side of every example; train more shadows")
        std = np.sqrt(squared.sum(axis=0) / counts)
    return Gaussians(mean, np.maximum(std, MIN_STD))


def shadow_matrix(target: Observations, shadows: Sequence[Observations]) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """phi and membership of every shadow on the target's examples (K x N each)."""
    for shadow in shadows:
        if len(shadow) != len(target) or not np.array_equal(shadow.labels, target.labels):
            raise ConfigError("LiRA's shadows must be observed on the target's examples")
    phi = np.stack([logit_confidence(s) for s in shadows])
    return phi, np.stack([s.member for s in shadows])


class _LiRA(Attack):
    min_shadows = 2

    def __init__(self, shadows: int = DEFAULT_SHADOWS, variance: str = "auto") -> None:
        super().__init__(shadows)
        if variance not in VARIANCES:
            raise ConfigError(f"unknown LiRA variance {variance!r}; use one of "
                              f"{', '.join(VARIANCES)}")
        if variance == "auto":
            variance = "global" if shadows < GLOBAL_BELOW else "per-example"
        self.variance = variance

    @property
    def pooled(self) -> bool:
        return self.variance == "global"


class LiRAOnline(_LiRA):
    """LiRA (Carlini et al. 2022), online: Gaussians over shadows with and without each example
    (random halves of the target's pool)."""

    name = "lira"
    aliases = ("lira-online",)
    description = ("Online LiRA (Carlini et al. 2022): likelihood ratio of Gaussians over "
                   "shadows with and without each example")
    shadow_design = TARGET_HALVES
    min_shadows = 4  # at least two shadows with and two without every example

    def attack(self, target: Observations, shadows: Sequence[Observations]) -> AttackOutput:
        from scipy.stats import norm  # here: scipy.stats slows every plugin load

        phi, member = shadow_matrix(target, shadows)
        inside = fit_gaussian(phi, member, self.pooled)
        outside = fit_gaussian(phi, ~member, self.pooled)
        observed = logit_confidence(target)
        scores = (norm.logpdf(observed, inside.mean, inside.std)
                  - norm.logpdf(observed, outside.mean, outside.std))
        return AttackOutput(scores=scores, decisions=scores > 0,
                            details={"shadows": len(shadows), "variance": self.variance})


class LiRAOffline(_LiRA):
    """LiRA (Carlini et al. 2022), offline: a one-sided test against a Gaussian over shadows
    that never trained on the example (halves of the pool without planted images)."""

    name = "lira-offline"
    description = ("Offline LiRA (Carlini et al. 2022): one-sided test against shadows that "
                   "never saw the example")
    shadow_design = CLEAN_HALVES

    def attack(self, target: Observations, shadows: Sequence[Observations]) -> AttackOutput:
        from scipy.stats import norm  # here: scipy.stats slows every plugin load

        phi, member = shadow_matrix(target, shadows)
        outside = fit_gaussian(phi, ~member, self.pooled)
        scores = norm.logcdf(logit_confidence(target), outside.mean, outside.std)
        return AttackOutput(scores=scores, decisions=scores > np.log1p(-OFFLINE_ALPHA),
                            details={"shadows": len(shadows), "variance": self.variance,
                                     "alpha": OFFLINE_ALPHA})
