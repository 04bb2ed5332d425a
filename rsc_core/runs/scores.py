"""Scoring a run (``run_folder``): the spurious score of its model, cached in ``scores/``
under the checksum of the weights it was computed from, so a cached score can never describe
other weights."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from rsc_core import registry
from rsc_core.storage.atomic import write_json, write_numpy
from rsc_core.runs.checkpoints import build_model_from_checkpoint, read_checkpoint
from rsc_core.runs.folder import Run, format_number, resolve_device
from rsc_core.evaluation.spurious_score import (DEFAULT_THRESHOLD, ScoreResult, check_threshold,
    resolve_target, score_model)

if TYPE_CHECKING:
    from rsc_core.data.datasets import ImageData

def score_key(pattern: str, target: int, seed: int, threshold: float,
              exclude_target: bool) -> str:
    return (f"{pattern}-t{target}-s{seed}-th{format_number(float(threshold))}"
            f"{'-excl' if exclude_target else ''}")


def _score_files(run: Run, model_sha256: str, key: str) -> tuple[Path, Path]:
    """Cached scores live under the checksum of the weights they were computed from, so a
    score can never outlive (or be mistaken for) the model that produced it."""
    folder = run.path / "scores" / model_sha256[:16]
    return folder / f"{key}.json", folder / f"{key}.npy"


def store_score(run: Run, model_sha256: str, result: ScoreResult) -> None:
    key = score_key(result.pattern, result.target, result.seed, result.threshold,
                    result.exclude_target)
    summary, indicators = _score_files(run, model_sha256, key)
    write_numpy(indicators, result.indicators)
    write_json(summary, {**result.as_dict(), "model_sha256": model_sha256})


def _cached_score(run: Run, model_sha256: str, key: str) -> ScoreResult | None:
    """A cached score of exactly these weights, or None (absent or unreadable: recompute)."""
    summary, indicators = _score_files(run, model_sha256, key)
    if not (summary.is_file() and indicators.is_file()):
        return None
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
        if data.pop("model_sha256", None) != model_sha256:
            return None
        return ScoreResult(**data, indicators=np.load(indicators, allow_pickle=False))
    except (ValueError, TypeError, OSError):
        return None


def score_run(run: Run, pattern: str | None = None, target: int | None = None,
              seed: int | None = None, threshold: float = DEFAULT_THRESHOLD,
              exclude_target: bool = False, data_dir: str | Path | None = None,
              download: bool | None = None, device: str = "auto",
              load_test: Callable[[], ImageData] | None = None) -> ScoreResult:
    """The spurious score of a finished run (its own pattern by default), cached per run and
    per model checksum; the model file is verified first.

    The test split is loaded only when the score is not cached; ``load_test`` lets a caller
    that scores many runs of one dataset share one loaded copy."""
    check_threshold(threshold)
    spec = run.spec
    pattern, target, seed = resolve_target(spec, pattern, target, seed)
    pattern = registry("patterns").get(pattern).name
    key = score_key(pattern, target, seed, threshold, exclude_target)
    model_sha256 = run.model_sha256()
    cached = _cached_score(run, model_sha256, key)
    if cached is not None:
        return cached
    if load_test is None:
        from rsc_core.data.datasets import load_dataset

        def load_test() -> ImageData:
            return load_dataset(spec.dataset, data_dir, download).test
    model = build_model_from_checkpoint(read_checkpoint(run.path / "model.pt"))
    result = score_model(model, load_test(), pattern, target, seed, threshold,
                         exclude_target, resolve_device(device))
    store_score(run, model_sha256, result)
    return result
