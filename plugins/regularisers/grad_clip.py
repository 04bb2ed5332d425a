"""``grad-clip``: gradient clipping after every backward pass, one of the study's mitigations
(PROTOCOL.md section 6; the reference sweeps the clip value from 1e-5 to 10).

The reference clips each gradient element to [-value, value] (``mode=value``);
``mode=norm`` clips the global gradient norm instead. It cannot be combined with ``dp-sgd``,
which clips each example's gradient itself (``exclusions``)."""
from __future__ import annotations

import torch

from rsc_core.training.regularisers import TrainContext

from .exclusions import dp_with_grad_clip
from .params import Param, ParamRegulariser, choice, number


class GradClip(ParamRegulariser):
    """Gradient clipping after every backward pass: element-wise value (reference) or norm."""

    name = "grad-clip"
    description = ("gradient clipping after backward: element-wise to [-value, value] "
                   "(reference) or the global norm to value")
    PARAMS = {
        "value": Param(number(0.0, strict=True), doc="clip threshold, > 0"),
        "mode": Param(choice("value", "norm"), "value",
                      doc="value: clip_grad_value_ per element; norm: clip_grad_norm_ of "
                          "the global norm"),
    }
    value: float
    mode: str

    def setup(self, ctx: TrainContext) -> None:
        if "dp-sgd" in ctx.extras:
            raise dp_with_grad_clip()
        ctx.extras.setdefault("grad-clip", []).append(self)

    def after_backward(self, ctx: TrainContext) -> None:
        params = [p for p in ctx.model.parameters() if p.grad is not None]
        if self.mode == "value":
            torch.nn.utils.clip_grad_value_(params, self.value)
        else:
            torch.nn.utils.clip_grad_norm_(params, self.value)
