"""Training building blocks shared by trainers: the run configuration, the reference's model-spec
names, losses, optimizers, the MultiStepLR milestone table and batch-wise augmentation
(PROTOCOL.md section 4), plus the trainer interface itself."""
from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsc_core.data.datasets import ImageData
from rsc_core.errors import ConfigError
from rsc_core.training.hardware import PRECISIONS

OPTIMIZERS = ("sgd", "adam", "adagrad", "rms")
LOSSES = ("ce", "mse", "kld")
AUGMENTATIONS = ("aug01",)
#: Adam kernels: torch's fused single kernel (rsc's default, fastest on CPU), its multi-tensor
#: ``foreach`` path, and its per-parameter ``single`` loop (torch's own default on CPU). They
#: compute the same update and differ only in floating-point rounding.
ADAM_IMPLS = ("fused", "foreach", "single")
MAX_TRAIN_SEED = 2**63 - 1  # torch.manual_seed's limit
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: ``arch`` may hold ``:`` and ``.`` for family names such as ``torchvision:resnet18``.
_MODEL_SPEC = re.compile(
    r"(?:(?P<aug>[a-z0-9]+)-)?(?P<loss>[a-z]+)-tor-(?P<arch>[A-Za-z0-9_.:]+)")


@dataclass(frozen=True)
class ModelSpec:
    """The reference's model name ``[{aug}-]{loss}-tor-{arch}``, e.g. ``ce-tor-LargeMLP``."""

    arch: str
    loss: str = "ce"
    aug: str | None = None

    @property
    def name(self) -> str:
        return f"{self.aug + '-' if self.aug else ''}{self.loss}-tor-{self.arch}"


