"""``label-smoothing``: cross-entropy against targets smoothed towards the uniform distribution
(Szegedy et al. 2016, "Rethinking the Inception architecture").

Not one of the reference's mitigations: rsc adds it because a memorised rare example is one the
network fits with full confidence, and smoothing caps how confident the targets ask it to be.
It is torch's ``F.cross_entropy(label_smoothing=eps)``, so it applies to the ``ce`` loss only."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rsc_core.errors import ConfigError
from rsc_core.training.regularisers import TrainContext
from rsc_core.training.trainer import TrainConfig

from .params import Param, ParamRegulariser, number


class LabelSmoothing(ParamRegulariser):
    """Cross-entropy against targets smoothed towards uniform (Szegedy et al. 2016)."""

    name = "label-smoothing"
    description = ("cross-entropy with label smoothing eps, as torch's "
                   "F.cross_entropy(label_smoothing=eps); loss ce only")
    PARAMS = {
        "eps": Param(number(0.0, high=1.0, strict_high=True),
                     doc="smoothing: the target is (1 - eps) one-hot + eps uniform, in [0, 1)"),
    }
    eps: float

    def check_config(self, config: TrainConfig) -> None:
        if config.loss != "ce":
            raise ConfigError(f"label-smoothing smooths the cross-entropy, but this run's loss "
                              f"is {config.loss}; use --loss ce or drop label-smoothing")

    def loss(self, logits: torch.Tensor, y: torch.Tensor, losses: torch.Tensor,
             ctx: TrainContext) -> torch.Tensor:
        if self.eps == 0.0:  # exactly "no regulariser"
            return losses
        smoothed = F.cross_entropy(logits, y, reduction="none", label_smoothing=self.eps)
        plain = F.cross_entropy(logits, y, reduction="none")
        # Swap the plain cross-entropy for the smoothed one but keep what earlier loss hooks
        # added, so the order of loss regularisers does not matter. Alone, losses == plain
        # bit for bit and this is exactly ``smoothed``.
        return smoothed + (losses - plain)
