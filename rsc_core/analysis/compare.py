"""Aggregate runs that differ only in seed (PROTOCOL.md section 5): per number of spurious
examples n, the mean and standard error (scipy.stats.sem) of the spurious score, clean accuracy
and patterned accuracy, and the one-sided Welch t-test ("greater") of the pooled per-image score
indicators against those of the clean baseline, scored with the same pattern and target
(seed 0, as the reference scores its clean models).

Pooling is only honest for runs that differ in nothing but their seeds, so ``compare_runs``
checks it with the rule every command shares (``pooling.pool_mismatch``): the same run given
twice counts once; runs whose dataset, recipe, training subset or removal differ in anything
but the seeds (and n, the grouping) are refused, naming the field; a baseline trained with
another recipe or on other rows is refused unless ``allow_mixed_baseline``; and runs must
follow one seed protocol (``seed_protocol``) unless ``allow_mixed_seeds``."""
from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from rsc_core.data.datasets import ImageData, load_dataset
from rsc_core.errors import RscError
from rsc_core.json_output import WHY_NULL
from rsc_core.runs.pooling import baseline_identity, pool_identity, pool_mismatch
from rsc_core.runs.folder import Run
from rsc_core.runs.scores import score_run
from rsc_core.evaluation.spurious_score import DEFAULT_THRESHOLD, ScoreResult, check_threshold


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
        """The row's fields, and ``why_null`` for those with no number (the convention of
        every ``--json``, ``rsc_core.json_output``): an SEM needs two runs, a p-value a
        baseline."""
        reasons = {}
        if self.runs < 2:
            reasons.update({f"{name}_sem": "one run: a standard error needs two or more"
                            for name in ("score", "clean_accuracy", "patterned_accuracy")})
        if self.p_value is None:
            reasons["p_value"] = ("this is the baseline row (n = 0)" if self.n == 0 else
                                  "no clean baseline runs to test against")
        return {**asdict(self), **({WHY_NULL: reasons} if reasons else {})}


@dataclass(frozen=True)
class SeedProtocol:
    """Which seeds vary across pooled runs. The study varies only the dataset seed (which
    images carry the pattern, and the noise pattern itself) and trains every model with
    training seed 0; rsc's earlier tables paired the two (training seed = dataset seed)."""

    name: str  # "dataset-seeds" (the study's), "paired", "training-seeds", "single", "mixed"
    dataset_seeds: tuple[int, ...]
    training_seeds: tuple[int, ...]
    baseline_training_seeds: tuple[int, ...] = ()

    @property
    def description(self) -> str:
        seeds = (f"dataset seeds {_span(self.dataset_seeds)}, training seeds "
                 f"{_span(self.training_seeds)}")
        meaning = {
            "dataset-seeds": "the study's protocol: only the dataset seed varies",
            "paired": "training seed = dataset seed, not the study's protocol",
            "training-seeds": "only the training seed varies, not the study's protocol",
            "single": "one run per n",
            "mixed": "runs follow different protocols",
        }[self.name]
        baseline = (f"; baseline training seeds {_span(self.baseline_training_seeds)}"
                    if self.baseline_training_seeds else "")
        return f"{seeds} ({meaning}){baseline}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataset_seeds": list(self.dataset_seeds),
                "training_seeds": list(self.training_seeds),
                "baseline_training_seeds": list(self.baseline_training_seeds),
                "description": self.description}


@dataclass(frozen=True)
class Comparison:
    pattern: str
    target: int
    threshold: float
    exclude_target: bool
    rows: tuple[GroupSummary, ...]
    seeds: SeedProtocol | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "target": self.target, "threshold": self.threshold,
                "exclude_target": self.exclude_target, "rows": [r.as_dict() for r in self.rows],
                "seed_protocol": self.seeds.as_dict() if self.seeds else None}


def _span(values: Sequence[int]) -> str:
    """``0-4`` for a contiguous range, else the values: ``0, 2, 7``."""
    values = sorted(set(values))
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values)) or "none"


def seed_protocol(pairs: Sequence[tuple[int, int]]) -> str:
    """Name the protocol of (dataset seed, training seed) pairs, one pair per run."""
    dataset_seeds = {d for d, _ in pairs}
    training_seeds = {t for _, t in pairs}
    if len(pairs) <= 1 or (len(dataset_seeds) == 1 and len(training_seeds) == 1):
        return "single"
    if len(training_seeds) == 1:
        return "dataset-seeds"
    if all(d == t for d, t in pairs):
        return "paired"
    if len(dataset_seeds) == 1:
        return "training-seeds"
    return "mixed"


def _identity(run: Run) -> dict[str, Any]:
    """The run's pool identity (``pooling.pool_identity``): what must be equal to pool."""
    return pool_identity(run.config, run.metrics)


def _baseline_identity(run: Run) -> dict[str, Any]:
    return baseline_identity(run.config, run.metrics)


def _unlike(mismatch: str) -> str:
    """How a baseline differs from the runs, from the field ``pool_mismatch`` names."""
    field = mismatch.split(" ", 1)[0]
    if field == "subset":
        return "was trained on other rows than the runs"
    if field.startswith("removal."):
        return "is a removal run, not a trained baseline"
    return "was trained with another recipe"


