"""``rmia``: the Robust (relative) Membership Inference Attack of Zarifzadeh, Liu, Shokri and
Cherubin, "Low-Cost High-Power Membership Inference Attacks" (ICML 2024), offline: reference
models that never trained on the scored examples, and population data.

For an example x with true label y, Pr(x | theta) is the model's softmax probability of y
(computed in log space from the logits). With the OUT reference models of x
(rsc's clean-halves shadows: a pool example is OUT of half of them, a planted or control image
of all),

    Pr(x)       = ((1 + a) * mean_OUT Pr(x | theta') + (1 - a)) / 2     (the paper's offline
                  approximation of the average over IN and OUT models; ``a`` = option ``a``)
    ratio(x)    = Pr(x | theta_target) / Pr(x)
    score(x)    = share of population examples z with ratio(x) / ratio(z) > gamma,

where every z is OUT of every model, so Pr(z) uses all reference models. The population is
drawn by ``rsc mia`` from the shadow pool (images neither the target nor any reference model
trained on; option ``population``, its size). A member when score(x) > 1 - alpha: for an
example exchangeable with the population the score is about uniform, so alpha is the
nominal false-positive rate (as LiRA offline's alpha).

Where rsc differs from the authors' Privacy Meter: Pr_OUT(x) is the mean over ALL of x's OUT
reference models (their code keeps the largest K/2 OUT values, which equals that only when
exactly half are OUT), and ``a`` is an option (default 0.3, their default) rather than tuned
on a paired reference model."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rsc_core.privacy.attacks import (CLEAN_HALVES, DEFAULT_SHADOWS, Attack, AttackOutput,
    Observations, Population)
from rsc_core.errors import ConfigError

DEFAULT_POPULATION = 5000


def log_relative_probability(target: Observations, shadows: Sequence[Observations],
                             a: float, all_out: bool = False) -> np.ndarray:
    """log(Pr(x | target) / Pr(x)) per example, Pr(x) from the OUT shadows (every shadow when
    ``all_out``). In log space from the log-odds, so that confident examples (p_y within
    1e-16 of 1) keep distinct ratios instead of tying at p_y = 1.0: with q = 1 - p_y,
    Pr(x) = 1 - (1 + a) / 2 * mean_OUT q, whose log is log1p of a small number."""
    from scipy.special import expit

    complements = np.stack([expit(-s.logit_confidence()) for s in shadows])  # K x N, 1 - p_y
    out = np.ones_like(complements, dtype=bool) if all_out else \
        ~np.stack([s.member for s in shadows])
    counts = out.sum(axis=0)
    if (counts == 0).any():
        raise ConfigError("RMIA needs a reference model that did not train on each example; "
                          "train more shadows")
    mean_out = np.where(out, complements, 0.0).sum(axis=0) / counts
    return -target.losses() - np.log1p(-(1 + a) / 2 * mean_out)


def pairwise_share(log_ratio_x: np.ndarray, log_ratio_z: np.ndarray,
                   gamma: float) -> np.ndarray:
    """For each x, the share of z with ratio(x) / ratio(z) > gamma, i.e. log ratio(z) <
    log ratio(x) - log gamma, counted by a binary search in the sorted z."""
    ordered = np.sort(log_ratio_z)
    return np.searchsorted(ordered, log_ratio_x - np.log(gamma), side="left") / ordered.size


class RMIAOffline(Attack):
    """RMIA (Zarifzadeh et al. 2024), offline: how often the target's probability ratio of an
    example beats that of population examples."""

    name = "rmia"
    aliases = ("rmia-offline",)
    description = ("Offline RMIA (Zarifzadeh et al. 2024): the example's likelihood ratio "
                   "against population examples, with reference models that never saw it")
    shadow_design = CLEAN_HALVES
    min_shadows = 2
    needs_population = True
    option_defaults: dict[str, Any] = {"a": 0.3, "gamma": 1.0, "alpha": 0.05,
                                       "population": DEFAULT_POPULATION}

    def __init__(self, shadows: int = DEFAULT_SHADOWS, **options: Any) -> None:
        super().__init__(shadows, **options)
        for key, ok, span in (("a", lambda v: 0 <= v <= 1, "in [0, 1]"),
                              ("gamma", lambda v: v > 0, "above 0"),
                              ("alpha", lambda v: 0 < v < 1, "between 0 and 1")):
            value = self.options[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ConfigError(f"RMIA's {key} must be a number {span}, got {value!r}")
        size = self.options["population"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"RMIA's population must be a whole number of examples, at "
                              f"least 1, got {size!r}")

    def attack(self, target: Observations, shadows: Sequence[Observations],
               population: Population | None = None) -> AttackOutput:
        if population is None:
            raise ConfigError("RMIA needs population data; run it through rsc mia")
        a, gamma = float(self.options["a"]), float(self.options["gamma"])
        ratio_x = log_relative_probability(target, shadows, a)
        ratio_z = log_relative_probability(population.target, population.shadows, a,
                                           all_out=True)
        scores = pairwise_share(ratio_x, ratio_z, gamma)
        return AttackOutput(scores=scores, decisions=scores > 1 - float(self.options["alpha"]),
                            details={"shadows": len(shadows), **self.options,
                                     "population_size": len(population.target)})
