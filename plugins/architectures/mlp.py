"""The reference's MLPs (PROTOCOL.md section 3): ``MLP``, ``MLPv2``, ``LargeMLP`` (the paper's
MNIST and Fashion-MNIST network) and ``LargeMLPv2``.

The four names are one network, ``FlatMLP``, at four widths: ReLU layers ``hidden``,
``hidden2``, ... then ``fc``, with the reference's layer names and PyTorch's default
``nn.Linear`` initialisation, so the reference's checkpoints load with ``strict=True`` and the
same seed draws the same initial weights. Images are flattened in the reference's
height-width-channel order (``flatten_hwc``)."""
from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .reference_base import DescribedArchitecture, InputShape, check_shape


def _hidden_name(index: int) -> str:
    """The reference's layer names: ``hidden``, ``hidden2``, ``hidden3``, ..."""
    return "hidden" if index == 0 else f"hidden{index + 1}"


def flatten_hwc(x: torch.Tensor, start_dim: int) -> torch.Tensor:
    """Flatten the image axes (C, H, W), which start at ``start_dim``, in height-width-channel
    order: the reference keeps images as N x H x W x C arrays and reshapes them to N x (H*W*C)
    for its MLPs. Already-flat input is returned as it is (it is taken to be in that order).

    One-channel images skip the transpose: for C = 1 both orders are the same sequence of
    pixels, and flattening the contiguous tensor directly keeps MNIST's results and speed
    exactly as they were."""
    if x.dim() == start_dim + 3 and x.shape[start_dim] > 1:
        x = x.movedim(start_dim, -1)
    return x.flatten(start_dim)


class FlatMLP(nn.Module):
    """ReLU MLP on flattened images: ``hidden``, ``hidden2``, ... then ``fc``.

    Accepts N x C x H x W (or already-flat N x d) input and flattens it itself, in the
    reference's height-width-channel order (``flatten_hwc``), so a reference checkpoint gives
    the same logits on colour images too. Layers keep PyTorch's default ``nn.Linear``
    initialisation, as in the reference."""

    def __init__(self, in_features: int, widths: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.hidden_names = tuple(_hidden_name(i) for i in range(len(widths)))
        for name, fan_in, fan_out in zip(self.hidden_names, (in_features, *widths), widths):
            self.add_module(name, nn.Linear(fan_in, fan_out))
        self.fc = nn.Linear(widths[-1] if widths else in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = flatten_hwc(x, 1)
        for name in self.hidden_names:
            x = F.relu(getattr(self, name)(x))
        return self.fc(x)

    def forward_stacked(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """K MLPs of this shape at once: ``params`` maps each parameter name to its K stacked
        copies, ``x`` is K x B x ..., the result K x B x classes. One ``baddbmm`` per layer;
        the multi-model trainer uses this instead of its generic ``vmap`` path because it
        measured faster (docs/performance.md)."""
        x = flatten_hwc(x, 2)
        for name in (*self.hidden_names, "fc"):
            weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            if name != "fc":
                x = F.relu(x)
        return x


class MLPArchitecture(DescribedArchitecture):
    """A ReLU MLP on flattened images; subclasses set ``widths``."""

    flat_input = True
    widths: ClassVar[tuple[int, ...]] = ()

    def build(self, input_shape: InputShape, num_classes: int) -> nn.Module:
        shape = check_shape(input_shape)
        return FlatMLP(math.prod(shape), self.widths, num_classes)


class MLP(MLPArchitecture):
    """MLP, one hidden layer of 256 (hidden, fc)."""

    name, widths = "MLP", (256,)


class MLPv2(MLPArchitecture):
    """MLP, two hidden layers of 256 (hidden, hidden2, fc)."""

    name, widths = "MLPv2", (256, 256)


class LargeMLP(MLPArchitecture):
    """The paper's MLP: three hidden layers of 256 (hidden, hidden2, hidden3, fc)."""

    name, widths = "LargeMLP", (256, 256, 256)


class LargeMLPv2(MLPArchitecture):
    """LargeMLP with width 512: three hidden layers of 512."""

    name, widths = "LargeMLPv2", (512, 512, 512)
