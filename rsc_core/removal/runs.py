"""Removal runs: a data-removal method applied to a finished run, recorded in a NEW run folder
linked to its source (the source is never modified, not even its score cache).

A removal starts from exactly the source's training set (its subset's rows, when it trained
on part of the training set) minus the forget set: the remover receives that set, so none
needs a special case, and a forget index the source never trained on is refused.

The folder is a normal run folder (``config.json`` with the source's spec and recipe plus a
``removal`` section and the rows it stands for, ``subset``; ``model.pt``; ``metrics.json``
written last), so ``rsc score``, ``rsc compare`` and ``rsc weights`` work on it. It is named
``<source folder>_rm-<method>[-<tag>]-<hash>`` (the tag names the main options, e.g.
``lissa-reference``), the hash covering the method, its resolved options, the forget set, the
source model's checksum and a subset source's rows; a finished removal is reused unless
``force``.
Everything is written in a temporary folder renamed into place at the end, so a failure
(bad input, a diverging solver) leaves nothing behind and a finished result is never lost.
A removal killed outright (SIGKILL, a lost machine) can leave that temporary folder, or an
older finished result moved aside for its replacement; the next removal of the same target
cleans them up under the target's lock and says so (``clean_leftovers``): the temporary
folder is removed and its result computed again, a finished result moved aside is put back
and reused.

metrics.json records what the issue asks for: the method and options, the removed indices,
spurious score / clean accuracy / patterned accuracy before and after, accuracy and loss on the
removed examples before and after, the L2 distance of the parameters to the source model and,
when a ``retrain`` removal of the same source and forget set exists, to the retrained model,
and the wall time."""
from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from rsc_core import registry
from rsc_core.storage.atomic import write_json
from rsc_core.runs.checkpoints import (build_model_from_checkpoint, read_checkpoint,
    save_checkpoint_states)
from rsc_core.storage.digests import file_digest
from rsc_core.errors import RscError
from rsc_core.evaluation.predictions import loss_and_accuracy
from rsc_core.storage.paths import fitted_name
from rsc_core.storage.paths import runs_dir as resolve_runs_dir
from rsc_core.removal.remover import RemovalRequest, RemovalResult
from rsc_core.runs.locks import RunLock
from rsc_core.runs.folder import RUN_NAME_RESERVE, Run, resolve_device
from rsc_core.evaluation.spurious_score import score_model
from rsc_core.data.planting import SpuriousDataset, build_spurious_dataset
from rsc_core.runs.pooling import forget_identity, variant_identity
from rsc_core.data.subsets import (apply_subset, kept_spurious_indices, read_index_list,
    training_rows, without)
from rsc_core.training.trainer import make_loss

REMOVAL_FORMAT = 1


class ForgetSetError(RscError, ValueError):
    """A forget set that is empty, malformed or out of range."""


@dataclass(frozen=True)
class RemovalOutcome:
    run: Run
    reused: bool


# --------------------------------------------------------------------------- forget sets
def parse_forget(text: str, source: Run) -> list[int] | None:
    """The forget set's indices as written (``None`` means the source's spurious examples):
    ``spurious``, an inline list ``3,17,42``, or a file of indices (whitespace, commas or one
    per line; ``#`` starts a comment). Range is checked later, against the loaded data."""
    text = text.strip()
    if not text:
        raise ForgetSetError("the forget set is empty (--forget ''); give --forget spurious "
                             "for the run's planted images, a list like 3,17,42, or a file")
    if text == "spurious":
        return None
    return read_index_list(text, "forget", ForgetSetError)


