"""``confidence-penalty``: the loss minus beta times the entropy of the softmax (Pereyra et al.
2017, "Regularizing neural networks by penalizing confident output distributions").

Not one of the reference's mitigations: rsc adds it because a memorised example is one the
network is very confident about, and this penalises exactly that confidence."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rsc_core.training.regularisers import TrainContext

from .params import Param, ParamRegulariser, number


class ConfidencePenalty(ParamRegulariser):
    """Penalise confident predictions: loss - beta * entropy of the softmax (Pereyra et al.
    2017); a memorised example is one the network is very confident about."""

    name = "confidence-penalty"
    description = "confidence penalty: the loss minus beta times the softmax's entropy"
    PARAMS = {
        "beta": Param(number(0.0), doc="weight of the entropy term, >= 0"),
    }
    beta: float

    def loss(self, logits: torch.Tensor, y: torch.Tensor, losses: torch.Tensor,
             ctx: TrainContext) -> torch.Tensor:
        if self.beta == 0.0:  # exactly "no regulariser"
            return losses
        log_p = F.log_softmax(logits, dim=1)
        entropy = -(log_p.exp() * log_p).sum(1)
        return losses - self.beta * entropy
