"""Stage 2, training: turning a dataset into a model. The training recipe
(``TrainConfig``), the trainer, architecture and regulariser interfaces, training several
models at once, precision and memory format.

Imports the kernel and ``data``. The old flat module ``rsc_core.training`` was the trainer;
its names are re-exported here so ``from rsc_core.training import TrainConfig`` works.
"""
from __future__ import annotations

from rsc_core.training.trainer import (OPTIMIZERS, LOSSES, AUGMENTATIONS, ADAM_IMPLS,
    MAX_TRAIN_SEED, FLOAT32_MAX, ModelSpec, parse_model_spec, TrainConfig,
    reference_milestones, make_loss, make_optimizer, AUG01_PAD, aug01_draws, aug01_apply,
    augment_aug01, TrainState, EpochCallback, Trainer)

__all__ = ['OPTIMIZERS', 'LOSSES', 'AUGMENTATIONS', 'ADAM_IMPLS', 'MAX_TRAIN_SEED',
           'FLOAT32_MAX', 'ModelSpec', 'parse_model_spec', 'TrainConfig',
           'reference_milestones', 'make_loss', 'make_optimizer', 'AUG01_PAD', 'aug01_draws',
           'aug01_apply', 'augment_aug01', 'TrainState', 'EpochCallback', 'Trainer']
