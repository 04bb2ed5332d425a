"""Built-in membership-inference attacks (PROTOCOL.md section 8), one per module:
``shadow-lr`` (the study's), ``loss-threshold`` (Yeom et al. 2018), LiRA (Carlini et al.
2022) as ``lira`` (online) and ``lira-offline``, and offline RMIA (Zarifzadeh et al. 2024) as
``rmia``."""
from __future__ import annotations

from rsc_core import hookimpl

from .lira import LiRAOffline, LiRAOnline
from .loss_threshold import LossThreshold
from .rmia import RMIAOffline
from .shadow_lr import ShadowLogisticRegression

__all__ = ["LiRAOffline", "LiRAOnline", "LossThreshold", "RMIAOffline",
           "ShadowLogisticRegression"]


@hookimpl
def register_attacks(register) -> None:
    register(ShadowLogisticRegression)
    register(LossThreshold)
    register(LiRAOnline)
    register(LiRAOffline)
    register(RMIAOffline)
