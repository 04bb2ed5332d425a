"""Regularisers that cannot be trained together, and the error that says why.

Each regulariser of such a pair checks for the other in its ``setup`` (through
``TrainContext.extras``), so the error is the same whichever of the two is given first."""
from __future__ import annotations

from rsc_core.errors import ConfigError


def dp_with_grad_clip() -> ConfigError:
    """``dp-sgd`` and ``grad-clip`` together: the clipping would be silently undone."""
    return ConfigError("dp-sgd cannot be combined with grad-clip: DP-SGD already clips each "
                       "example's gradient to max_grad_norm, and grad-clip would only touch the "
                       "summed gradient that DP-SGD then replaces; drop grad-clip")
