"""``weight-decay`` (alias ``l2``): L2 weight decay, one of the study's mitigations
(PROTOCOL.md section 6; the reference sweeps it from 1e-6 to 1e-1).

By default it is the reference's: the optimizer's own coupled ``weight_decay`` term, added to
the gradient. ``decoupled=true`` shrinks the weights before each step instead, as AdamW
(Loshchilov and Hutter 2019) does; with Adam that IS AdamW."""
from __future__ import annotations

from typing import Any

import torch

from rsc_core.training.regularisers import TrainContext

from .params import Param, ParamRegulariser, flag, number


class WeightDecay(ParamRegulariser):
    """L2 weight decay: the optimizer's coupled term (the reference), or decoupled (AdamW)."""

    name = "weight-decay"
    aliases = ("l2",)
    description = ("L2 weight decay: the optimizer's coupled weight_decay (reference) or "
                   "AdamW-style decoupled shrinking")
    PARAMS = {
        "value": Param(number(0.0), doc="decay coefficient, >= 0"),
        "decoupled": Param(flag, False, doc="true: p <- p * (1 - lr * value) before each "
                                            "step, as AdamW"),
    }
    value: float
    decoupled: bool

    def optimizer_options(self, options: dict[str, Any]) -> dict[str, Any]:
        if self.decoupled:
            return options
        # Add to, not replace, what is there: the caller's options are the base.
        return {**options, "weight_decay": options.get("weight_decay", 0.0) + self.value}

    def after_backward(self, ctx: TrainContext) -> None:
        # Decoupled decay runs after backward, i.e. just before optimizer.step(), exactly where
        # torch.optim.AdamW applies it: Adam + decoupled weight-decay == AdamW.
        if not self.decoupled or self.value == 0.0:
            return
        with torch.no_grad():
            for group in ctx.optimizer.param_groups:
                # Like AdamW, parameters without a gradient this step are left alone.
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    torch._foreach_mul_(params, 1.0 - group["lr"] * self.value)
