"""The training recipe as the user states it (``rsc train`` options, or keys of a sweep grid)
and its conversion into a validated ``TrainConfig``. One mapping for both, so a grid axis means
exactly what the ``rsc train`` option of the same name means."""
from __future__ import annotations

from typing import Any

from rsc_core.errors import ConfigError
from rsc_core.training.regularisers import build_regularisers, parse_regulariser_option
from rsc_core.training.trainer import TrainConfig

#: Every recipe option, with the value ``rsc train`` uses when it is not given. The names are
#: the ``rsc train`` options' (``--batch-size`` -> ``batch_size``; ``--model`` -> ``model_spec``).
RECIPE_DEFAULTS: dict[str, Any] = {
    "model_spec": None,
    "arch": "LargeMLP",
    "loss": "ce",
    "aug": None,
    "optimizer": "adam",
    "lr": 0.01,
    "momentum": 0.0,
    "batch_size": 128,
    "epochs": 70,
    "train_seed": 0,
    "milestones": None,
    "regularisers": (),
    "weight_decay": None,
    "grad_clip": None,
    "input_noise": None,
    "amp": False,
    "adam_impl": "fused",
    "precision": None,
}


def build_train_config(model_spec: str | None, arch: str, loss: str, aug: str | None,
                       optimizer: str, lr: float, momentum: float, batch_size: int,
                       epochs: int, train_seed: int, milestones: str | None,
                       regularisers: tuple[str, ...], weight_decay: float | None,
                       grad_clip: float | None, input_noise: float | None,
                       amp: bool, adam_impl: str = "fused",
                       precision: str | None = None) -> TrainConfig:
    """A validated ``TrainConfig`` from the recipe options: regulariser parameters, repeats
    and combinations are checked here, before any data is loaded."""
    specs = [parse_regulariser_option(text) for text in regularisers]
    for name, key, value in (("weight-decay", "value", weight_decay),
                             ("grad-clip", "value", grad_clip),
                             ("input-noise", "sigma", input_noise)):
        if value is not None:
            specs.append({"name": name, "params": {key: value}})
    built = build_regularisers(specs)
    config = TrainConfig(arch=arch, loss=loss, aug=aug, optimizer=optimizer, lr=lr,
                         momentum=momentum, batch_size=batch_size, epochs=epochs,
                         seed=train_seed, milestones=_milestones(milestones),
                         regularisers=tuple(reg.spec() for reg in built),
                         precision=_precision(precision, amp), adam_impl=adam_impl)
    config = config.with_model_spec(model_spec) if model_spec else config
    for regulariser in built:
        regulariser.check_config(config)  # e.g. label-smoothing needs loss ce
    return config


def recipe_config(options: dict[str, Any]) -> TrainConfig:
    """``build_train_config`` from the options given, every other one at its default."""
    unknown = set(options) - set(RECIPE_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown training option(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(RECIPE_DEFAULTS)}")
    return build_train_config(**{**RECIPE_DEFAULTS, **options})


def _precision(precision: str | None, amp: bool) -> str:
    """``--amp`` is the old spelling of ``--precision bf16``; both at odds is an error."""
    if amp and precision == "fp32":
        raise ConfigError("--amp means --precision bf16; give one of them, not --amp with "
                          "--precision fp32")
    return "bf16" if amp else precision or "fp32"


def _milestones(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--milestones must be comma-separated epochs, got {text!r}") from None