def unique_runs(runs: Sequence[Run]) -> list[Run]:
    """The runs with repeats (the same folder given twice, or matched by two globs) removed,
    in order; a warning says which were dropped."""
    seen: dict[Path, Run] = {}
    repeated = []
    for run in runs:
        key = run.path.resolve()
        if key in seen:
            repeated.append(run.path.name)
        else:
            seen[key] = run
    if repeated:
        warnings.warn(f"counted once: run(s) given more than once: {', '.join(repeated)}",
                      stacklevel=3)
    return list(seen.values())


def check_poolable(spurious: Sequence[Run], baseline: Sequence[Run],
                   allow_mixed_baseline: bool = False,
                   allow_mixed_seeds: bool = False) -> SeedProtocol:
    """Refuse to pool runs that differ in anything but seeds; return their seed protocol."""
    first = spurious[0]
    identity = _identity(first)
    for run in spurious[1:]:
        mismatch = pool_mismatch(identity, _identity(run))
        if mismatch:
            raise RscError(f"runs compared as seeds must differ only in their seeds (and n): "
                           f"{run.path.name} differs from {first.path.name} in {mismatch}; "
                           f"compare each recipe separately")
    seen: dict[tuple[int, int, int], str] = {}
    for run in spurious:
        key = (run.spec.n, run.spec.seed, run.train_config.seed)
        if key in seen:
            raise RscError(f"{run.path} and {seen[key]} are the same configuration (n = "
                           f"{key[0]}, dataset seed {key[1]}, training seed {key[2]}); "
                           f"give each run once")
        seen[key] = str(run.path)
    wanted = _baseline_identity(first)
    for run in baseline:
        mismatch = pool_mismatch(wanted, _baseline_identity(run))
        if mismatch:
            message = f"baseline {run.path.name} {_unlike(mismatch)}: {mismatch}"
            if not allow_mixed_baseline:
                raise RscError(message + "; use a baseline trained like the runs, or pass "
                               "--allow-mixed-baseline to compare anyway")
            warnings.warn(message + " (allowed by --allow-mixed-baseline)", stacklevel=3)
    pairs = [(r.spec.seed, r.train_config.seed) for r in spurious]
    protocol = SeedProtocol(seed_protocol(pairs), tuple(sorted({d for d, _ in pairs})),
                            tuple(sorted({t for _, t in pairs})),
                            tuple(sorted({b.train_config.seed for b in baseline})))
    if protocol.name == "mixed" and not allow_mixed_seeds:
        listing = ", ".join(f"{d}/{t}" for d, t in sorted(set(pairs)))
        raise RscError("runs mix seed protocols (dataset seed/training seed: " + listing
                       + "); pool runs that vary only the dataset seed (the study's "
                       "protocol) or only pairs with training seed = dataset seed, or pass "
                       "--allow-mixed-seeds")
    return protocol


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
                 download: bool | None = None, *, allow_mixed_baseline: bool = False,
                 allow_mixed_seeds: bool = False) -> Comparison:
    """Compare spurious runs (grouped by n) with clean baseline runs. Runs must differ only
    in seeds (``check_poolable``); repeats are counted once."""
    check_threshold(threshold)
    runs, baseline = unique_runs(runs), unique_runs(baseline)
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
    if baseline and any(not b.spec.is_clean or b.spec.dataset != dataset for b in baseline):
        raise RscError(f"baseline runs must be clean runs on {dataset}")
    seeds = check_poolable(spurious, baseline, allow_mixed_baseline, allow_mixed_seeds)

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
        base = [score_run(b, pattern, target, 0, threshold, exclude_target, data_dir,
                          device=device, load_test=load_test) for b in baseline]
        pooled_baseline = np.concatenate([r.indicators for r in base]).astype(np.float64)
        rows.append(_summarise(0, base, None))
    rows.extend(_summarise(n, groups[n], pooled_baseline) for n in sorted(groups))
    return Comparison(pattern, target, threshold, exclude_target, tuple(rows), seeds)


def runs_from_index(where: str, runs_dir: str | Path | None = None) -> tuple[list[Run], list[Run]]:
    """``rsc compare --where``: the finished spurious runs of the results index that match
    ``where``, and as their baseline every finished clean run of the index trained like them
    (on the same rows, ``baseline_id``), the baseline ``rsc report`` gives them."""
    from rsc_core.runs.index import list_runs

    matched = [r for r in list_runs(where, runs_dir)
               if r["status"] == "finished" and r["pattern"] is not None]
    if not matched:
        raise RscError(f"no finished spurious runs match --where {where!r}; see what there is "
                       f"with `rsc runs list --where {where!r}`")
    wanted = {(r["dataset"], r["baseline_id"]) for r in matched}
    clean = list_runs("pattern = null and status = finished", runs_dir)
    baseline = [r for r in clean if (r["dataset"], r["recipe_id"]) in wanted]
    return [Run(r["path"]) for r in matched], [Run(r["path"]) for r in baseline]