def parse_model_spec(text: str) -> ModelSpec:
    match = _MODEL_SPEC.fullmatch(text or "")
    if match is None:
        raise ConfigError(f"cannot parse model spec {text!r}; expected [{{aug}}-]{{loss}}-tor-"
                          f"{{arch}}, e.g. ce-tor-LargeMLP or aug01-ce-tor-altResNet20Norm02")
    return ModelSpec(match["arch"], match["loss"], match["aug"])


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (device choices excepted)."""

    arch: str = "LargeMLP"
    loss: str = "ce"
    aug: str | None = None
    optimizer: str = "adam"
    lr: float = 0.01
    momentum: float = 0.0
    batch_size: int = 128
    epochs: int = 70
    seed: int = 0
    milestones: tuple[int, ...] | None = None  # None: the reference's table
    regularisers: tuple[dict, ...] = ()  # ({"name": ..., "params": {...}}, ...)
    trainer: str = "erm"
    precision: str = "fp32"  # or "bf16": autocast of forward + loss (changes numerics)
    adam_impl: str = "fused"  # which of torch's Adam kernels (rounding differs, so recorded)

    def __post_init__(self) -> None:
        self.validate()
        # Equivalent configurations must hash the same: the reference's own milestones for
        # this epoch count are stored as None, whichever way they were given.
        if self.milestones is not None:
            milestones = tuple(int(m) for m in self.milestones)
            if milestones == reference_milestones(self.epochs):
                milestones = None
            object.__setattr__(self, "milestones", milestones)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; use one of "
                              f"{', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if self.aug is not None and self.aug not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {self.aug!r}; use one of "
                              f"{', '.join(AUGMENTATIONS)}")
        for value, what in ((self.lr, "learning rate"), (self.batch_size, "batch size"),
                            (self.epochs, "epochs")):
            if not value > 0:
                raise ConfigError(f"{what} must be positive, got {value}")
        if self.momentum < 0:
            raise ConfigError(f"momentum must be non-negative, got {self.momentum}")
        if not math.isfinite(self.lr) or not math.isfinite(self.momentum):
            raise ConfigError(f"learning rate and momentum must be finite numbers, got lr "
                              f"{self.lr!r}, momentum {self.momentum!r}")
        for value, what in ((self.lr, "learning rate"), (self.momentum, "momentum")):
            if value > FLOAT32_MAX:  # optimizers pass it to float32 kernels, which overflow
                raise ConfigError(f"{what} {value!r} is larger than the largest float32 "
                                  f"({FLOAT32_MAX:.4g}), which PyTorch's optimizers cannot use")
        if not 0 <= self.seed <= MAX_TRAIN_SEED:  # torch.manual_seed overflows beyond
            raise ConfigError(f"training seed must be an integer in [0, {MAX_TRAIN_SEED}], got "
                              f"{self.seed}")
        if self.adam_impl not in ADAM_IMPLS:
            raise ConfigError(f"unknown Adam implementation {self.adam_impl!r}; use one of "
                              f"{', '.join(ADAM_IMPLS)}")
        if self.optimizer != "adam" and self.adam_impl != "fused":
            raise ConfigError(f"--adam-impl applies to Adam only; this run uses "
                              f"{self.optimizer}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; use one of "
                              f"{', '.join(PRECISIONS)}")
        if self.milestones is not None:
            _check_milestones(self.milestones)

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec(self.arch, self.loss, self.aug)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["milestones"] = list(self.milestones) if self.milestones is not None else None
        data["regularisers"] = [dict(r) for r in self.regularisers]
        # fp32 is written as the field it replaced, ``"amp": false``, so that runs trained
        # before ``precision`` existed keep their hash (and folder): they are fp32 runs.
        if data.pop("precision") == "fp32":
            data["amp"] = False
        else:
            data["precision"] = self.precision
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        if data.get("milestones") is not None:
            data["milestones"] = tuple(data["milestones"])
        data["regularisers"] = tuple(data.get("regularisers") or ())
        amp = data.pop("amp", False)  # configs before ``precision``: amp meant bf16 autocast
        data.setdefault("precision", "bf16" if amp else "fp32")
        return cls(**data)

    def with_model_spec(self, text: str) -> "TrainConfig":
        spec = parse_model_spec(text)
        return replace(self, arch=spec.arch, loss=spec.loss, aug=spec.aug)


def _check_milestones(milestones: Sequence[int]) -> None:
    """Milestones must be positive epochs in strictly increasing order: MultiStepLR silently
    counts a repeated milestone twice (decaying by 0.01) and ignores none of the others."""
    values = list(milestones)
    if not values:
        raise ConfigError("milestones must name at least one epoch (omit them for the "
                          "reference's table)")
    if any(isinstance(m, bool) or not isinstance(m, int) or m <= 0 for m in values):
        raise ConfigError(f"milestones must be positive whole epochs, got "
                          f"{','.join(map(str, values))}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"milestones must be strictly increasing, got "
                          f"{','.join(map(str, values))}")


# The reference's MultiStepLR table: (largest epoch count, milestones).
_MILESTONES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (30, (15, 25)), (40, (20, 30)), (50, (25, 40)), (60, (30, 50)), (70, (40, 50, 60)),
    (80, (40, 60, 70)), (120, (50, 90, 110)), (140, (60, 100, 120)),
    (160, (40, 80, 120, 140)), (200, (80, 140, 180)),
)


def reference_milestones(epochs: int) -> tuple[int, ...]:
    """Milestones (gamma 0.1) the reference uses for a run of ``epochs`` epochs."""
    for limit, milestones in _MILESTONES:
        if epochs <= limit:
            return milestones
    return (60, 120)


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-example loss (reduction 'none'). ``mse`` compares logits with one-hot targets;
    ``kld`` is the KL divergence to a one-hot smoothed with eps 1e-6, as the reference."""
    if name == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, reduction="none")
    if name == "mse":
        return lambda logits, y: F.mse_loss(
            logits, F.one_hot(y, logits.shape[1]).to(logits.dtype), reduction="none").mean(1)
    if name == "kld":
        return _kld_loss
    raise ConfigError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")


def _kld_loss(logits: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    classes = logits.shape[1]
    target = torch.full_like(logits, eps).scatter_(1, y.unsqueeze(1), 1 - eps * (classes - 1))
    return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="none").sum(1)


def make_optimizer(name: str, params: Any, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0, *,
                   adam_impl: str = "single") -> torch.optim.Optimizer:
    """The reference's optimizers; weight decay is the optimizer's coupled L2 term. Adam and
    Adagrad have no momentum argument (the reference passed it to Adagrad, which fails).

    ``adam_impl`` picks torch's Adam kernel (``ADAM_IMPLS``): ``fused`` is the same update up to
    rounding, 1.2-1.5x faster per epoch on a CPU because the others run many small ops per
    parameter. Rounding can decide whether a handful of examples is memorised, so the choice
    is part of a run's configuration."""
    if name == "adam":
        kernel = {"fused": {"fused": True}, "foreach": {"foreach": True},
                  "single": {"foreach": False}}[adam_impl]
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kernel)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "rms":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


