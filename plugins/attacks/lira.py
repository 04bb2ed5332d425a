"""``lira`` and ``lira-offline``: the Likelihood Ratio Attack of Carlini et al. 2022,
"Membership Inference Attacks From First Principles", computed as the authors' published
procedure computes it (their ``plot.py``: ``generate_ours`` and ``generate_ours_offline``),
re-implemented here.

Each example's statistic is its logit-scaled true-class confidence
    phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j,
computed exactly from the logits in float64 (the authors take logs of float64 softmax
probabilities plus 1e-45, which rounds a confident example's phi; rsc does not).

rsc trains the shadows as complementary random halves (shadows 2p and 2p+1 split one
permutation), so every pool example is IN exactly half of them.

Per example and side (IN: shadows that trained on it; OUT: those that did not):
1. the side's observations are cut to the fewest any scored example has on that side, in
   shadow order (the authors' ``in_size`` / ``out_size``; with complementary halves a pool
   example has K/2 of each, a planted image is OUT of all K offline shadows and keeps K/2);
2. the centre is the **median** of those observations (``center=median``, the authors'), or
   their mean (``center=mean``);
3. the spread (``variance``): ``per-example`` (the authors' default) is each example's
   standard deviation (ddof 0); ``fixed`` (the authors' ``fix_variance``) is ONE standard
   deviation of all the side's observations around their overall mean, and online uses the
   IN side's for both sides, as the authors' code does; ``pooled`` (rsc's earlier default,
   alias ``global``) is the root mean square of every observation's deviation from its own
   example's mean. 1e-30 is added to every standard deviation, as the authors do.

* ``lira`` (online): score = log N(phi; IN) - log N(phi; OUT); a member when > 0. An example
  that no shadow trained on (the control images, ``rsc_core.mia``) has no IN side and no
  score (NaN): the authors' procedure cannot score it either.
* ``lira-offline``: with ``test=two-sided`` (the authors' code) score = -log N(phi; OUT),
  large when phi is far from the OUT Gaussian on either side, and a member when
  |phi - mu| / sigma exceeds the (1 - alpha/2) normal quantile; with ``test=one-sided`` (the
  paper's text) score = log Pr[phi' <= phi] under the OUT Gaussian and a member when that
  probability exceeds 1 - alpha. ``alpha`` defaults to 0.05.

rsc queries each image once, without the paper's augmented queries (MNIST-style data is not
augmented in training)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rsc_core.privacy.attacks import (CLEAN_HALVES, DEFAULT_SHADOWS, TARGET_HALVES, Attack,
    AttackOutput, Observations)
from rsc_core.errors import ConfigError

VARIANCES = ("per-example", "fixed", "pooled")
VARIANCE_ALIASES = {"global": "pooled"}
CENTERS = ("median", "mean")
TESTS = ("two-sided", "one-sided")
STD_EPSILON = 1e-30  # the authors' guard against a zero standard deviation


def logit_confidence(observations: Observations) -> np.ndarray:
    """phi per example (``Observations.logit_confidence``), kept here for callers of LiRA."""
    return observations.logit_confidence()


@dataclass(frozen=True)
class Gaussians:
    """Per-example centre and standard deviation of phi over one side's shadows (NaN where
    the example has no observation on that side)."""

    mean: np.ndarray
    std: np.ndarray


def side_matrix(phi: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each example's observations on one side (``use[k, i]``), cut to the fewest any example
    with at least one has, in shadow order: an examples x size matrix, and which examples
    have any (the others are left out)."""
    counts = use.sum(axis=0)
    scored = counts > 0
    if not scored.any():
        raise ConfigError("no example has a shadow model on this side; train more shadows")
    size = int(counts[scored].min())
    columns = np.flatnonzero(scored)
    matrix = np.empty((columns.size, size))
    for row, example in enumerate(columns):
        matrix[row] = phi[use[:, example], example][:size]
    return matrix, scored


def fit_side(phi: np.ndarray, use: np.ndarray, center: str, variance: str,
             fixed_std: float | None = None) -> Gaussians:
    """The authors' fit of one side: centre and spread per example (see the module).
    ``fixed_std`` overrides the spread (online ``fixed`` uses the IN side's for OUT)."""
    matrix, scored = side_matrix(phi, use)
    centre = np.median(matrix, axis=1) if center == "median" else matrix.mean(axis=1)
    if fixed_std is not None:
        spread = np.full(centre.shape, fixed_std)
    elif variance == "fixed":
        spread = np.full(centre.shape, matrix.std())
    elif variance == "pooled":
        spread = np.full(centre.shape, pooled_std(phi, use))
    else:
        if matrix.shape[1] < 2:
            raise ConfigError("a per-example variance needs at least 2 shadow models on each "
                              "side of every example; train more shadows or use "
                              "variance=fixed")
        spread = matrix.std(axis=1)
    mean, std = np.full(phi.shape[1], np.nan), np.full(phi.shape[1], np.nan)
    mean[scored], std[scored] = centre, spread + STD_EPSILON
    return Gaussians(mean, std)


