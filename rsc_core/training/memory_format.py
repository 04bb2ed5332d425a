"""Which memory format a model trains in: channels-last for convolutional networks by default.

A memory format is how a 4-D tensor's values are laid out, not what they are: a convolution
computes the same sums in either layout, in a different order, so channels-last changes
results only at the level of floating-point rounding (tests/test_memory_format.py checks a
conv model's logits against NCHW). It is the faster layout for convolutions with oneDNN on CPUs
(1.3-1.8x per CIFAR-10 epoch for altResNet20Norm02, docs/performance.md) and with cuDNN's
tensor-core kernels, and it does nothing for MLPs, which flatten their input. So ``auto``, the
default, picks channels-last for any model with a 2-D convolution and the contiguous (NCHW)
layout for everything else; ``contiguous`` turns it off.

The format is a property of the machine's kernels, not of the recipe: like the device, it is
not part of a run's configuration or hash, so runs trained before the default changed are
still found and reused."""
from __future__ import annotations

import torch
from torch import nn

from rsc_core.errors import ConfigError

AUTO, CONTIGUOUS, CHANNELS_LAST = "auto", "contiguous", "channels-last"
MEMORY_FORMATS = (AUTO, CONTIGUOUS, CHANNELS_LAST)


def check_memory_format(name: str) -> str:
    """``name`` if it is one of ``MEMORY_FORMATS``, else a one-line ConfigError."""
    if name not in MEMORY_FORMATS:
        raise ConfigError(f"unknown memory format {name!r}; use one of "
                          f"{', '.join(MEMORY_FORMATS)}")
    return name


def is_convolutional(model: nn.Module) -> bool:
    """Whether ``model`` has a 2-D convolution, the layer channels-last speeds up."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def use_channels_last(name: str, model: nn.Module) -> bool:
    """Whether ``model`` trains channels-last under the memory format ``name``."""
    check_memory_format(name)
    if name == AUTO:
        return is_convolutional(model)
    return name == CHANNELS_LAST


def torch_memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every optimizer state tensor its parameter's strides, in place.

    A checkpoint keeps the layout it was trained in, and ``load_state_dict`` keeps the saved
    strides; torch's fused Adam kernel (rsc's default) then reads the moments as if they had
    the parameter's strides, and silently applies each update to the wrong elements (measured:
    one step off by the full learning rate). So a run resumed in another memory format than it
    was saved in (a run trained NCHW before channels-last became the default, or
    ``--memory-format contiguous`` on a channels-last run) needs its state re-laid first."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
