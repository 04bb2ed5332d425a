"""``loss-threshold`` (Yeom et al. 2018, "Privacy Risk in Machine Learning"): a member is an
example whose loss is below a threshold. Yeom et al. set the threshold to the average training
loss, which the attacker knows only for a model it trained; here it is chosen on the shadow
model (trained on the disjoint shadow pool) as the loss that best separates the shadow's
members from its non-members (highest balanced accuracy), then applied to the target."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rsc_core.privacy.attacks import SHADOW_POOL, Attack, AttackOutput, Observations
from rsc_core.errors import ConfigError


def best_threshold(member: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (call ``score >= threshold`` a member) with the highest balanced
    accuracy, (TPR + 1 - FPR) / 2, on labelled examples."""
    from sklearn.metrics import roc_curve  # here: sklearn slows every plugin load

    fpr, tpr, thresholds = roc_curve(member, scores, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best])


class LossThreshold(Attack):
    """Yeom et al.'s LOSS attack: loss below a threshold chosen on a shadow model."""

    name = "loss-threshold"
    aliases = ("loss",)
    shadow_design = SHADOW_POOL

    def attack(self, target: Observations, shadows: Sequence[Observations]) -> AttackOutput:
        (shadow,) = shadows
        if shadow.member.all() or not shadow.member.any():
            raise ConfigError("loss-threshold needs shadow members and non-members")
        threshold = best_threshold(shadow.member, -shadow.losses())
        scores = -target.losses()
        return AttackOutput(scores=scores, decisions=scores >= threshold,
                            details={"loss_threshold": -threshold})
