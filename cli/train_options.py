"""Training options shared by ``rsc train`` and ``rsc quickstart``, and their conversion into a
``TrainConfig`` (regulariser shortcuts included)."""
from __future__ import annotations

from typing import Any, Callable

import click

from rsc_core.errors import ConfigError
from rsc_core.hardware import PRECISIONS
from rsc_core.regularisers import build_regularisers, parse_regulariser_option
from rsc_core.training import ADAM_IMPLS, LOSSES, OPTIMIZERS, TrainConfig


def _option_list() -> list[Callable]:
    return [
        click.option("--model", "model_spec", default=None, metavar="SPEC",
                     help="Reference model spec [{aug}-]{loss}-tor-{arch}, e.g. ce-tor-LargeMLP "
                          "(instead of --arch/--loss/--aug)."),
        click.option("--arch", default="LargeMLP", show_default=True,
                     help="Architecture name (`rsc plugins` lists them)."),
        click.option("--loss", type=click.Choice(LOSSES), default="ce", show_default=True,
                     help="Training loss."),
        click.option("--aug", default=None, help="Batch augmentation: aug01 (CIFAR crop+flip)."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adam",
                     show_default=True, help="Optimizer."),
        click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate."),
        click.option("--momentum", type=float, default=0.0, show_default=True,
                     help="Momentum (sgd, rms)."),
        click.option("--batch-size", type=int, default=128, show_default=True,
                     help="Batch size."),
        click.option("--epochs", type=int, default=70, show_default=True,
                     help="Epochs (the paper uses 70)."),
        click.option("--train-seed", default="0", show_default=True, metavar="SEEDS",
                     help="Seed of initialisation and batch order (the reference's "
                          "--random_seed; the study trains every model with 0 and varies "
                          "only the dataset seed). `rsc train` also takes several: 0-4 or "
                          "0,2,5."),
        click.option("--milestones", default=None, metavar="E1,E2,...",
                     help="LR milestones (gamma 0.1); default: the reference's table."),
        click.option("--regulariser", "-r", "regularisers", multiple=True,
                     metavar="NAME[:k=v,...]",
                     help="Add a regulariser, e.g. -r weight-decay:value=1e-4, "
                          "-r input-noise:sigma=0.1,clip=true, -r label-smoothing:eps=0.1 or "
                          "-r confidence-penalty:beta=0.1. Repeat -r for several, each "
                          "regulariser at most once; `rsc plugins` lists them."),
        click.option("--weight-decay", type=float, default=None,
                     help="Shortcut for -r weight-decay:value=X (coupled L2, as the reference)."),
        click.option("--grad-clip", type=float, default=None,
                     help="Shortcut for -r grad-clip:value=X (element-wise value clipping)."),
        click.option("--input-noise", type=float, default=None,
                     help="Shortcut for -r input-noise:sigma=X (Gaussian noise on training "
                          "inputs)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                     help="Arithmetic of forward + loss: fp32 (default) or bf16 (bfloat16 "
                          "autocast, CPU or CUDA; on a CPU only with AVX512-BF16/AMX-BF16, else "
                          "set RSC_ALLOW_EMULATED_BF16=1). Recorded in the run; see "
                          "docs/usage.md."),
        click.option("--amp", is_flag=True,
                     help="Deprecated: the same as --precision bf16."),
        click.option("--adam-impl", type=click.Choice(ADAM_IMPLS), default="fused",
                     show_default=True,
                     help="torch's Adam kernel: fused (fastest), foreach, or single (torch's "
                          "own default on CPU). Same update up to rounding, which can decide "
                          "whether a few spurious examples are memorised; recorded in the run."),
    ]


def train_options(fn: Callable) -> Callable:
    for option in reversed(_option_list()):
        fn = option(fn)
    return fn


def build_train_config(model_spec: str | None, arch: str, loss: str, aug: str | None,
                       optimizer: str, lr: float, momentum: float, batch_size: int,
                       epochs: int, train_seed: int, milestones: str | None,
                       regularisers: tuple[str, ...], weight_decay: float | None,
                       grad_clip: float | None, input_noise: float | None,
                       amp: bool, adam_impl: str = "fused",
                       precision: str | None = None) -> TrainConfig:
    """A validated ``TrainConfig`` from the command-line values: regulariser parameters, repeats
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


def split_train_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the training options from a command's other keyword arguments."""
    names = {"model_spec", "arch", "loss", "aug", "optimizer", "lr", "momentum", "batch_size",
             "epochs", "train_seed", "milestones", "regularisers", "weight_decay", "grad_clip",
             "input_noise", "amp", "adam_impl", "precision"}
    return ({k: v for k, v in kwargs.items() if k in names},
            {k: v for k, v in kwargs.items() if k not in names})