def resolve_forget(indices: list[int] | None, source: Run, num_train: int,
                   trained: np.ndarray | None = None) -> np.ndarray:
    """Sorted distinct original training indices, checked against the training-set size and
    against ``trained``, the rows the source trained on (all when None): forgetting a row the
    model never saw is refused, since no removal can undo what was never learned and a
    retrained baseline would silently train on it."""
    if indices is None:
        indices = list((source.metrics or {}).get("spurious_indices") or [])
        if not indices:
            raise ForgetSetError(f"run {source.name} has no spurious examples to forget; give "
                                 f"--forget i,j,k or --forget FILE")
    if not indices:
        raise ForgetSetError("the forget set is empty; give at least one training index")
    bad = [i for i in indices if not 0 <= i < num_train]
    if bad:
        raise ForgetSetError(f"training index {bad[0]} is out of range: the training set has "
                             f"{num_train} images (indices 0-{num_train - 1})")
    forget = np.unique(np.asarray(indices, dtype=np.int64))
    if trained is not None:
        unseen = np.setdiff1d(forget, trained)
        if unseen.size:
            subset = source.subset
            raise ForgetSetError(
                f"training index {int(unseen[0])} is not among the {trained.size} rows run "
                f"{source.name} trained on ({subset.tag() if subset else 'all'}); forget only "
                f"rows the source trained on")
    if forget.size >= (num_train if trained is None else trained.size):
        raise ForgetSetError("the forget set holds every training image; forget fewer")
    return forget


# --------------------------------------------------------------------------- identity
def removal_section(source: Run, method: str, options: Mapping[str, Any],
                    forget: np.ndarray, tag: str = "") -> dict[str, Any]:
    """The removal's identity and provenance. A source trained on a subset adds its rows
    (``source_subset``), so its removals never reuse a folder written before removals started
    from the source's training set; removals of whole-set runs keep their old names."""
    section = {"format": REMOVAL_FORMAT, "method": method, "options": dict(options),
               "forget": forget.tolist(), "tag": tag,
               "source": {"name": source.name, "path": str(source.path.resolve()),
                          "model_sha256": source.model_sha256()}}
    if source.subset is not None:
        section["source_subset"] = source.subset.as_dict()
    return section


def removal_path(runs_dir: Path, source: Run, section: Mapping[str, Any]) -> Path:
    """Where a removal lives: named by its source and a hash of everything that determines
    the result (not the source's path: moving a runs folder keeps the identity)."""
    identity = {k: v for k, v in section.items() if k not in ("source", "tag")}
    identity["source_model_sha256"] = section["source"]["model_sha256"]
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    tag = re.sub(r"[^A-Za-z0-9._=+-]+", "-", section.get("tag") or "")
    label = f"{section['method']}-{tag}" if tag else section["method"]
    return runs_dir / fitted_name(runs_dir, f"{source.name}_rm-{label}", digest,
                                  RUN_NAME_RESERVE)


def find_removal(source: Run, method: str, options: Mapping[str, Any], forget: np.ndarray,
                 runs_dir: str | Path | None = None) -> Run:
    """Where the removal of ``forget`` by ``method`` with resolved ``options`` lives."""
    tag = registry("removers").create(method).tag(options)
    section = removal_section(source, method, options, forget, tag)
    return Run(removal_path(resolve_runs_dir(runs_dir), source, section))


# --------------------------------------------------------------------------- the command
def open_source(path: str | Path) -> Run:
    """A finished run to remove from, verified; one line otherwise."""
    source = Run.open(path)
    if not source.finished:
        raise RscError(f"run {source.path} has not finished; finish it with rsc train before "
                       f"removing data from it")
    source.model_sha256()
    return source


def source_training_set(source: Run, data_dir: str | Path | None,
                        download: bool | None) -> tuple[SpuriousDataset, SpuriousDataset]:
    """The source's planted dataset (every row) and its training set as it trained (the rows
    its subset keeps): a removal starts from the latter, never from rows the source never
    saw."""
    planted = build_spurious_dataset(source.spec, data_dir, download)
    if source.subset is None:
        return planted, planted
    return planted, apply_subset(planted, source.subset)


