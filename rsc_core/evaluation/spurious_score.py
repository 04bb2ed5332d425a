"""The spurious score (PROTOCOL.md section 5): the fraction of test images x for which adding
the pattern raises the softmax probability of the target class c by more than a threshold,
  score = mean_x 1[ softmax(f(p(x)))_c - softmax(f(x))_c > 0.1 ],
over ALL clean test images by default (or those with y != c). Reported with clean accuracy and
the accuracy on patterned test images with y != c."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rsc_core.data.datasets import ImageData
from rsc_core.errors import ConfigError, RscError
from rsc_core.evaluation.predictions import predict_proba

if TYPE_CHECKING:
    from rsc_core.data.patterns import Pattern
    from rsc_core.data.spec import SpuriousSpec

DEFAULT_THRESHOLD = 0.1


def check_threshold(threshold: float) -> float:
    """The threshold is a rise in a probability, so only a finite number in (0, 1) means
    anything: at or below 0 every image counts, at or above 1 none can, and NaN compares
    false with everything (a score of 0)."""
    value = float(threshold)
    if not (math.isfinite(value) and 0 < value < 1):
        raise ConfigError(f"the score threshold must be a finite number in (0, 1), got "
                          f"{threshold!r}: it is the rise in the target class's probability "
                          f"that counts as spurious, so 0 or less counts every image and 1 or "
                          f"more none")
    return value


@dataclass(frozen=True)
class ScoreResult:
    """A spurious score with the accuracies reported beside it."""

    pattern: str
    target: int
    seed: int
    threshold: float
    exclude_target: bool
    score: float
    num_images: int
    clean_accuracy: float
    patterned_accuracy: float  # on patterned test images with y != target
    indicators: np.ndarray = field(repr=False, compare=False)  # per scored image, 0/1

    def as_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "target": self.target, "seed": self.seed,
                "threshold": self.threshold, "exclude_target": self.exclude_target,
                "score": self.score, "num_images": self.num_images,
                "clean_accuracy": self.clean_accuracy,
                "patterned_accuracy": self.patterned_accuracy}


def resolve_target(spec: "SpuriousSpec | None", pattern: str | None, target: int | None,
                   seed: int | None) -> tuple[str, int, int]:
    """Fill unset scoring arguments from the spec a model was trained on: its own pattern,
    target and seed; a clean model's pattern is scored at seed 0, as the reference does."""
    if spec is not None:
        pattern = pattern or spec.pattern
        target = spec.target if target is None else target
    if pattern is None or target is None:
        raise RscError("this is a clean model; say which pattern and target to score "
                       "(--pattern P --target C)")
    if seed is None:
        seed = spec.seed if spec is not None and not spec.is_clean else 0
    return pattern, target, seed


def score_model(model: nn.Module, test: ImageData, pattern: "str | Pattern", target: int,
                seed: int = 0, threshold: float = DEFAULT_THRESHOLD, exclude_target: bool = False,
                device: torch.device | str = "cpu") -> ScoreResult:
    """Evaluate the spurious score of ``model`` for ``pattern`` (a registered name, or a
    ``Pattern`` instance such as a pattern file's) with ``seed`` and class ``target`` on the
    test split ``test``."""
    from rsc_core import registry

    check_threshold(threshold)
    instance = pattern if not isinstance(pattern, str) else (
        registry("patterns").get(pattern).create())
    clean_proba = predict_proba(model, test.images, device)
    num_classes = clean_proba.shape[1]
    if not 0 <= target < num_classes:
        raise ConfigError(f"target class {target} is out of range for a model with "
                          f"{num_classes} classes")
    patterned_images = instance.apply(test.images, seed)
    patterned_proba = predict_proba(model, patterned_images, device)
    labels = test.labels.cpu()
    keep = labels != target if exclude_target else torch.ones_like(labels, dtype=torch.bool)
    rise = patterned_proba[:, target] - clean_proba[:, target]
    indicators = (rise > threshold)[keep].numpy().astype(np.uint8)
    others = labels != target
    patterned_accuracy = (patterned_proba.argmax(1) == labels)[others].float().mean().item()
    return ScoreResult(
        pattern=instance.name, target=target, seed=seed, threshold=threshold,
        exclude_target=exclude_target, score=float(indicators.mean()) if indicators.size else 0.0,
        num_images=int(indicators.size),
        clean_accuracy=(clean_proba.argmax(1) == labels).float().mean().item(),
        patterned_accuracy=patterned_accuracy, indicators=indicators)
