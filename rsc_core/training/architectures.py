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


def check_input(model: nn.Module, name: str, input_shape: tuple[int, int, int],
                num_classes: int) -> nn.Module:
    """Run a freshly built ``model`` once on two blank images, in eval mode and without
    gradients, and return it. Architectures made for other image sizes (a pooling stack that
    shrinks small images to nothing, a fixed patch grid) then fail here, with one line naming
    the size, instead of in the middle of training; so does one whose output is not N x
    classes logits."""
    import torch

    from rsc_core.errors import ConfigError

    size = "x".join(map(str, input_shape))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:  # whatever the library raises: one line naming the size
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"architecture {name} cannot take {size} images ({reason}); use "
                          f"larger images (e.g. size in rsc.toml with resize = true) or "
                          f"another architecture") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"architecture {name} does not return one row of {num_classes} "
                          f"logits per image on {size} images (got {got}); rsc needs a plain "
                          f"classifier")
    return model