def remove_run(source_path: str | Path, method: str, forget_text: str = "spurious",
               options: Mapping[str, Any] | None = None, *,
               runs_dir: str | Path | None = None, data_dir: str | Path | None = None,
               download: bool | None = None, device: str = "auto", force: bool = False,
               progress: bool = False,
               on_wait: Callable[[str], None] | None = None) -> RemovalOutcome:
    """Apply removal ``method`` to the finished run at ``source_path`` and record the result
    (or reuse a finished identical removal). Bad input fails before anything is written.
    ``on_wait`` hears one line if another process holds the removal, and one for each
    leftover of a killed removal cleaned up (``clean_leftovers``)."""
    source = open_source(source_path)
    remover = registry("removers").create(method)
    method = registry("removers").get(method).name
    indices = parse_forget(forget_text, source)
    torch_device = resolve_device(device)
    root = resolve_runs_dir(runs_dir)
    planted, data = source_training_set(source, data_dir, download)
    rows = training_rows(data)
    forget = resolve_forget(indices, source, len(planted.train), rows)
    resolved = remover.resolve_options(dict(options or {}), source, forget)
    section = removal_section(source, method, resolved, forget, remover.tag(resolved))
    target = Run(removal_path(root, source, section))
    with RunLock(target.path, on_wait=on_wait):
        for line in clean_leftovers(target, root):
            if on_wait is not None:
                on_wait(line)
        if not force and target.finished:
            target.model_sha256()
            return RemovalOutcome(target, reused=True)
        started = time.perf_counter()
        request = RemovalRequest(
            source, np.searchsorted(rows, forget), resolved, torch_device, data, root,
            Path(data_dir) if data_dir else None, progress, forget_indices=forget,
            training_subset=without(source.subset, forget), planted=planted)
        result = remover.remove(request)
        _check_finite(result, method)
        _write(target, source, section, request, result, root, time.perf_counter() - started)
    return RemovalOutcome(target, reused=False)


