"""``shadow-lr``: the study's attack (PROTOCOL.md section 8). Features: the model's logits
sorted ascending plus a 0/1 "prediction correct" flag, standardised; a logistic regression with
C chosen by 3-fold cross-validation from {0.01, 0.1, 1, 10}; fitted on ONE shadow model's
members (label 1) and held-out non-members (label 0) from the shadow pool, which is disjoint
from the target's data, then applied to the target's members and non-members.

Two evaluations (option ``compat``):

* ``corrected`` (default): the target is observed on its real held-out non-members; the
  standardisation is fitted inside each cross-validation fold (a scikit-learn pipeline) and the
  regression runs to convergence (``max_iter`` 1000).
* ``reference``: what the reference's notebook computes as it runs, defects included. The
  scaler is fitted once on all shadow features before the grid search; the regression is
  scikit-learn's default (``max_iter`` 100); and the target's non-member half is built from
  the MEMBERS' sorted logits (the k-th non-member takes the k-th member's logits) with the
  real non-members' correctness flags. Reproducing that reads the target's membership, which
  no real attack could: it is an evaluation, there to reproduce PROTOCOL.md section 8's
  numbers, not an attack. Rows beyond the paired half (rsc's control images, see
  ``rsc_core.mia``) keep their own logits.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rsc_core.privacy.attacks import (DEFAULT_SHADOWS, SHADOW_POOL, Attack, AttackOutput,
    Observations)
from rsc_core.errors import ConfigError

C_GRID = (0.01, 0.1, 1.0, 10.0)
FOLDS = 3
COMPAT_MODES = ("corrected", "reference")


def features(observations: Observations, logits: np.ndarray | None = None) -> np.ndarray:
    """Sorted logits (ascending; ``logits`` instead of the observed ones if given) and the
    correctness flag, one row per example."""
    logits = observations.logits if logits is None else logits
    return np.column_stack([np.sort(logits, axis=1),
                            observations.correct().astype(np.float64)])


def reference_logits(target: Observations) -> np.ndarray:
    """The reference's non-member half: the k-th non-member row carries the k-th member
    row's logits (for as many rows as there are members; later rows keep their own)."""
    logits = target.logits.copy()
    members, non_members = np.flatnonzero(target.member), np.flatnonzero(~target.member)
    paired = min(members.size, non_members.size)
    logits[non_members[:paired]] = target.logits[members[:paired]]
    return logits


class ShadowLogisticRegression(Attack):
    """The study's attack: logistic regression on sorted logits + correctness, fitted on a
    shadow model's members and non-members."""

    name = "shadow-lr"
    description = ("The study's attack: logistic regression on sorted logits and correctness, "
                   "fitted on a shadow model (compat=reference: the reference's evaluation)")
    shadow_design = SHADOW_POOL
    option_defaults: dict[str, Any] = {"compat": "corrected"}

    def __init__(self, shadows: int = DEFAULT_SHADOWS, **options: Any) -> None:
        super().__init__(shadows, **options)
        if self.options["compat"] not in COMPAT_MODES:
            raise ConfigError(f"unknown shadow-lr compat {self.options['compat']!r}; use one "
                              f"of {', '.join(COMPAT_MODES)}")

    def attack(self, target: Observations, shadows: Sequence[Observations]) -> AttackOutput:
        (shadow,) = shadows
        if shadow.member.all() or not shadow.member.any():
            raise ConfigError("shadow-lr needs shadow members and non-members to fit on")
        if self.options["compat"] == "reference":
            return self._reference(target, shadow)
        # Imported here: sklearn slows every plugin load (each worker process loads all).
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        search = GridSearchCV(model, {"logisticregression__C": list(C_GRID)}, cv=FOLDS)
        search.fit(features(shadow), shadow.member.astype(int))
        x = features(target)
        return AttackOutput(
            scores=search.decision_function(x), decisions=search.predict(x).astype(bool),
            details={"compat": "corrected",
                     "C": float(search.best_params_["logisticregression__C"]),
                     "cv_accuracy": float(search.best_score_),
                     "shadow_accuracy": float(search.score(features(shadow),
                                                           shadow.member.astype(int)))})

    @staticmethod
    def _reference(target: Observations, shadow: Observations) -> AttackOutput:
        """The reference notebook's evaluation (see the module docstring)."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(features(shadow))
        search = GridSearchCV(LogisticRegression(), {"C": list(C_GRID)}, cv=FOLDS)
        with warnings.catch_warnings():  # the reference ran lbfgs at its default 100 steps
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(scaler.transform(features(shadow)), shadow.member.astype(int))
        x = scaler.transform(features(target, reference_logits(target)))
        return AttackOutput(
            scores=search.decision_function(x), decisions=search.predict(x).astype(bool),
            details={"compat": "reference", "C": float(search.best_params_["C"]),
                     "cv_accuracy": float(search.best_score_)})
