"""What the reference's architectures share: the input-shape check, the in-model
normalisation of the ``...Norm02`` variants, and the base class that takes each registered
name's description from its docstring.

In-model normalisation uses non-persistent buffers: like the reference's plain attributes they
stay out of ``state_dict`` (so the reference's checkpoints load with ``strict=True``), but they
follow ``.to()``."""
from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import nn

from rsc_core.training.architectures import Architecture
from rsc_core.errors import ConfigError

InputShape = tuple[int, int, int]

#: The CIFAR-10 statistics the reference's ``...Norm02`` models divide out.
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
NORM02: tuple[tuple[float, ...], tuple[float, ...]] = (CIFAR_MEAN, CIFAR_STD)


class Normalise(nn.Module):
    """``(x - mean) / std`` per channel; the statistics are kept out of ``state_dict``."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def normaliser(input_shape: InputShape,
               normalisation: tuple[Sequence[float], Sequence[float]] | None) -> nn.Module:
    """The in-model normalisation layer, or an identity when there is none."""
    if normalisation is None:
        return nn.Identity()
    mean, std = normalisation
    if len(mean) != input_shape[0] or len(std) != input_shape[0]:
        raise ConfigError(
            f"this architecture normalises {len(mean)}-channel images but the input shape is "
            f"{tuple(input_shape)}; use the variant without 'Norm02' for {input_shape[0]}-channel "
            f"data")
    return Normalise(mean, std)


def check_shape(input_shape: Sequence[int]) -> InputShape:
    """``input_shape`` as (channels, height, width) ints, or a ``ConfigError`` saying why not."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input shape must be (channels, height, width), got {input_shape!r}")
    return shape  # type: ignore[return-value]


class DescribedArchitecture(Architecture):
    """Fills ``description`` from the first line of each subclass's docstring."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "description" not in cls.__dict__:
            doc = inspect.getdoc(cls) or ""
            cls.description = doc.strip().splitlines()[0] if doc.strip() else ""
