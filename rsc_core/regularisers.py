"""The regulariser interface. The trainer calls these hooks from its loop, so a new
regularisation method is a plugin, never a change to the trainer:

1. ``optimizer_options(options)`` once, before the optimizer is built (coupled weight decay);
2. ``setup(ctx)`` once, after model and optimizer exist (may wrap them, e.g. DP-SGD);
3. ``batches(ctx)`` may take over the choice of each epoch's batches (Poisson sampling);
4. per batch: ``before_forward(x, y, ctx)`` -> (x, y); ``backward(losses, ctx)`` may take over
   the backward pass from the per-example losses (returning True; DP-SGD's per-example
   clipping); ``after_backward(ctx)`` on the gradients; ``after_step(ctx)`` after
   ``optimizer.step()``;
5. ``end_epoch(ctx)`` returns extra per-epoch history fields (e.g. privacy spent).

Hooks are only ever called on training batches, never during evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import torch


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
    """Base class with no-op hooks. ``params`` is recorded in the run's config."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)

    def spec(self) -> dict[str, Any]:
        """The regulariser as recorded in a run config: name and parameters."""
        return {"name": self.name, "params": dict(sorted(self.params.items()))}

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


def iter_batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Split a permutation of indices into consecutive batches (the last may be short)."""
    for start in range(0, order.numel(), batch_size):
        yield order[start:start + batch_size]


def build_regularisers(specs: Iterable[dict[str, Any]]) -> list[Regulariser]:
    """Instantiate regulariser specs ``{"name": ..., "params": {...}}`` from the registry."""
    from . import registry

    return [registry("regularisers").create(spec["name"], **spec.get("params", {}))
            for spec in specs]


def parse_regulariser_option(text: str) -> dict[str, Any]:
    """``NAME[:key=value,...]`` -> ``{"name": NAME, "params": {...}}``; values are parsed as
    int, float, true/false, or kept as strings."""
    from .errors import ConfigError

    name, _, rest = text.partition(":")
    if not name.strip():
        raise ConfigError(f"bad regulariser {text!r}; expected NAME[:key=value,...]")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad regulariser parameter {item!r} in {text!r}; "
                              f"expected key=value")
        params[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return {"name": name.strip(), "params": params}


def _parse_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value
