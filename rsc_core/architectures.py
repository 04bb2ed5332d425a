"""The architecture interface: build a ``torch.nn.Module`` from the input shape (C, H, W) and the
number of classes. Parameter names follow the reference so its checkpoints load.

``flat_input`` says whether the network consumes flattened images (the MLPs). Such modules
flatten N x C x H x W input themselves, so callers always pass image tensors."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import nn


class Architecture(ABC):
    """A network family. Subclasses set ``name``, ``description`` and ``flat_input``."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    flat_input: ClassVar[bool] = False

    @abstractmethod
    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        """A freshly initialised module for C x H x W inputs and ``num_classes`` outputs."""


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (the figure PROTOCOL.md quotes)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
