"""The reference's ``Vgg16Norm02`` (PROTOCOL.md section 3): VGG-16 (Simonyan and Zisserman
2015, configuration D) in torchvision's layout without batch norm, with a 4096-4096 head, that
normalises its input with the CIFAR-10 mean and standard deviation inside the model.

It keeps torchvision's module names (``features``, ``classifier``) and initialisation, as the
reference does, so the reference's checkpoints load with ``strict=True``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .reference_base import NORM02, DescribedArchitecture, InputShape, check_shape, normaliser


#: VGG-16, configuration D: output channels of each 3x3 conv, "M" for a 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG (torchvision layout, no batch norm): ``features``, 7x7 adaptive average pool and a
    4096-4096-C ``classifier`` with dropout.

    Convs get Kaiming-normal (fan-out) weights, linear layers N(0, 0.01); all biases are 0."""

    def __init__(self, input_shape: InputShape, num_classes: int, config: Sequence[int | str],
                 normalisation: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        super().__init__()
        self.normalise = normaliser(input_shape, normalisation)
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(self.normalise(x)))
        return self.classifier(x.flatten(1))


class Vgg16Norm02(DescribedArchitecture):
    """VGG-16 (config D, 4096-4096 head) that normalises its input with CIFAR-10 mean and std."""

    name = "Vgg16Norm02"

    def build(self, input_shape: InputShape, num_classes: int) -> nn.Module:
        return VGG(check_shape(input_shape), num_classes, VGG16_CONFIG, NORM02)