def pooled_std(phi: np.ndarray, use: np.ndarray) -> float:
    """The root mean square of every used observation's deviation from its own example's
    mean (rsc's earlier ``global`` variance)."""
    counts = use.sum(axis=0)
    scored = counts > 0
    mean = np.where(use, phi, 0.0).sum(axis=0) / np.maximum(counts, 1)
    squared = np.where(use[:, scored], (phi[:, scored] - mean[scored]) ** 2, 0.0)
    return float(np.sqrt(squared.sum() / counts[scored].sum()))


def shadow_matrix(target: Observations, shadows: Sequence[Observations]) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """phi and membership of every shadow on the target's examples (K x N each)."""
    for shadow in shadows:
        if len(shadow) != len(target) or not np.array_equal(shadow.labels, target.labels):
            raise ConfigError("LiRA's shadows must be observed on the target's examples")
    phi = np.stack([s.logit_confidence() for s in shadows])
    return phi, np.stack([s.member for s in shadows])


class _LiRA(Attack):
    option_defaults: dict[str, Any] = {"variance": "per-example", "center": "median"}

    def __init__(self, shadows: int = DEFAULT_SHADOWS, **options: Any) -> None:
        if "variance" in options:
            options["variance"] = VARIANCE_ALIASES.get(options["variance"],
                                                       options["variance"])
        super().__init__(shadows, **options)
        for key, allowed in (("variance", VARIANCES), ("center", CENTERS)):
            if self.options[key] not in allowed:
                raise ConfigError(f"unknown LiRA {key} {self.options[key]!r}; use one of "
                                  f"{', '.join(allowed)}")

    @property
    def variance(self) -> str:
        return self.options["variance"]

    def fewest_shadows(self) -> int:
        """A per-example spread needs two observations on each side of every example."""
        return 4 if self.variance == "per-example" else 2


class LiRAOnline(_LiRA):
    """LiRA (Carlini et al. 2022), online: Gaussians over shadows with and without each example
    (random halves of the target's pool), as the authors' code fits them."""

    name = "lira"
    aliases = ("lira-online",)
    description = ("Online LiRA (Carlini et al. 2022): likelihood ratio of Gaussians over "
                   "shadows with and without each example")
    shadow_design = TARGET_HALVES

    def attack(self, target: Observations, shadows: Sequence[Observations]) -> AttackOutput:
        from scipy.stats import norm  # here: scipy.stats slows every plugin load

        phi, member = shadow_matrix(target, shadows)
        center, variance = self.options["center"], self.variance
        # variance=fixed: the authors' code gives BOTH sides the IN side's one spread
        fixed = side_matrix(phi, member)[0].std() if variance == "fixed" else None
        inside = fit_side(phi, member, center, variance, fixed_std=fixed)
        outside = fit_side(phi, ~member, center, variance, fixed_std=fixed)
        observed = target.logit_confidence()
        with np.errstate(invalid="ignore"):
            scores = (norm.logpdf(observed, inside.mean, inside.std)
                      - norm.logpdf(observed, outside.mean, outside.std))
        return AttackOutput(scores=scores, decisions=np.nan_to_num(scores, nan=-1.0) > 0,
                            details={"shadows": len(shadows), **self.options,
                                     "unscored": int(np.isnan(scores).sum())})


class LiRAOffline(_LiRA):
    """LiRA (Carlini et al. 2022), offline: a test against a Gaussian over shadows that never
    trained on the example (halves of the pool without planted images)."""

    name = "lira-offline"
    description = ("Offline LiRA (Carlini et al. 2022): test against a Gaussian over shadows "
                   "that never saw the example")
    shadow_design = CLEAN_HALVES
    option_defaults = {**_LiRA.option_defaults, "test": "two-sided", "alpha": 0.05}

    def __init__(self, shadows: int = DEFAULT_SHADOWS, **options: Any) -> None:
        super().__init__(shadows, **options)
        if self.options["test"] not in TESTS:
            raise ConfigError(f"unknown LiRA test {self.options['test']!r}; use one of "
                              f"{', '.join(TESTS)}")
        alpha = self.options["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ConfigError(f"LiRA's alpha must be a number between 0 and 1, got {alpha!r}")

    def attack(self, target: Observations, shadows: Sequence[Observations]) -> AttackOutput:
        from scipy.stats import norm  # here: scipy.stats slows every plugin load

        phi, member = shadow_matrix(target, shadows)
        outside = fit_side(phi, ~member, self.options["center"], self.variance)
        observed = target.logit_confidence()
        alpha = float(self.options["alpha"])
        if self.options["test"] == "two-sided":
            scores = -norm.logpdf(observed, outside.mean, outside.std)
            z = np.abs(observed - outside.mean) / outside.std
            decisions = z > norm.ppf(1 - alpha / 2)
        else:
            scores = norm.logcdf(observed, outside.mean, outside.std)
            decisions = scores > np.log1p(-alpha)
        return AttackOutput(scores=scores, decisions=decisions,
                            details={"shadows": len(shadows), **self.options})
