"""``shadow-lr``: the study's attack (PROTOCOL.md section 8). Features: the model's logits
sorted ascending plus a 0/1 "prediction correct" flag, standardised; a logistic regression with
C chosen by 3-fold cross-validation from {0.01, 0.1, 1, 10}; fitted on ONE shadow model's
members (label 1) and held-out non-members (label 0) from the shadow pool, which is disjoint
from the target's data, then applied to the target's members and non-members.

The reference's evaluation reused the members' logits for its non-member half; rsc observes
the target on real held-out non-members."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rsc_core.attacks import SHADOW_POOL, Attack, AttackOutput, Observations
from rsc_core.errors import ConfigError

C_GRID = (0.01, 0.1, 1.0, 10.0)
FOLDS = 3


def features(observations: Observations) -> np.ndarray:
    """Sorted logits (ascending) and the correctness flag, one row per example."""
    return np.column_stack([np.sort(observations.logits, axis=1),
                            observations.correct().astype(np.float64)])


class ShadowLogisticRegression(Attack):
    """The study's attack: logistic regression on sorted logits + correctness, fitted on a
    shadow model's members and non-members."""

    name = "shadow-lr"
    description = ("The study's attack: logistic regression on sorted logits and correctness, "
                   "fitted on a shadow model")
    shadow_design = SHADOW_POOL

    def attack(self, target: Observations, shadows: Sequence[Observations]) -> AttackOutput:
        (shadow,) = shadows
        if shadow.member.all() or not shadow.member.any():
            raise ConfigError("shadow-lr needs shadow members and non-members to fit on")
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
            details={"C": float(search.best_params_["logisticregression__C"]),
                     "cv_accuracy": float(search.best_score_),
                     "shadow_accuracy": float(search.score(features(shadow),
                                                           shadow.member.astype(int)))})
