"""Training options shared by ``rsc train`` and ``rsc quickstart``, and their conversion into a
``TrainConfig`` (regulariser shortcuts included), which ``rsc_core.train_recipe`` does for
both these options and the keys of a sweep grid."""
from __future__ import annotations

from typing import Any, Callable

import click

from rsc_core.training.hardware import PRECISIONS
from rsc_core.training.recipe import RECIPE_DEFAULTS, build_train_config
from rsc_core.training.trainer import ADAM_IMPLS, LOSSES, OPTIMIZERS

__all__ = ["build_train_config", "split_train_kwargs", "train_options"]
_D = RECIPE_DEFAULTS


def _option_list() -> list[Callable]:
    return [
        click.option("--model", "model_spec", default=None, metavar="SPEC",
                     help="Reference model spec [{aug}-]{loss}-tor-{arch}, e.g. ce-tor-LargeMLP "
                          "(instead of --arch/--loss/--aug)."),
        click.option("--arch", default=_D["arch"], show_default=True,
                     help="Architecture name (`rsc plugins` lists them)."),
        click.option("--loss", type=click.Choice(LOSSES), default=_D["loss"], show_default=True,
                     help="Training loss."),
        click.option("--aug", default=None, help="Batch augmentation: aug01 (CIFAR crop+flip)."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_D["optimizer"],
                     show_default=True, help="Optimizer."),
        click.option("--lr", type=float, default=_D["lr"], show_default=True,
                     help="Learning rate."),
        click.option("--momentum", type=float, default=_D["momentum"], show_default=True,
                     help="Momentum (sgd, rms)."),
        click.option("--batch-size", type=int, default=_D["batch_size"], show_default=True,
                     help="Batch size."),
        click.option("--epochs", type=int, default=_D["epochs"], show_default=True,
                     help="Epochs (the paper uses 70)."),
        click.option("--train-seed", default=str(_D["train_seed"]), show_default=True,
                     metavar="SEEDS",
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
        click.option("--adam-impl", type=click.Choice(ADAM_IMPLS), default=_D["adam_impl"],
                     show_default=True,
                     help="torch's Adam kernel: fused (fastest), foreach, or single (torch's "
                          "own default on CPU). Same update up to rounding, which can decide "
                          "whether a few spurious examples are memorised; recorded in the run."),
    ]


def train_options(fn: Callable) -> Callable:
    for option in reversed(_option_list()):
        fn = option(fn)
    return fn


def split_train_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the training options from a command's other keyword arguments."""
    names = set(RECIPE_DEFAULTS)
    return ({k: v for k, v in kwargs.items() if k in names},
            {k: v for k, v in kwargs.items() if k not in names})
