"""Many runs in one call: reuse the finished ones, group the compatible rest, and train each
group in lockstep (``rsc_core.group_training``), writing every member's run folder exactly as
``train_run`` writes a single run, so it is reused, resumed and scored like any run.

Runs share a group when the trainer's ``group_key`` says their recipes match (only seeds,
dataset spec on one base dataset and per-member regulariser values may differ) and they stand
at the same epoch (fresh, or interrupted at one epoch). Anything else trains alone through
``train_run``: DP-SGD, dropout networks, a trainer without group support, a lone run."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from rsc_core import registry
from rsc_core.storage.atomic import write_json
from rsc_core.runs.checkpoints import read_checkpoint, save_checkpoint_states
from rsc_core.data.datasets import DatasetBundle, load_dataset
from rsc_core.errors import CheckpointError, ConfigError, RscError
from rsc_core.training.multi_model import GroupMember, GroupTrainer
from rsc_core.training.hardware import check_precision
from rsc_core.training.memory_format import AUTO, CHANNELS_LAST, check_memory_format
from rsc_core.training.regularisers import build_regularisers
from rsc_core.runs.locks import RunLock
from rsc_core.runs.folder import Run, config_hash, resolve_device, run_config
from rsc_core.runs.training import (TrainOutcome, check_folder, checkpoint_meta, find_run,
    finish_run, folder_identity, has_weights, resumable, train_run)
from rsc_core.data.spec import SpuriousSpec
from rsc_core.data.planting import patched_rows
from rsc_core.data.subsets import TrainSubset
from rsc_core.training.trainer import TrainConfig

DEFAULT_GROUP_SIZE = 8


@dataclass(frozen=True)
class RunRequest:
    """One run to train: a dataset spec, a recipe, and optionally the training rows it keeps."""

    spec: SpuriousSpec
    config: TrainConfig
    subset: TrainSubset | None = None


@dataclass(frozen=True)
class RunResult:
    """What happened to one request: its outcome, or the error that stopped it alone."""

    request: RunRequest
    outcome: TrainOutcome | None = None
    error: BaseException | None = None
    group_size: int = 1


def check_group_size(group_size: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"the group size must be a whole number of runs, at least 1, got "
                          f"{group_size!r}")
    return group_size


def train_runs(requests: Sequence[RunRequest], *, group_size: int = DEFAULT_GROUP_SIZE,
               runs_dir: str | Path | None = None, data_dir: str | Path | None = None,
               download: bool | None = None, force: bool = False, progress: bool = True,
               device: str = "auto", memory_format: str = AUTO,
               on_wait: Callable[[str], None] | None = None) -> list[RunResult]:
    """Train every request (reusing finished runs), ``group_size`` compatible runs at a time.

    ``memory_format`` applies to the runs trained one at a time (``train_run``); a group runs
    its members' stacked weights under ``vmap`` in the contiguous layout, so an explicit
    ``channels-last`` trains every run alone.

    Every name and option is checked before any data is loaded. Results come back in request
    order; a run that fails alone (e.g. its loss diverged) is reported, the others go on."""
    check_group_size(group_size)
    if check_memory_format(memory_format) == CHANNELS_LAST:
        group_size = 1
    requests = _unique(requests)
    torch_device = resolve_device(device)
    for request in requests:
        _validate(request)
        check_precision(request.config.precision, torch_device)
    results: dict[int, RunResult] = {}
    pending: list[int] = []
    for i, request in enumerate(requests):
        run = find_run(request.spec, request.config, runs_dir, request.subset)
        if not force and run.finished:
            run.model_sha256()
            results[i] = RunResult(request, TrainOutcome(run, reused=True))
        else:
            pending.append(i)
    for group in _groups([requests[i] for i in pending], pending, group_size, runs_dir, force):
        if len(group) == 1:
            i = group[0]
            results[i] = _train_alone(requests[i], runs_dir, data_dir, download, force,
                                      progress, device, on_wait, memory_format)
            continue
        results.update(_train_group([requests[i] for i in group], group, runs_dir, data_dir,
                                    download, force, progress, torch_device, on_wait,
                                    memory_format))
    return [results[i] for i in range(len(requests))]


def _unique(requests: Sequence[RunRequest]) -> list[RunRequest]:
    seen, unique = set(), []
    for request in requests:
        key = config_hash(run_config(request.spec, request.config, request.subset))
        if key not in seen:
            seen.add(key)
            unique.append(request)
    return unique


def _validate(request: RunRequest) -> None:
    registry("architectures").get(request.config.arch)
    registry("trainers").get(request.config.trainer)
    for regulariser in build_regularisers(request.config.regularisers):
        regulariser.check_config(request.config)


def _groups(requests: list[RunRequest], indices: list[int], group_size: int,
            runs_dir: str | Path | None, force: bool) -> list[list[int]]:
    """Indices grouped by (trainer's group key, base dataset, epoch reached), in chunks."""
    keyed: dict[Any, list[int]] = {}
    for request, index in zip(requests, indices):
        key = _group_key(request, runs_dir, force)
        keyed.setdefault(key if key is not None else ("alone", index), []).append(index)
    groups = []
    for members in keyed.values():
        groups.extend(members[i:i + group_size] for i in range(0, len(members), group_size))
    return groups


def _group_key(request: RunRequest, runs_dir: str | Path | None, force: bool) -> Any:
    trainer = registry("trainers").create(request.config.trainer)
    if not isinstance(trainer, GroupTrainer):
        return None
    key = trainer.group_key(request.config)
    if key is None:
        return None
    path = find_run(request.spec, request.config, runs_dir, request.subset).path
    if not force and (path / "model.pt").exists() and not (path / "metrics.json").exists():
        return None  # a finish cut short: train_run completes it alone
    checkpoint = path / "checkpoint.pt"
    epoch = _checkpoint_epoch(checkpoint) if not force and checkpoint.is_file() else 0
    if epoch is None:
        return None
    rows = request.subset.size_key() if request.subset is not None else None
    return (key, request.spec.dataset, rows, epoch)


def _checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(read_checkpoint(path).get("epoch", 0))
    except CheckpointError:
        return None


def _train_alone(request: RunRequest, runs_dir, data_dir, download, force, progress, device,
                 on_wait, memory_format: str = AUTO) -> RunResult:
    try:
        outcome = train_run(request.spec, request.config, runs_dir=runs_dir, data_dir=data_dir,
                            download=download, force=force, progress=progress, device=device,
                            memory_format=memory_format, on_wait=on_wait,
                            subset=request.subset)
    except (RscError, OSError) as exc:
        return RunResult(request, error=exc)
    return RunResult(request, outcome)


def _train_group(requests: list[RunRequest], indices: list[int], runs_dir, data_dir, download,
                 force: bool, progress: bool, device: torch.device,
                 on_wait, memory_format: str = AUTO) -> dict[int, RunResult]:
    runs = [find_run(r.spec, r.config, runs_dir, r.subset) for r in requests]
    with ExitStack() as locks:
        for run in lock_order(runs):
            locks.enter_context(RunLock(run.path, on_wait=on_wait))
        results: dict[int, RunResult] = {}
        todo = []
        for index, request, run in zip(indices, requests, runs):
            if not force and run.finished:  # finished by another process while we waited
                run.model_sha256()
                results[index] = RunResult(request, TrainOutcome(run, reused=True))
            else:
                todo.append((index, request, run))
        if len(todo) == 1:
            index, request, _ = todo[0]
            locks.close()
            results[index] = _train_alone(request, runs_dir, data_dir, download, force,
                                          progress, str(device), on_wait, memory_format)
        elif todo:
            results.update(_fit_members(todo, data_dir, download, force, progress, device))
    return results


def lock_order(runs: Sequence[Run]) -> list[Run]:
    """The order in which a group takes its runs' locks: one global order (by folder path),
    whatever order the runs were asked for in. Two groups that share runs then never hold one
    lock each while waiting for the other's (`rsc train --spec a --spec b` beside `--spec b
    --spec a` would otherwise wait forever)."""
    return sorted(runs, key=lambda run: str(run.path))


def _fit_members(todo: list[tuple[int, RunRequest, Run]], data_dir, download, force: bool,
                 progress: bool, device: torch.device) -> dict[int, RunResult]:
    """Load the base dataset once, build each member exactly as a single run would, train."""
    requests = [request for _, request, _ in todo]
    bundle = load_dataset(requests[0].spec.dataset, data_dir, download)
    created = [not run.path.exists() for _, _, run in todo]
    try:
        return _fit_loaded(todo, bundle, force, progress, device)
    except BaseException:
        for (_, _, run), new in zip(todo, created):
            if new and not has_weights(run):
                shutil.rmtree(run.path, ignore_errors=True)
        raise


def _kept_rows(todo, bundle: DatasetBundle) -> tuple[list, list, dict[int, RunResult]]:
    """Each member's training rows (None: all); a subset that does not fit the dataset (an
    index out of range) fails that run alone, before anything is written."""
    kept, valid, failed = [], [], {}
    for item in todo:
        index, request, _ = item
        try:
            subset = request.subset
            kept.append(subset.rows(len(bundle.train)) if subset is not None else None)
            valid.append(item)
        except RscError as exc:
            failed[index] = RunResult(request, error=exc)
    return valid, kept, failed


def _fit_loaded(todo, bundle: DatasetBundle, force: bool, progress: bool,
                device: torch.device) -> dict[int, RunResult]:
    todo, kept_rows, results = _kept_rows(todo, bundle)
    if not todo:
        return results
    members, models, metas, resumes, planted, folders = [], [], [], [], [], []
    for (_, request, run), kept in zip(todo, kept_rows):
        spec, config = request.spec, request.config
        indices, rows = patched_rows(bundle, spec)
        planted.append(indices if kept is None else indices[np.isin(indices, kept)])
        members.append(GroupMember(config, torch.from_numpy(indices), rows,
                                   None if kept is None else torch.from_numpy(kept)))
        run.path.mkdir(parents=True, exist_ok=True)
        folders.append(folder_identity(run.path))
        write_json(run.path / "config.json", run_config(spec, config, request.subset))
        torch.manual_seed(config.seed)  # the single run's initial weights
        models.append(registry("architectures").create(config.arch)
                      .build(bundle.input_shape, bundle.num_classes))
        metas.append(checkpoint_meta(spec, config, bundle))
        resumes.append(resumable(run, force))
        run.log(f"{'resume from epoch ' + str(resumes[-1]['epoch']) if resumes[-1] else 'start'}"
                f" on {device} (pid {os.getpid()}, in a group of {len(todo)})")

    gone: dict[int, RscError] = {}  # members whose folder was deleted while they trained

    def on_epoch(k: int, state, model_state, optimizer_state, scheduler_state) -> None:
        run = todo[k][2]
        try:
            if k not in gone:
                check_folder(run, folders[k])
        except RscError as exc:
            gone[k] = exc  # it fails alone; the others train on
        if k in gone:
            return
        save_checkpoint_states(run.path / "checkpoint.pt", model_state, optimizer_state,
                               scheduler_state, state.epoch, state.history, metas[k])
        run.log(json.dumps(state.history[-1]))

    trainer = registry("trainers").create(members[0].config.trainer)
    states = trainer.fit_group(models, bundle.train, members, bundle.test, device=device,
                               resume=resumes if any(resumes) else None, on_epoch=on_epoch,
                               progress=progress)
    for k, (index, request, run) in enumerate(todo):
        state = states[k]
        try:
            check_folder(run, folders[k])
        except RscError as exc:
            gone.setdefault(k, exc)
        if k in gone:
            results[index] = RunResult(request, error=gone[k], group_size=len(todo))
            continue
        if isinstance(state, BaseException):
            run.log(f"failed: {state}")
            results[index] = RunResult(request, error=state, group_size=len(todo))
            continue
        model = registry("architectures").create(request.config.arch).build(
            bundle.input_shape, bundle.num_classes)
        model.load_state_dict(read_checkpoint(run.path / "checkpoint.pt")["model_state_dict"])
        finish_run(run, request.spec, bundle.test, planted[k], model, state)
        resumed = resumes[k]["epoch"] if resumes[k] else 0
        results[index] = RunResult(request, TrainOutcome(run, reused=False,
                                                         resumed_from=resumed),
                                   group_size=len(todo))
    return results
