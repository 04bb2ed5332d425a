"""The data-removal interface (PROTOCOL.md section 7): given a finished run and the training
examples to forget, return a model that approximates one trained without them.

A remover receives one ``RemovalRequest`` (the source run, the forget set, its resolved
options, the device, and the source's training set already loaded: exactly the rows the source
trained on, so that a remover working on ``data.train`` and ``forget`` is right for a source
trained on a subset with no special case) and returns a ``RemovalResult`` (the new weights
plus facts about how they were obtained: steps taken, residuals, a trained run's folder).
Everything around it (parsing the forget set, the new run folder linked to its source, the
before/after numbers, reuse and atomic writes) is ``rsc_core.removal_runs``, so a
third-party method is only the maths.

Options are declared, not parsed ad hoc: ``defaults`` names every option a method accepts with
its default value (whose type is the option's type); ``resolve_options`` fills and checks them
and may compute defaults that depend on the run (LiSSA's scale per dataset). The resolved
options are part of the removal's identity, so two removals differ exactly when their options
do."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np
import torch

from rsc_core.errors import ConfigError
from rsc_core.named_options import convert_option

if TYPE_CHECKING:
    from rsc_core.runs.folder import Run
    from rsc_core.data.planting import SpuriousDataset
    from rsc_core.data.subsets import TrainSubset


@dataclass(frozen=True)
class RemovalRequest:
    """What a remover works on. ``data`` is the source run's training set as it trained: its
    planted dataset restricted to the rows it trained on (its ``--exclude`` or kept rows), in
    original order, and ``forget`` holds the sorted, distinct positions of the examples to
    forget in ``data.train`` (the original training indices when the source trained on every
    row; ``forget_indices`` always are). ``training_subset`` is what a model without the forget
    set trains on, in original numbering, and ``planted`` the whole planted dataset it numbers:
    for methods that train runs of their own (``retrain``), with ``runs_dir``, ``data_dir`` and
    ``progress``."""

    source: "Run"
    forget: np.ndarray
    options: Mapping[str, Any]
    device: torch.device
    data: "SpuriousDataset"
    runs_dir: Path | None = None
    data_dir: Path | None = None
    progress: bool = False
    forget_indices: np.ndarray | None = None
    training_subset: "TrainSubset | None" = None
    planted: "SpuriousDataset | None" = None


@dataclass
class RemovalResult:
    """The new model weights (a ``state_dict`` for the source's architecture) and facts about
    the computation (JSON-able values) that the removal folder records. A method that keeps an
    optimizer state worth resuming from (incremental retraining) may return it too."""

    state_dict: dict[str, torch.Tensor]
    facts: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Remover(ABC):
    """A data-removal method. Subclasses set ``name``, ``description`` and ``defaults`` and
    implement ``remove``; they may refine ``resolve_options``."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    #: Every option the method accepts, with its default (None: computed by resolve_options).
    defaults: ClassVar[dict[str, Any]] = {}
    #: The option's type where its default is None (otherwise the default's type).
    types: ClassVar[dict[str, type]] = {}

    def resolve_options(self, options: Mapping[str, Any], source: "Run",
                        forget: np.ndarray) -> dict[str, Any]:
        """Every declared option, given or default, converted to its type; an option the
        method does not have is one error naming those it has."""
        from rsc_core.named_options import check_known_options

        check_known_options(f"method {self.name}", options, self.defaults)
        resolved = dict(self.defaults)
        for key, value in options.items():
            if value is not None:
                resolved[key] = self._convert(key, value)
        return resolved

    def _convert(self, key: str, value: Any) -> Any:
        kind = self.types.get(key) or type(self.defaults[key])
        return convert_option(key, value, kind, f"method {self.name}")

    def tag(self, options: Mapping[str, Any]) -> str:
        """A short readable label of the options that matter most, put in the removal folder's
        name (``..._rm-<method>-<tag>-<hash>``) so removals can be told apart by a glob; the
        hash still covers every option. Empty by default."""
        return ""

    @abstractmethod
    def remove(self, request: RemovalRequest) -> RemovalResult:
        """Return the weights after removing ``request.forget`` from the source's training set.
        Raise an ``RscError`` (one line) on bad input or a diverging computation; never return
        non-finite weights."""
