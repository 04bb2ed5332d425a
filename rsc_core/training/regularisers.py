"""The regulariser interface. The trainer calls these hooks from its loop, so a new
regularisation method is a plugin, never a change to the trainer:

0. ``check_config(config)`` before anything is built (the CLI calls it before loading data), to
   refuse a run configuration the regulariser cannot work with (label smoothing needs loss ce);
1. ``optimizer_options(options)`` once, before the optimizer is built (coupled weight decay);
2. ``setup(ctx)`` once, after model and optimizer exist (may wrap them, e.g. DP-SGD);
3. ``batches(ctx)`` may take over the choice of each epoch's batches (Poisson sampling);
4. per batch: ``before_forward(x, y, ctx)`` -> (x, y); ``loss(logits, y, losses, ctx)`` ->
   the per-example losses to optimise, chained in order (label smoothing, confidence
   penalty); ``backward(losses, ctx)`` may take over the backward pass from those per-example
   losses (returning True; DP-SGD's per-example clipping); ``after_backward(ctx)`` on the
   gradients; ``after_step(ctx)`` after ``optimizer.step()``;
5. ``end_epoch(ctx)`` returns extra per-epoch history fields (e.g. privacy spent);
6. ``teardown(ctx)`` once when training ends, also when it fails (remove hooks, free memory).

The loss hook works on per-example losses, not their mean, so that a per-example ``backward``
(DP-SGD) still sees one loss per example; each example's loss must depend on that example only.

Hooks are only ever called on training batches, never during evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator

import torch

from rsc_core.named_options import format_named_options, parse_named_options

if TYPE_CHECKING:
    from rsc_core.training.trainer import TrainConfig


@dataclass
class TrainContext:
    """What a hook may look at (and, in ``setup``, replace)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    num_train: int
    batch_size: int
    epochs: int
    epoch: int = 0
    generator: torch.Generator | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Regulariser:
    """Base class with no-op hooks. ``params`` is recorded in the run's config.

    ``repeatable`` says whether a run may list the regulariser more than once; most make no
    sense twice (two weight decays, two noise levels), so a repeat is refused by default."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    repeatable: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)

    def spec(self) -> dict[str, Any]:
        """The regulariser as recorded in a run config: name and parameters."""
        return {"name": self.name, "params": dict(sorted(self.params.items()))}

    def check_config(self, config: "TrainConfig") -> None:
        """Raise ``ConfigError`` if this regulariser cannot work with ``config``; called before
        any data is loaded, so a bad combination fails at once."""

    def optimizer_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return options

    def setup(self, ctx: TrainContext) -> None:
        pass

    def batches(self, ctx: TrainContext) -> Iterable[torch.Tensor] | None:
        """Return the epoch's batches of training indices, or None for the default."""
        return None

    def before_forward(self, x: torch.Tensor, y: torch.Tensor,
                       ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor, losses: torch.Tensor,
             ctx: TrainContext) -> torch.Tensor:
        """Return the per-example losses to optimise, one per example like ``losses`` (the
        base loss, or what the previous regulariser's hook returned). ``logits`` are float32.
        Their mean is what the trainer optimises and logs as ``train_loss``."""
        return losses

    def backward(self, losses: torch.Tensor, ctx: TrainContext) -> bool:
        """Compute gradients from the per-example ``losses`` and return True, or return False
        to leave the usual ``losses.mean().backward()`` to the trainer."""
        return False

    def after_backward(self, ctx: TrainContext) -> None:
        pass

    def after_step(self, ctx: TrainContext) -> None:
        pass

    def end_epoch(self, ctx: TrainContext) -> dict[str, float]:
        return {}

    def teardown(self, ctx: TrainContext) -> None:
        """Undo what ``setup`` did (hooks, buffers). Called once after training, also when it
        raised, and also when ``setup`` itself raised, so it must cope with a partial setup."""


def iter_batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Split a permutation of indices into consecutive batches (the last may be short)."""
    for start in range(0, order.numel(), batch_size):
        yield order[start:start + batch_size]


def build_regularisers(specs: Iterable[dict[str, Any]]) -> list[Regulariser]:
    """Instantiate regulariser specs ``{"name": ..., "params": {...}}`` from the registry,
    refusing a regulariser given twice unless it is ``repeatable``."""
    from rsc_core import registry

    specs = list(specs)
    regularisers = [registry("regularisers").create(spec["name"], **spec.get("params", {}))
                    for spec in specs]
    _refuse_repeats(specs, regularisers)
    return regularisers


def _refuse_repeats(specs: list[dict[str, Any]], regularisers: list[Regulariser]) -> None:
    """Two ``weight-decay`` (or ``l2``) entries used to add up silently; name both instead."""
    from rsc_core.errors import ConfigError

    first: dict[str, int] = {}
    for index, regulariser in enumerate(regularisers):
        if regulariser.name not in first:
            first[regulariser.name] = index
        elif not regulariser.repeatable:
            raise ConfigError(f"{regulariser.name} is given twice "
                              f"({format_regulariser(specs[first[regulariser.name]])} and "
                              f"{format_regulariser(specs[index])}); keep one of them")


def format_regulariser(spec: dict[str, Any]) -> str:
    """A spec in the command line's ``NAME:key=value,...`` form, for messages."""
    return format_named_options(str(spec["name"]), spec.get("params", {}))


def parse_regulariser_option(text: str) -> dict[str, Any]:
    """``NAME[:key=value,...]`` -> ``{"name": NAME, "params": {...}}`` (``named_options``)."""
    name, params = parse_named_options(text, "regulariser")
    return {"name": name, "params": params}
