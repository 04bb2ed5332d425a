"""The auditor interface (issue 23, docs/audit.md): given a trained model and the training set
it trained on, score every training example by how likely it is to carry a rare shortcut
(higher: more suspicious), and optionally propose the shortcut itself as a pattern.

An auditor is told nothing about what was planted: it receives an ``AuditRequest`` (the model,
the training set as the run trained on it, the clean test set, its resolved options and the
device) and returns an ``AuditResult`` (one score per training row, in the request's row order,
any proposed patterns, and facts for ``audit.json``). Loading the run, checking its model,
combining several auditors, ranking and writing the results is ``rsc_core.audit``, so a
third-party auditor is only the scoring.

Options are declared in ``defaults`` (name -> default value, whose type is the option's type)
and given on the command line as ``-a NAME:key=value,...``. ``check`` refuses, with one line, a
model the auditor cannot serve (e.g. an architecture whose layers its solver does not cover)
before any expensive work starts."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from rsc_core.errors import ConfigError, RscError

if TYPE_CHECKING:
    from rsc_core.data.datasets import ImageData
    from rsc_core.runs.folder import Run


class AuditorError(RscError):
    """An auditor cannot serve this run or model (one line saying why and what to do)."""


@dataclass(frozen=True)
class AuditRequest:
    """What an auditor works on. ``train`` is the training set exactly as the model trained on
    it (planted rows patterned, a subset run's rows only); ``train_indices[i]`` is the original
    training index of row i. ``test`` is the clean test split (for auditors that probe the
    model with held-out images). ``run`` is the run folder (for auditors that look for
    reference models beside it), ``num_classes`` the model's output count."""

    model: nn.Module
    train: "ImageData"
    test: "ImageData"
    train_indices: np.ndarray
    num_classes: int
    options: Mapping[str, Any]
    device: torch.device
    run: "Run | None" = None
    progress: bool = False


@dataclass(frozen=True)
class PatternProposal:
    """A shortcut an auditor proposes: blend ``pattern`` (C x H x W in [0, 1]) into an image
    with ``mask`` (H x W in [0, 1]): x' = (1 - mask) x + mask pattern, believed to move images
    to class ``target``. ``label`` names it in file names (``<auditor>-<label>.png``);
    ``details`` are JSON-able facts (e.g. the anomaly index)."""

    label: str
    target: int
    mask: np.ndarray
    pattern: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditResult:
    """One finite score per training row (higher: more likely to carry a shortcut), proposed
    patterns, and facts about the computation (JSON-able)."""

    scores: np.ndarray
    proposals: list[PatternProposal] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


class Auditor(ABC):
    """A way of finding training examples that carry a rare shortcut. Subclasses set ``name``,
    ``description`` and ``defaults`` and implement ``audit``; they may refine ``check``."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    #: Every option the auditor accepts, with its default (whose type is the option's type).
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        self.given = dict(options)
        self.options = self.resolve_options(options)

    @property
    def label(self) -> str:
        """The name with the options given explicitly (a column of ``ranking.csv``)."""
        from rsc_core.named_options import format_named_options

        return format_named_options(self.name, self.given)

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared option, given or default, converted to the default's type; an option
        the auditor does not have is one error naming those it has."""
        from rsc_core.named_options import check_known_options

        check_known_options(f"auditor {self.name}", options, self.defaults)
        resolved = dict(self.defaults)
        for key, value in options.items():
            resolved[key] = convert_option(self.name, key, value, self.defaults[key])
        return resolved

    def check(self, model: nn.Module, run: "Run | None" = None) -> None:
        """Raise ``AuditorError`` (one line) if this auditor cannot serve ``model`` (or
        ``run``). Called before any data is loaded. Accepts everything by default."""

    @abstractmethod
    def audit(self, request: AuditRequest) -> AuditResult:
        """Score every row of ``request.train`` (higher: more suspicious). Raise an
        ``RscError`` (one line) on bad input; never return non-finite scores."""


def convert_option(auditor: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (a whole float is accepted for an int, an int for
    a float); anything else is one error naming the option."""
    kind = type(default)
    if default is None or isinstance(value, kind) and not (kind is int and
                                                           isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is str:
        return str(value)
    raise ConfigError(f"option {key!r} of auditor {auditor} must be a {kind.__name__}, got "
                      f"{value!r}")


def require(auditor: str, options: Mapping[str, Any], keys: tuple[str, ...], test: Any,
            what: str) -> None:
    """One error for the first of ``keys`` whose option fails ``test`` (``what`` says what it
    must be, e.g. "at least 1")."""
    for key in keys:
        if not test(options[key]):
            raise ConfigError(f"option {key!r} of auditor {auditor} must be {what}, got "
                              f"{options[key]!r}")


def require_choice(auditor: str, options: Mapping[str, Any], key: str,
                   choices: tuple[str, ...]) -> None:
    """One error if option ``key`` is not one of ``choices``."""
    if options[key] not in choices:
        raise ConfigError(f"unknown {auditor} {key} {options[key]!r}; use one of "
                          f"{', '.join(choices)}")


def check_scores(name: str, scores: Any, rows: int) -> np.ndarray:
    """An auditor's scores as float64, or one error if they are not one finite number per
    training row (a plugin's bug must not become a silently wrong ranking)."""
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (rows,):
        raise AuditorError(f"auditor {name} returned {array.shape} scores for {rows} training "
                           f"examples; it must return one per example")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise AuditorError(f"auditor {name} returned {bad} non-finite scores; it must return "
                           f"a finite score for every example")
    return array


def check_proposal(name: str, proposal: PatternProposal, shape: tuple[int, int, int]) -> None:
    """One error if a proposed pattern does not fit the images (C x H x W) or leaves [0, 1]."""
    channels, height, width = shape
    if np.shape(proposal.mask) != (height, width) or np.shape(proposal.pattern) != shape:
        raise AuditorError(f"auditor {name} proposed a pattern of mask {np.shape(proposal.mask)}"
                           f" and pattern {np.shape(proposal.pattern)} for {shape} images; it "
                           f"must propose an H x W mask and a C x H x W pattern")
    for what, array in (("mask", proposal.mask), ("pattern", proposal.pattern)):
        if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise AuditorError(f"auditor {name} proposed a {what} outside [0, 1]")


def proposal_path(folder: Path, auditor: str, proposal: PatternProposal) -> Path:
    """Where ``rsc audit`` writes a proposed pattern: ``patterns/<auditor>-<label>.png``."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._=+-]+", "-", f"{auditor}-{proposal.label}")
    return folder / "patterns" / f"{stem}.png"
