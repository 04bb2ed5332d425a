"""The multi-model (group) training interface: K runs that share an architecture and a recipe
train in one process, in lockstep, as one batched computation. A trainer plugin offers it by
subclassing ``GroupTrainer`` next to ``Trainer``; ``rsc_core.group_runs`` decides which runs
can share a group and writes each member's run folder exactly as a single run.

Faithfulness is the contract: member k starts from the weights its own seed draws and sees the
batch sequence its own seed orders, on its own patterned rows, so it ends where the single run
with its seeds ends, up to the rounding of a batched computation.

That rounding depends on the group a run trains in, so a run must resume in the group it
started in: the members save each epoch's checkpoints together (``saving_together``), never
leaving some at epoch e and others at e - 1 (which would resume in other groups and end with
other numbers than the uninterrupted command)."""
from __future__ import annotations

import signal
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from rsc_core.data.datasets import ImageData
from rsc_core.training.trainer import TrainConfig, TrainState


@dataclass(frozen=True)
class GroupMember:
    """One run of a group: its configuration (seeds, regulariser values) and the training rows
    its spec replaces in the shared base set. The base set is held once for the whole group;
    a member only adds its few patterned rows, never a copy of the data."""

    config: TrainConfig
    patched_index: torch.Tensor  # int64 indices into the base training set
    patched_images: torch.Tensor  # the rows that replace them (pattern applied)
    #: The base rows this member trains on, sorted (None: all). Members of a group train on
    #: equally many rows, so their epochs have the same number of batches.
    rows: torch.Tensor | None = None


#: ``on_epoch(k, state, model_state, optimizer_state, scheduler_state)`` after every epoch for
#: member k, with state dicts in the single-model format (so a single run can resume them).
GroupEpochCallback = Callable[[int, TrainState, dict, dict, dict], None]

#: The signals held while a group saves one epoch: Ctrl-C, and ``kill``/Slurm's stop.
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def saving_together() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while the members of a group save one epoch's checkpoints (a
    group trainer calls ``on_epoch`` for every member of an epoch inside it), then deliver
    them: an interrupt never leaves the members at different epochs. Signals reach Python's
    main thread only, so elsewhere (a Dask worker thread) this does nothing; a SIGKILL
    cannot be held (its window is the few milliseconds of saving)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for number in HELD_SIGNALS:
        if signal.getsignal(number) is not None:  # None: a handler Python cannot restore
            previous[number] = signal.signal(number, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(held):
            signal.raise_signal(number)  # now handled as usual: KeyboardInterrupt for Ctrl-C


class GroupTrainer(ABC):
    """A trainer that can train several compatible runs at once."""

    @abstractmethod
    def group_key(self, config: TrainConfig) -> Any:
        """What runs must share to train in one group (hashable), or None when ``config``
        cannot be trained in a group (it is then trained alone, e.g. DP-SGD)."""

    @abstractmethod
    def fit_group(self, models: Sequence[nn.Module], base: ImageData,
                  members: Sequence[GroupMember], test: ImageData | None, *,
                  device: torch.device | str = "cpu",
                  resume: Sequence[dict[str, Any] | None] | None = None,
                  on_epoch: GroupEpochCallback | None = None,
                  progress: bool = False) -> list[TrainState | BaseException]:
        """Train ``models[k]`` as ``members[k]`` describes; return each member's final state,
        or the exception that stopped that member alone (e.g. its loss diverged). ``resume``
        holds each member's checkpoint dict (all at one epoch) or None. Call ``on_epoch``
        for the members of one epoch inside ``saving_together()``."""
