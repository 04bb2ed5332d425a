"""The reference's CIFAR ResNets (PROTOCOL.md section 3; He et al. 2016, section 4.2):
``altResNet20``, ``altResNet32``, ``altResNet110`` and their ``...Norm02`` variants, which
normalise their input with the CIFAR-10 mean and standard deviation inside the model.

The six names are one network, ``AltResNet``, at three depths with or without in-model
normalisation. It keeps the reference's module names, zero-padding (option-A) shortcuts,
pooling and initialisation, built in the reference's order, so the reference's checkpoints load
with ``strict=True`` and the same seed draws the same initial weights."""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsc_core.errors import ConfigError

from .reference_base import NORM02, DescribedArchitecture, InputShape, check_shape, normaliser


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (0, 0, 0, 0, extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], self.pad, "constant", 0.0)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ZeroPadShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class AltResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, section 4.2): 6n+2 layers, 16/32/64 channels, option-A
    shortcuts, average pooling over the whole final feature map (the reference's
    ``avg_pool2d``) and a ``linear`` head.

    Conv and linear weights get Kaiming-normal initialisation (fan-in); the linear bias and
    batch-norm layers keep PyTorch's defaults, as in the reference."""

    def __init__(self, input_shape: InputShape, num_classes: int, depth: int,
                 normalisation: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 110, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.normalise = normaliser(input_shape, normalisation)
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for index, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            layer = []
            for block_stride in [stride] + [1] * (blocks - 1):
                layer.append(BasicBlock(in_planes, planes, block_stride))
                in_planes = planes
            self.add_module(f"layer{index}", nn.Sequential(*layer))
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalise(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        # The reference's pooling, ``F.avg_pool2d(out, out.size()[3])``: the kernel covers the
        # whole feature map. ``adaptive_avg_pool2d(out, 1)`` sums in another order and differs
        # in the last bit, so a reference checkpoint would not give the reference's logits.
        # A (height, width) kernel is the same kernel on square maps and also fits others.
        out = F.avg_pool2d(out, tuple(out.shape[-2:]))
        return self.linear(out.flatten(1))


class AltResNetArchitecture(DescribedArchitecture):
    """A CIFAR ResNet; subclasses set ``depth`` and optionally ``normalisation``."""

    depth: ClassVar[int] = 20
    normalisation: ClassVar[tuple[Sequence[float], Sequence[float]] | None] = None

    def build(self, input_shape: InputShape, num_classes: int) -> nn.Module:
        return AltResNet(check_shape(input_shape), num_classes, self.depth, self.normalisation)


class AltResNet20(AltResNetArchitecture):
    """CIFAR ResNet-20 with zero-padding (option-A) shortcuts."""

    name, depth = "altResNet20", 20


class AltResNet32(AltResNetArchitecture):
    """CIFAR ResNet-32 with zero-padding (option-A) shortcuts."""

    name, depth = "altResNet32", 32


class AltResNet110(AltResNetArchitecture):
    """CIFAR ResNet-110 with zero-padding (option-A) shortcuts."""

    name, depth = "altResNet110", 110


class AltResNet20Norm02(AltResNet20):
    """CIFAR ResNet-20 that normalises its input with CIFAR-10 mean and std."""

    name, normalisation = "altResNet20Norm02", NORM02


class AltResNet32Norm02(AltResNet32):
    """CIFAR ResNet-32 that normalises its input with CIFAR-10 mean and std."""

    name, normalisation = "altResNet32Norm02", NORM02


class AltResNet110Norm02(AltResNet110):
    """CIFAR ResNet-110 that normalises its input with CIFAR-10 mean and std."""

    name, normalisation = "altResNet110Norm02", NORM02
