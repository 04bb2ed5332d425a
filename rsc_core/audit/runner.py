"""``rsc audit``: run auditors (``rsc_core.auditors``) on a finished run and write what they
found (docs/audit.md).

The result folder holds:

* ``ranking.csv``: one line per training example, most suspicious first: ``rank``, ``index``
  (original training index), ``label``, one score column per auditor and, with several
  auditors, ``combined``: by default their rank average (the mean over auditors of each
  example's fractional rank, 1 = the auditor's top; ties share their average rank), or with
  ``combine="max-rank"`` the best of those ranks (suspicious to any one auditor);
* ``patterns/<auditor>-<label>.png``: every proposed pattern, as a pattern file
  (``rsc_core.pattern_files``) that ``rsc score --pattern-file`` scores;
* ``top-k.png``: the k most suspicious images with their saliency maps;
* ``audit.json``: the run, its model checksum, each auditor's options, time, facts and
  proposals, and the top k.

Auditors are told nothing about what was planted. The folder is written beside its final
place and renamed into place only when complete; an existing folder is replaced only if it is
an earlier audit."""
from __future__ import annotations

import copy
import datetime as _dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rsc_core import registry
from rsc_core.storage.atomic import json_marks, replaced_folder, write_json, write_text
from rsc_core.audit.auditor import (AuditRequest, Auditor, AuditorError, check_proposal,
    check_scores, proposal_path)
from rsc_core.errors import ConfigError, DatasetMissingError, RscError
from rsc_core.runs.folder import Run, resolve_device

AUDIT_FORMAT = 1
DEFAULT_TOP_K = 16
COMBINED = "combined"


def check_combine(combine: str) -> str:
    if combine not in COMBINERS:
        raise ConfigError(f"unknown --combine {combine!r}; use one of {', '.join(COMBINERS)}")
    return combine


def create_auditors(texts: Sequence[str]) -> list[Auditor]:
    """Auditors from ``NAME[:key=value,...]`` texts; the same auditor with the same options
    twice is an error (its column would be ambiguous)."""
    from rsc_core.named_options import parse_named_options

    auditors = []
    for text in texts:
        name, options = parse_named_options(text, "auditor")
        auditors.append(registry("auditors").create(name, **options))
    labels = [a.label for a in auditors]
    if not auditors:
        raise ConfigError("name at least one auditor with -a NAME (`rsc plugins` lists them)")
    if len(set(labels)) != len(labels):
        twice = next(label for label in labels if labels.count(label) > 1)
        raise ConfigError(f"auditor {twice!r} is given twice; give it once")
    return auditors


def _fractional_ranks(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Per column, each row's fractional rank: 1 for the largest score, 1/N for the smallest;
    ties share their average rank."""
    from scipy.stats import rankdata

    return np.stack([rankdata(column) / len(column) for column in columns])


def rank_average(columns: Sequence[np.ndarray]) -> np.ndarray:
    """The mean over columns of each row's fractional rank: suspicious to all auditors."""
    return _fractional_ranks(columns).mean(0)


def max_rank(columns: Sequence[np.ndarray]) -> np.ndarray:
    """The best of each row's fractional ranks: suspicious to any one auditor (the top k of
    this holds about the top k / A of each of A auditors)."""
    return _fractional_ranks(columns).max(0)


#: How several auditors' scores combine into one ranking (``--combine``).
COMBINERS = {"rank-average": rank_average, "max-rank": max_rank}


@dataclass(frozen=True)
class Ranking:
    """Scores per auditor for every training example, and their order."""

    indices: np.ndarray  # original training indices, in the run's row order
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    combine: str = "rank-average"

    @property
    def key(self) -> np.ndarray:
        """What the ranking sorts by: the single auditor's score, or their combination."""
        columns = list(self.scores.values())
        return columns[0] if len(columns) == 1 else COMBINERS[self.combine](columns)

    def order(self) -> np.ndarray:
        """Row positions, most suspicious first (ties: lower original index first)."""
        return np.lexsort((self.indices, -self.key))

    def csv(self) -> str:
        """The CSV text (an auditor's label with options holds commas: quoted)."""
        import csv
        import io

        names = list(self.scores) + ([COMBINED] if len(self.scores) > 1 else [])
        columns = [*self.scores.values()] + ([self.key] if len(self.scores) > 1 else [])
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["rank", "index", "label", *names])
        for rank, row in enumerate(self.order(), start=1):
            writer.writerow([rank, int(self.indices[row]), int(self.labels[row]),
                             *(repr(float(column[row])) for column in columns)])
        return text.getvalue()


