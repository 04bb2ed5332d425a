"""The parts of the ``erm`` recipe that the single trainer (``erm``) and the group trainer
(``erm_group``) must share exactly, so that a member of a group trains as its run would alone:
each epoch's seed, the Adam kernel actually used on a device, and the error for a one-image
batch that BatchNorm cannot train on. Both trainers import them from here, so the imports run
one way: ``erm`` -> ``erm_group`` -> ``erm_recipe``."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rsc_core.errors import ConfigError
from rsc_core.training.trainer import TrainConfig


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed for each (run seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def adam_impl(requested: str, device: torch.device) -> str:
    """torch has fused Adam kernels for CPU and CUDA only; elsewhere (mps, xpu) the recorded
    ``fused`` falls back to ``foreach``."""
    if requested == "fused" and device.type not in ("cpu", "cuda"):
        return "foreach"
    return requested


@contextmanager
def one_image_batch_guard(config: TrainConfig, num_train: int) -> Iterator[None]:
    """BatchNorm cannot normalise a single value per channel while training: one image in the
    last batch through a network whose feature map shrinks to 1x1 (e.g. a torchvision ResNet
    on small images) makes torch raise a ValueError deep inside the model. Say instead what to
    change."""
    try:
        yield
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise ConfigError(f"a batch of one image reached a BatchNorm layer with a 1x1 feature "
                          f"map, which cannot be trained on ({num_train} training images in "
                          f"batches of {config.batch_size} leave one in the last batch); "
                          f"choose another --batch-size, or use larger images") from None
