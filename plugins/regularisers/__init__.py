"""The built-in regularisers, one per module: the mitigations studied (PROTOCOL.md section 6)
``weight-decay``, ``grad-clip`` and ``input-noise``; ``dp-sgd``; and two that change the loss,
``label-smoothing`` and ``confidence-penalty``. Each one only uses the hooks of
``rsc_core.training.regularisers.Regulariser``; docs/regularisers.md describes them.

``params`` holds what they share: declared parameters, validated and normalised so that
equivalent spellings name the same run. ``exclusions`` holds the errors for pairs that cannot
be combined."""
from __future__ import annotations

from rsc_core import hookimpl

from .confidence_penalty import ConfidencePenalty
from .dp_sgd import DPSGD
from .grad_clip import GradClip
from .input_noise import InputNoise
from .label_smoothing import LabelSmoothing
from .params import ParamRegulariser
from .weight_decay import WeightDecay

__all__ = ["ConfidencePenalty", "DPSGD", "GradClip", "InputNoise", "LabelSmoothing",
           "ParamRegulariser", "REGULARISERS", "WeightDecay"]

#: In registration order, which is the order ``rsc plugins`` lists them in.
REGULARISERS = (WeightDecay, GradClip, InputNoise, DPSGD, LabelSmoothing, ConfidencePenalty)


@hookimpl
def register_regularisers(register) -> None:
    for regulariser in REGULARISERS:
        register(regulariser)