def read_ranking(path: str | Path) -> Ranking:
    """A ``ranking.csv`` read back (the combined column is recomputed, not read)."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise RscError(f"{path} holds no ranking")
    names = [n for n in rows[0] if n not in ("rank", "index", "label", COMBINED)]
    return Ranking(np.array([int(r["index"]) for r in rows]),
                   np.array([int(r["label"]) for r in rows]),
                   {n: np.array([float(r[n]) for r in rows]) for n in names})


@dataclass(frozen=True)
class AuditOutcome:
    folder: Path
    summary: dict[str, Any]
    ranking: Ranking


def is_audit_folder(path: Path) -> bool:
    """Whether ``path`` holds an earlier ``rsc audit`` result (its audit.json says so)."""
    return json_marks(path, "audit.json", "rsc_audit")


def audit_run(path: str | Path, auditors: Sequence[Auditor], out: str | Path, *,
              top_k: int = DEFAULT_TOP_K, device: str = "auto",
              data_dir: str | Path | None = None, download: bool | None = None,
              progress: bool = False, combine: str = "rank-average") -> AuditOutcome:
    """Audit the finished run at ``path`` with ``auditors`` and write the result folder
    ``out`` (see the module docstring). Every check that can fail (the run, the auditors'
    fit to its model, the output folder, the training set, k) runs before any auditor."""
    from rsc_core.privacy.experiment import check_output

    check_combine(combine)
    run = _open_run(path)
    torch_device = resolve_device(device)
    model_sha256 = run.model_sha256()
    model = run.load_model()
    for auditor in auditors:
        auditor.check(model, run)
    out = check_output(Path(out), is_audit_folder, "rsc audit")
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    data = training_set(run, data_dir, download)
    if top_k > len(data.train):
        raise ConfigError(f"--top-k {top_k} is larger than the training set of {run.name} "
                          f"({len(data.train)} examples); choose at most {len(data.train)}")
    from rsc_core.data.subsets import training_rows

    indices = training_rows(data)
    reports = run_auditors(auditors, model, data, indices, torch_device, run, progress)
    scores = {auditor.label: result.scores for auditor, result, _ in reports}
    ranking = Ranking(indices, data.train.labels.numpy(), scores, combine)
    summary = _summary(run, model_sha256, len(indices), top_k, ranking, reports)
    with replaced_folder(out) as tmp:
        write_text(tmp / "ranking.csv", ranking.csv())
        _write_proposals(tmp, reports)
        _top_k_figure(tmp / "top-k.png", run, model, data, ranking, top_k, torch_device)
        write_json(tmp / "audit.json", summary)
    return AuditOutcome(out, summary, ranking)


def run_auditors(auditors: Sequence[Auditor], model: torch.nn.Module, data: Any,
                  indices: np.ndarray, device: torch.device, run: Run,
                  progress: bool) -> list[tuple[Auditor, Any, float]]:
    """Each auditor on its own copy of ``model``, auditing ``data.train``: (auditor, checked
    result, seconds). ``audit_run`` passes the run's own model; a control may pass another
    (benchmarks/audit_control.py: a clean model on a planted training set)."""
    reports = []
    for auditor in auditors:
        _say(progress, f"auditor {auditor.label}: running")
        started = time.perf_counter()
        request = AuditRequest(copy.deepcopy(model), data.train, data.test, indices,
                               data.num_classes, auditor.options, device, run, progress)
        result = auditor.audit(request)
        seconds = time.perf_counter() - started
        result.scores = check_scores(auditor.label, result.scores, len(indices))
        for proposal in result.proposals:
            check_proposal(auditor.label, proposal, tuple(data.input_shape))
        reports.append((auditor, result, seconds))
        _say(progress, f"auditor {auditor.label}: {seconds:.1f} s")
    return reports


def _write_proposals(folder: Path, reports: list) -> None:
    from rsc_core.data.pattern_files import write_pattern_png

    for auditor, result, _ in reports:
        for proposal in result.proposals:
            write_pattern_png(proposal_path(folder, auditor.name, proposal), proposal.mask,
                              proposal.pattern, proposal.target)


def _open_run(path: str | Path) -> Run:
    """The run to audit: a finished run folder (a checkpoint file has no training set)."""
    path = Path(path)
    if path.is_file():
        raise AuditorError(f"{path} is a file; rsc audit needs a run folder, which records the "
                           f"training set the model was trained on")
    run = Run.open(path)
    if not run.finished:
        raise RscError(f"run {path} has not finished; train it first (rsc train)")
    return run


def training_set(run: Run, data_dir: str | Path | None = None,
                 download: bool | None = None) -> Any:
    """The run's training set as it trained (its planted dataset, its subset), with the
    clean test split; one clear error when the run does not record it or it is missing."""
    from rsc_core.data.planting import build_spurious_dataset
    from rsc_core.data.subsets import apply_subset

    try:
        spec = run.spec
    except (KeyError, TypeError, ValueError, RscError):
        raise AuditorError(f"run {run.name} does not record the training set it was trained "
                           f"on (no dataset spec in its config.json), so there is nothing to "
                           f"audit; audit a run rsc trained") from None
    try:
        data = build_spurious_dataset(spec, data_dir, download)
    except DatasetMissingError as exc:
        raise AuditorError(f"cannot audit {run.name}: its training set ({spec.dataset}) is "
                           f"not available: {exc}") from None
    return apply_subset(data, run.subset) if run.subset is not None else data


def _say(enabled: bool, line: str) -> None:
    if enabled:
        print(line, file=sys.stderr, flush=True)


def _summary(run: Run, model_sha256: str, rows: int, top_k: int, ranking: Ranking,
             reports: list) -> dict[str, Any]:
    order = ranking.order()[:top_k]
    auditors = []
    for auditor, result, seconds in reports:
        auditors.append({
            "label": auditor.label, "name": auditor.name, "options": auditor.options,
            "seconds": seconds, "facts": result.facts,
            "proposals": [{"file": str(proposal_path(Path("."), auditor.name, p)),
                           "label": p.label, "target": p.target, "details": p.details}
                          for p in result.proposals]})
    train = run.train_config
    return {
        "rsc_audit": AUDIT_FORMAT, "run": run.name, "model_sha256": model_sha256,
        "spec": run.spec.as_dict(), "arch": train.arch,
        "epochs": (run.metrics or {}).get("epochs", train.epochs), "num_train": rows,
        "ranked_by": f"{COMBINED} ({ranking.combine})" if len(reports) > 1 else
        reports[0][0].label,
        "auditors": auditors, "top_k": top_k,
        "top": [{"rank": rank, "index": int(ranking.indices[row]),
                 "label": int(ranking.labels[row]),
                 **{name: float(column[row]) for name, column in ranking.scores.items()}}
                for rank, row in enumerate(order, start=1)],
        "finished_at": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def _top_k_figure(path: Path, run: Run, model: torch.nn.Module, data: Any, ranking: Ranking,
                  top_k: int, device: torch.device) -> None:
    """The k most suspicious training images (top row of each pair) over their saliency maps
    (bottom row; ``rsc_core.saliency``, each scaled to its own maximum)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rsc_core.evaluation.saliency import input_saliency

    rows = ranking.order()[:top_k]
    images = data.train.images[torch.from_numpy(rows)]
    labels = data.train.labels[torch.from_numpy(rows)]
    maps = input_saliency(copy.deepcopy(model), images, labels, device).numpy()
    columns = min(top_k, 8)
    pairs = -(-top_k // columns)
    figure, axes = plt.subplots(2 * pairs, columns, figsize=(1.6 * columns, 3.4 * pairs),
                                squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for position, row in enumerate(rows):
        pair, column = divmod(position, columns)
        picture = images[position].permute(1, 2, 0).numpy()
        top, bottom = axes[2 * pair, column], axes[2 * pair + 1, column]
        top.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray",
                   vmin=0, vmax=1)
        top.set_title(f"#{position + 1} i={int(ranking.indices[row])} y={int(labels[position])}",
                      fontsize=7)
        bottom.imshow(maps[position] / max(float(maps[position].max()), 1e-30), cmap="hot",
                      vmin=0, vmax=1)
    metrics = run.metrics or {}
    by = COMBINED if len(ranking.scores) > 1 else next(iter(ranking.scores))
    figure.suptitle(f"{run.name}\ntop {top_k} of {len(ranking.indices)} training images by "
                    f"{by}; {run.train_config.arch}, {metrics.get('epochs', '?')} epochs; "
                    f"below: saliency |x * d margin / dx|", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
