"""The reference's architectures (PROTOCOL.md section 3), re-implemented for rsc.

Every module keeps the reference's parameter and buffer names and shapes, so its checkpoints
(``model_state_dict``) load with ``strict=True``, and the reference's initialisation scheme.
Modules are also built and initialised in the reference's order, so the same seed draws the
same initial weights.

Three builders cover the twelve names: ``FlatMLP`` (widths), ``AltResNet`` (depth and
optional in-model normalisation) and ``VGG`` (layer configuration and normalisation); ``CNN002``
is the small TRADES CNN. In-model normalisation uses non-persistent buffers: like the
reference's plain attributes they stay out of ``state_dict``, but they follow ``.to()``.
"""
from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsc_core.training.architectures import Architecture
from rsc_core.errors import ConfigError

InputShape = tuple[int, int, int]

#: The CIFAR-10 statistics the reference's ``...Norm02`` models divide out.
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
NORM02: tuple[tuple[float, ...], tuple[float, ...]] = (CIFAR_MEAN, CIFAR_STD)

#: VGG-16, configuration D: output channels of each 3x3 conv, "M" for a 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")


# --------------------------------------------------------------------------- shared pieces


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


def _normaliser(input_shape: InputShape,
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


def _check_shape(input_shape: Sequence[int]) -> InputShape:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input shape must be (channels, height, width), got {input_shape!r}")
    return shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- MLPs


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


# --------------------------------------------------------------------------- CNN002


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


# --------------------------------------------------------------------------- CIFAR ResNets


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
        self.normalise = _normaliser(input_shape, normalisation)
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


# --------------------------------------------------------------------------- VGG


class VGG(nn.Module):
    """VGG (torchvision layout, no batch norm): ``features``, 7x7 adaptive average pool and a
    4096-4096-C ``classifier`` with dropout.

    Convs get Kaiming-normal (fan-out) weights, linear layers N(0, 0.01); all biases are 0."""

    def __init__(self, input_shape: InputShape, num_classes: int, config: Sequence[int | str],
                 normalisation: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        super().__init__()
        self.normalise = _normaliser(input_shape, normalisation)
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


# --------------------------------------------------------------------------- registered names


class _DescribedArchitecture(Architecture):
    """Fills ``description`` from the first line of each subclass's docstring."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "description" not in cls.__dict__:
            doc = inspect.getdoc(cls) or ""
            cls.description = doc.strip().splitlines()[0] if doc.strip() else ""


class MLPArchitecture(_DescribedArchitecture):
    """A ReLU MLP on flattened images; subclasses set ``widths``."""

    flat_input = True
    widths: ClassVar[tuple[int, ...]] = ()

    def build(self, input_shape: InputShape, num_classes: int) -> nn.Module:
        shape = _check_shape(input_shape)
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


class CNN002Architecture(_DescribedArchitecture):
    """Small CNN (TRADES): convs 32-32-64-64, fc 200-200, dropout 0.5, zero-initialised head."""

    name = "CNN002"

    def build(self, input_shape: InputShape, num_classes: int) -> nn.Module:
        return CNN002(_check_shape(input_shape), num_classes)


class AltResNetArchitecture(_DescribedArchitecture):
    """A CIFAR ResNet; subclasses set ``depth`` and optionally ``normalisation``."""

    depth: ClassVar[int] = 20
    normalisation: ClassVar[tuple[Sequence[float], Sequence[float]] | None] = None

    def build(self, input_shape: InputShape, num_classes: int) -> nn.Module:
        return AltResNet(_check_shape(input_shape), num_classes, self.depth, self.normalisation)


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


class Vgg16Norm02(_DescribedArchitecture):
    """VGG-16 (config D, 4096-4096 head) that normalises its input with CIFAR-10 mean and std."""

    name = "Vgg16Norm02"

    def build(self, input_shape: InputShape, num_classes: int) -> nn.Module:
        return VGG(_check_shape(input_shape), num_classes, VGG16_CONFIG, NORM02)


ARCHITECTURES: tuple[type[Architecture], ...] = (
    MLP, MLPv2, LargeMLP, LargeMLPv2, CNN002Architecture,
    AltResNet20, AltResNet32, AltResNet110,
    AltResNet20Norm02, AltResNet32Norm02, AltResNet110Norm02,
    Vgg16Norm02,
)