AUG01_PAD = 4  # RandomCrop(32, padding=4): offsets 0..8 in the zero-padded image


def aug01_draws(n: int, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """The random part of ``aug01`` for ``n`` images: row and column offsets of the crop in the
    padded image, uniform on 0..8 each, and whether to mirror, with probability 1/2; all
    independent (torchvision draws the same per image). Drawn in this order: the row offsets,
    the column offsets, the flips."""
    dy = torch.randint(0, 2 * AUG01_PAD + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * AUG01_PAD + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return dy, dx, flip


def aug01_apply(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                flip: torch.Tensor) -> torch.Tensor:
    """Crop each image of ``x`` (N x C x H x W) at its offsets from the image padded with 4
    zero pixels per side, mirrored left-right where ``flip``; then round each pixel down to
    1/255 steps, as the reference's ``ToPILImage()`` (``x.mul(255).byte()``) and
    ``ToTensor()`` (``/ 255``) do around its crop. Images made of 8-bit pixels, whole or with
    a square pattern set to 1, pass that rounding unchanged; noise patterns (R1-R3) are
    rounded down in training images, as in the reference.

    One gather does crop and flip together (a mirrored crop reads its columns in reverse), in
    the input's memory format, so a channels-last batch stays channels-last."""
    n, channels, height, width = x.shape
    pad = AUG01_PAD
    columns = torch.arange(width, device=x.device)
    columns = torch.where(flip[:, None], columns.flip(0), columns) + dx[:, None]
    rows = dy[:, None] + torch.arange(height, device=x.device)
    padded_pixels, padded_width = (height + 2 * pad) * (width + 2 * pad), width + 2 * pad
    index = (rows[:, :, None] * padded_width + columns[:, None, :]).view(n, height * width)
    padded = F.pad(x, (pad, pad, pad, pad))
    if _is_channels_last(x):  # gather whole pixels (C values each) from N x H'W' x C
        source = padded.permute(0, 2, 3, 1).reshape(n, padded_pixels, channels)
        index = index[:, :, None].expand(n, height * width, channels)
        out = torch.gather(source, 1, index).view(n, height, width, channels)
        out = out.permute(0, 3, 1, 2)
    else:  # gather each channel's pixels from N x C x H'W'
        index = index[:, None, :].expand(n, channels, height * width)
        source = padded.reshape(n, channels, padded_pixels)
        out = torch.gather(source, 2, index)
        out = out.view(n, channels, height, width)
    # floor == the reference's byte() truncation for pixels in [0, 1], and cheaper
    return out.mul_(255).floor_().div_(255)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def augment_aug01(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The reference's ``aug01`` on a whole batch: ``RandomCrop(32, padding=4)`` (zero
    padding) and ``RandomHorizontalFlip()`` per image, drawn from ``generator``
    (``aug01_draws``, ``aug01_apply``; tests/test_cifar.py checks the distribution and the
    pixels against torchvision's transforms)."""
    return aug01_apply(x, *aug01_draws(x.shape[0], generator, x.device))


AUGMENT: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "aug01": augment_aug01,
}


@dataclass
class TrainState:
    """Where training stands; what a checkpoint holds besides the tensors."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)


EpochCallback = Callable[[TrainState, nn.Module, torch.optim.Optimizer, Any], None]


class Trainer(ABC):
    """Trains a model on a training split, evaluating on a test split each epoch."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    @abstractmethod
    def fit(self, model: nn.Module, train: ImageData, test: ImageData | None,
            config: TrainConfig, regularisers: Sequence[Any] = (), *,
            device: torch.device | str = "cpu", resume: dict[str, Any] | None = None,
            on_epoch: EpochCallback | None = None, progress: bool = False,
            channels_last: bool = False) -> TrainState:
        """Train ``model`` in place; ``resume`` is a checkpoint dict to continue from."""
