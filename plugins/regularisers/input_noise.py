"""``input-noise`` (alias ``gaussian-noise``): Gaussian noise added to the training inputs, one
of the study's mitigations (PROTOCOL.md section 6).

The reference's implementation of it is missing; rsc defines it as fresh N(0, sigma^2) noise
drawn for every training batch from the run's generator (so a resumed run draws the same
noise), never at evaluation, unclipped unless ``clip=true``."""
from __future__ import annotations

import torch

from rsc_core.training.regularisers import TrainContext

from .params import Param, ParamRegulariser, flag, number


class InputNoise(ParamRegulariser):
    """Fresh Gaussian noise N(0, sigma^2) added to every training batch (never at evaluation)."""

    name = "input-noise"
    aliases = ("gaussian-noise",)
    description = ("Gaussian noise N(0, sigma^2) added to each training batch, fresh per batch, "
                   "optionally clipped to [0, 1]")
    PARAMS = {
        "sigma": Param(number(0.0), doc="noise standard deviation, >= 0"),
        "clip": Param(flag, False, doc="true: clip noisy inputs to [0, 1]"),
    }
    sigma: float
    clip: bool

    def before_forward(self, x: torch.Tensor, y: torch.Tensor,
                       ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sigma == 0.0:  # draws nothing, so sigma=0 is exactly "no regulariser"
            return x, y
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        x = x + self.sigma * noise
        if self.clip:
            x = x.clamp(0.0, 1.0)
        return x, y
