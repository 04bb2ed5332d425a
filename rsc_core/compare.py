"""Aggregate runs that differ only in seed (PROTOCOL.md section 5): per number of spurious
examples n, the mean and standard error (scipy.stats.sem) of the spurious score, clean accuracy
and patterned accuracy, and the one-sided Welch t-test ("greater") of the pooled per-image score
indicators against those of the clean baseline, scored with the same pattern and target
(seed 0, as the reference scores its clean models)."""
from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from .datasets import ImageData, load_dataset
from .errors import RscError
from .runs import Run, score_run
from .scoring import DEFAULT_THRESHOLD, ScoreResult


@dataclass(frozen=True)
class GroupSummary:
    """One row of a comparison: all runs with the same n."""

    n: int
    runs: int
    score_mean: float
    score_sem: float
    clean_accuracy_mean: float
    clean_accuracy_sem: float
    patterned_accuracy_mean: float
    patterned_accuracy_sem: float
    p_value: float | None  # Welch one-sided vs the baseline; None for the baseline row

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    pattern: str
    target: int
    threshold: float
    exclude_target: bool
    rows: tuple[GroupSummary, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "target": self.target, "threshold": self.threshold,
                "exclude_target": self.exclude_target, "rows": [r.as_dict() for r in self.rows]}


def _sem(values: Sequence[float]) -> float:
    return float(stats.sem(values)) if len(values) > 1 else float("nan")


def _summarise(n: int, results: Sequence[ScoreResult], baseline: np.ndarray | None) -> GroupSummary:
    scores = [r.score for r in results]
    clean = [r.clean_accuracy for r in results]
    patterned = [r.patterned_accuracy for r in results]
    p_value = None
    if baseline is not None:
        pooled = np.concatenate([r.indicators for r in results]).astype(np.float64)
        if np.var(pooled) == 0 and np.var(baseline) == 0:
            p_value = 0.0 if pooled.mean() > baseline.mean() else 1.0
        else:
            p_value = float(stats.ttest_ind(pooled, baseline, equal_var=False,
                                            alternative="greater").pvalue)
    return GroupSummary(n, len(results), float(np.mean(scores)), _sem(scores),
                        float(np.mean(clean)), _sem(clean), float(np.mean(patterned)),
                        _sem(patterned), p_value)


def compare_runs(runs: Sequence[Run], baseline: Sequence[Run] = (),
                 threshold: float = DEFAULT_THRESHOLD, exclude_target: bool = False,
                 data_dir: str | Path | None = None, device: str = "auto",
                 download: bool | None = None) -> Comparison:
    """Compare spurious runs (grouped by n) with clean baseline runs."""
    spurious = [r for r in runs if not r.spec.is_clean]
    baseline_paths = {b.path.resolve() for b in baseline}
    stray = [r.path.name for r in runs
             if r.spec.is_clean and r.path.resolve() not in baseline_paths]
    if stray:
        warnings.warn(f"ignoring clean run(s) given as runs to compare: {', '.join(stray)}; "
                      "pass clean runs with --baseline (repeatable) to use them as the baseline",
                      stacklevel=2)
    if not spurious:
        raise RscError("no spurious runs to compare; give runs trained on a spurious dataset")
    keys = {(r.spec.dataset, r.spec.pattern, r.spec.target) for r in spurious}
    if len(keys) > 1:
        raise RscError("runs to compare must share dataset, pattern and target; got "
                       + "; ".join(f"{d} {p} target {t}" for d, p, t in sorted(keys)))
    dataset, pattern, target = keys.pop()

    @functools.cache
    def load_test() -> ImageData:  # once for all runs, and only if some score isn't cached
        return load_dataset(dataset, data_dir, download).test

    groups: dict[int, list[ScoreResult]] = defaultdict(list)
    for run in spurious:
        groups[run.spec.n].append(score_run(run, threshold=threshold,
                                            exclude_target=exclude_target, data_dir=data_dir,
                                            device=device, load_test=load_test))
    rows: list[GroupSummary] = []
    pooled_baseline = None
    if baseline:
        if any(not b.spec.is_clean or b.spec.dataset != dataset for b in baseline):
            raise RscError(f"baseline runs must be clean runs on {dataset}")
        base = [score_run(b, pattern, target, 0, threshold, exclude_target, data_dir,
                          device=device, load_test=load_test) for b in baseline]
        pooled_baseline = np.concatenate([r.indicators for r in base]).astype(np.float64)
        rows.append(_summarise(0, base, None))
    rows.extend(_summarise(n, groups[n], pooled_baseline) for n in sorted(groups))
    return Comparison(pattern, target, threshold, exclude_target, tuple(rows))
