"""``memorisation``: how much better the audited model knows each training example than
reference models that never trained on it, with rsc's membership-inference attacks.

A planted image is one the model could only get right by training on it (the pattern is
new to every model that did not see it), so it is the model's most memorised kind of
example; Feldman's memorisation score is exactly "right when trained on it, wrong otherwise".
The references are shadow models: finished runs of the same dataset, trained on part of the
training set and without any planted image (clean specs; the runs ``rsc mia`` trains are
such), so each example is OUT of the references whose training rows do not include it.

``statistic``:

* ``lira`` (default): offline LiRA, the registered attack ``lira-offline`` run through
  rsc's attack interface (``rsc_core.attacks``): the audited model's logit margin on the
  example, as it trained on it, tested against a Gaussian fitted to the OUT references'
  margins (one-sided: log Pr[phi' <= phi]; ``variance`` as that attack's option, default
  ``fixed``, one spread for all examples: with a spread per example, fitted to the few OUT
  references each has, ordinary examples get z-scores so large that log Pr rounds to 0 in
  float64 and the ranking ties (measured on the tests' tiny problem: the planted images
  then rank 12th-20th of 200 instead of 1st-4th);
* ``loss-gap``: the mean cross entropy of the OUT references on the example minus the
  audited model's (no distribution assumed).

``references``: a folder of runs or a glob of run folders; empty (the default) looks for
them beside the audited run. An example no reference left out gets the median score (it
cannot be tested) and is counted in the facts. LiRA needs an even number of references;
with an odd number the last is left out.

Where it cannot work: without reference models (none beside the run and none given), and
for a pattern that references classify confidently anyway (a planted image that is not
unusual to a model that never saw it carries no memorisation signal)."""
from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsc_core import registry
from rsc_core.privacy.attacks import Observations
from rsc_core.audit.auditor import AuditRequest, AuditResult, Auditor, AuditorError, require_choice
from rsc_core.errors import ConfigError, RscError
from rsc_core.evaluation.predictions import predict_logits
from rsc_core.runs.folder import Run

STATISTICS = ("lira", "loss-gap")


class MemorisationAuditor(Auditor):
    """Offline LiRA (or the loss gap) of each example against reference models without it."""

    name = "memorisation"
    aliases = ("memorization", "mem")
    description = ("offline LiRA or loss gap of each training example against reference "
                   "models that never trained on it")
    defaults: dict[str, Any] = {"references": "", "statistic": "lira", "variance": "fixed"}

    def resolve_options(self, options: Any) -> dict[str, Any]:
        resolved = super().resolve_options(options)
        require_choice(self.name, resolved, "statistic", STATISTICS)
        return resolved

    def check(self, model: torch.nn.Module, run: Run | None = None) -> None:
        """Fail before any data is loaded when there are no reference models."""
        find_references(run, self.options["references"])

    def audit(self, request: AuditRequest) -> AuditResult:
        started = time.perf_counter()
        references = find_references(request.run, request.options["references"])
        images, labels = request.train.images, request.train.labels
        target = Observations(_logits(request.model, images, request.device), labels.numpy(),
                              np.ones(labels.shape[0], dtype=bool))
        shadows = [Observations(_logits(ref.load_model(), images, request.device),
                                labels.numpy(), _members(ref, request.train_indices))
                   for ref in references]
        scores, unscored = memorisation_scores(target, shadows, request.options["statistic"],
                                               request.options["variance"])
        out = ~np.stack([s.member for s in shadows])
        return AuditResult(scores, facts={
            "references": [ref.name for ref in references], "unscored": unscored,
            "fewest_out": int(out.sum(0).min()), "seconds": time.perf_counter() - started})


def memorisation_scores(target: Observations, shadows: list[Observations], statistic: str,
                        variance: str = "fixed") -> tuple[np.ndarray, int]:
    """Each example's score (see the module docstring) from the audited model's and the
    references' observations (``member``: which examples each reference trained on), and
    how many examples no reference left out (given the median score)."""
    out = ~np.stack([s.member for s in shadows])
    if statistic == "lira":
        scores = _lira(target, shadows, variance)
    else:
        losses = np.stack([s.losses() for s in shadows])
        counts = out.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = (np.where(out, losses, 0).sum(0) / counts) - target.losses()
        scores[counts == 0] = np.nan
    unscored = ~np.isfinite(scores)
    scores[unscored] = np.median(scores[~unscored]) if (~unscored).any() else 0.0
    return scores, int(unscored.sum())


def find_references(run: Run | None, where: str) -> list[Run]:
    """The finished clean runs of the audited run's dataset that ``where`` names (a folder of
    runs or a glob; empty: the audited run's own folder of runs), sorted by name."""
    if not where and run is None:
        raise AuditorError("memorisation needs reference models: give "
                           "-a memorisation:references=FOLDER_OR_GLOB")
    if not where:
        candidates = sorted(run.path.parent.iterdir())
    elif any(c in where for c in "*?["):
        candidates = [Path(p) for p in sorted(glob.glob(where))]
    else:
        folder = Path(where)
        if not folder.is_dir():
            raise AuditorError(f"memorisation references {where!r} is neither a folder nor a "
                               f"glob that matches run folders; give a folder of runs")
        candidates = sorted(folder.iterdir()) if not (folder / "config.json").is_file() else [
            folder]
    dataset = run.spec.dataset if run is not None else None
    found = [ref for ref in (_reference(path, dataset) for path in candidates) if ref]
    if run is not None:
        found = [ref for ref in found if ref.path.resolve() != run.path.resolve()]
    if not found:
        place = where or str(run.path.parent)
        raise AuditorError(
            f"memorisation found no reference models in {place}: it needs finished clean "
            f"runs of {dataset or 'the dataset'} trained on part of the training set (shadow "
            f"models, e.g. those rsc mia trains); give -a memorisation:references=FOLDER")
    return found


def _reference(path: Path, dataset: str | None) -> Run | None:
    """``path`` as a reference run: finished, clean, of ``dataset``, on a subset."""
    if not (path / "config.json").is_file():
        return None
    try:
        run = Run(path)
        spec = run.spec
        if not (run.finished and spec.is_clean and run.subset is not None
                and (dataset is None or spec.dataset == dataset)):
            return None
    except (RscError, KeyError, ValueError, TypeError):
        return None  # not a run folder this version can read: not a reference
    return run


def _members(reference: Run, indices: np.ndarray) -> np.ndarray:
    """Whether the reference trained on each of the original training ``indices``."""
    listed = np.isin(indices, np.asarray(reference.subset.indices))
    return listed if reference.subset.mode == "keep" else ~listed


def _logits(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    return predict_logits(model.to(device), images, device).double().numpy()


def _lira(target: Observations, shadows: list[Observations], variance: str) -> np.ndarray:
    """Offline LiRA's one-sided score through the registered attack (an even number of
    shadows, as it requires)."""
    usable = shadows[:len(shadows) - len(shadows) % 2]
    if not usable:
        raise AuditorError("memorisation with statistic lira needs at least 2 reference "
                           "models; give more, or use statistic=loss-gap")
    attack = registry("attacks").create("lira-offline", shadows=len(usable), test="one-sided",
                                        variance=variance)
    try:
        return np.asarray(attack.attack(target, usable).scores, dtype=np.float64)
    except ConfigError as exc:
        raise AuditorError(f"memorisation (offline LiRA) cannot score this run: {exc}") from None