def clean_leftovers(target: Run, root: Path) -> list[str]:
    """What killed removals of ``target`` left beside it (call with its lock held: no live
    process writes them then), cleaned up; one line each, to tell the user. A temporary
    folder (``.<name>.tmp-<pid>``) is removed: its result is computed again. A finished
    result moved aside to be replaced (``.<name>.old-<pid>``) is put back when nothing
    replaced it, else removed."""
    lines = []
    prefix = glob.escape(f".{target.path.name}.")
    for old in sorted(root.glob(f"{prefix}old-*")):
        if not target.path.exists() and Run(old).finished:
            old.replace(target.path)
            lines.append(f"put back {target.path.name}: a finished removal that a killed rsc "
                         f"remove had moved aside ({old.name})")
        else:
            shutil.rmtree(old, ignore_errors=True)
            lines.append(f"removed {old.name}: an older removal a killed rsc remove had "
                         f"already replaced")
    for tmp in sorted(root.glob(f"{prefix}tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True)
        lines.append(f"removed {tmp.name}: the unfinished folder of a killed rsc remove; "
                     f"its removal is computed again")
    return lines


def _check_finite(result: RemovalResult, method: str) -> None:
    for name, value in result.state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise RscError(f"method {method} produced non-finite weights ({name}); nothing "
                           f"was written; try its options for a more stable computation")


def _write(target: Run, source: Run, section: dict[str, Any], request: RemovalRequest,
           result: RemovalResult, root: Path, seconds: float) -> None:
    """Fill a temporary folder and rename it into place (replacing an old result only now).
    Its config records the rows the new model stands for (``subset``: the source's training
    rows without the forget set), so ``rsc sensitivity`` and the index see what it learned
    from."""
    source_checkpoint = read_checkpoint(source.path / "model.pt")
    before = build_model_from_checkpoint(source_checkpoint)
    after = build_model_from_checkpoint({**source_checkpoint,
                                         "model_state_dict": result.state_dict})
    tmp = root / f".{target.path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        config = {**source.config, "removal": section,
                  "subset": request.training_subset.as_dict()}
        write_json(tmp / "config.json", config)
        history = result.history or list(source_checkpoint.get("history") or [])
        save_checkpoint_states(tmp / "model.pt", after.state_dict(), result.optimizer_state,
                               result.scheduler_state, len(history), history,
                               source_checkpoint.get("meta") or {})
        metrics = _metrics(source, section, request, before, after, result, root, seconds)
        metrics["model_file"] = {"sha256": file_digest(tmp / "model.pt"),
                                 "bytes": (tmp / "model.pt").stat().st_size}
        metrics["history"] = history
        write_json(tmp / "metrics.json", metrics)
        with open(tmp / "log.txt", "w", encoding="utf-8") as fh:
            fh.write(f"{_dt.datetime.now().isoformat(timespec='seconds')} {section['method']} "
                     f"removed {len(request.forget)} examples from {source.path}\n")
        old = None
        if target.path.exists():
            old = root / f".{target.path.name}.old-{os.getpid()}"
            target.path.replace(old)
        tmp.replace(target.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _metrics(source: Run, section: dict[str, Any], request: RemovalRequest,
             before: nn.Module, after: nn.Module, result: RemovalResult, root: Path,
             seconds: float) -> dict[str, Any]:
    spec, data, forget = source.spec, request.data, request.forget_indices
    score_before = score_after = None
    if not spec.is_clean:
        score_before = score_model(before, data.test, spec.pattern, spec.target, spec.seed)
        score_after = score_model(after, data.test, spec.pattern, spec.target, spec.seed)
    forget_rows = torch.from_numpy(request.forget)  # positions in the source's training set
    images, labels = data.train.images[forget_rows], data.train.labels[forget_rows]
    loss = make_loss("ce")
    forget_before = loss_and_accuracy(before, images, labels, loss)
    forget_after = loss_and_accuracy(after, images, labels, loss)
    clean_after = loss_and_accuracy(after, data.test.images, data.test.labels, loss)[1]
    trained_planted = kept_spurious_indices(data)
    remaining = np.setdiff1d(trained_planted, forget)
    return {
        "status": "finished",
        "finished_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "spec": spec.as_dict(),
        "epochs": len(result.history) or (source.metrics or {}).get("epochs"),
        "clean_accuracy": clean_after,
        "score": score_after.as_dict() if score_after else None,
        "spurious_indices": remaining.tolist(),
        "removal": {
            "method": section["method"], "options": section["options"],
            "forget": section["forget"], "source": section["source"],
            "before": _summary(score_before, source.metrics.get("clean_accuracy")),
            "after": _summary(score_after, clean_after),
            "training_rows": {"source": len(data.train),
                              "after": len(data.train) - int(forget.size)},
            "pool": {"forget": forget_identity(forget.tolist(), trained_planted.tolist()),
                     "source": variant_identity(source.config, source.metrics)},
            "forget_set": {"size": int(forget.size),
                           "before": {"loss": forget_before[0], "accuracy": forget_before[1]},
                           "after": {"loss": forget_after[0], "accuracy": forget_after[1]}},
            "l2_to_source": parameter_distance(before, after),
            "l2_to_retrained": _distance_to_retrained(source, section, after, root),
            "seconds": seconds,
            "facts": result.facts,
        },
    }


def _summary(score: Any, clean_accuracy: float | None) -> dict[str, Any]:
    if score is None:
        return {"score": None, "clean_accuracy": clean_accuracy, "patterned_accuracy": None}
    return {"score": score.score, "clean_accuracy": score.clean_accuracy,
            "patterned_accuracy": score.patterned_accuracy}


def parameter_distance(a: nn.Module, b: nn.Module) -> float:
    """The L2 norm of the difference of all parameters (buffers excluded)."""
    total = 0.0
    for (_, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        total += float((x.detach().double() - y.detach().double()).pow(2).sum())
    return math.sqrt(total)


def _distance_to_retrained(source: Run, section: dict[str, Any], model: nn.Module,
                           root: Path) -> float | None:
    """Distance to the ``retrain`` removal of the same source and forget set, if finished."""
    retrain = {**section, "method": "retrain", "options": {}, "tag": ""}
    if section["method"] == "retrain":
        return 0.0
    run = Run(removal_path(root, source, retrain))
    if not run.finished:
        return None
    return parameter_distance(run.load_model(), model)
