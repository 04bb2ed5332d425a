"""The reference's ``CNN002`` (PROTOCOL.md section 3): the small CNN of the TRADES code
(Zhang et al. 2019), 3x3 convolutions 32-32-pool-64-64-pool without padding, then fully
connected 200-200-classes with dropout.

It keeps the reference's module names (``feature_extractor.conv1``, ...,
``classifier.fc3``) and initialisation, so the reference's checkpoints load with
``strict=True`` and the same seed draws the same initial weights."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from rsc_core.errors import ConfigError

from .reference_base import DescribedArchitecture, InputShape, check_shape


def _cnn002_side(side: int) -> int:
    """Spatial size after CNN002's features: two unpadded 3x3 convs and a 2x2 pool, twice."""
    for _ in range(2):
        side = (side - 4) // 2
    return side


class CNN002(nn.Module):
    """The TRADES small CNN: 3x3 convs 32-32-pool-64-64-pool (no padding), fc 200-200-C.

    Convolutions get Kaiming-normal weights and zero biases, the last layer is zero; the
    hidden linear layers keep PyTorch's default initialisation."""

    def __init__(self, input_shape: InputShape, num_classes: int, drop: float = 0.5) -> None:
        super().__init__()
        channels, height, width = input_shape
        out_h, out_w = _cnn002_side(height), _cnn002_side(width)
        if out_h < 1 or out_w < 1:
            raise ConfigError(f"CNN002 needs images of at least 16x16 pixels, got {height}x{width}")
        convs = [("conv1", channels, 32), ("conv2", 32, 32), ("maxpool1", None, None),
                 ("conv3", 32, 64), ("conv4", 64, 64), ("maxpool2", None, None)]
        features: OrderedDict[str, nn.Module] = OrderedDict()
        for name, c_in, c_out in convs:
            if c_in is None:
                features[name] = nn.MaxPool2d(2, 2)
            else:
                features[name] = nn.Conv2d(c_in, c_out, 3)
                features[f"relu{name[-1]}"] = nn.ReLU()
        self.feature_extractor = nn.Sequential(features)
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64 * out_h * out_w, 200)),
            ("relu1", nn.ReLU()),
            ("drop", nn.Dropout(drop)),
            ("fc2", nn.Linear(200, 200)),
            ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(200, num_classes)),
        ]))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.classifier.fc3.weight)
        nn.init.zeros_(self.classifier.fc3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feature_extractor(x).flatten(1))


class CNN002Architecture(DescribedArchitecture):
    """Small CNN (TRADES): convs 32-32-64-64, fc 200-200, dropout 0.5, zero-initialised head."""

    name = "CNN002"

    def build(self, input_shape: InputShape, num_classes: int) -> nn.Module:
        return CNN002(check_shape(input_shape), num_classes)
