"""Training a run into its folder (``run_folder``):

* An identical finished configuration is reused, not retrained, unless ``force``; its model
  file is verified against the checksum recorded at finish before it is reused or scored.
* An interrupted run resumes from ``checkpoint.pt`` when trained again with the same config.
* ``force`` retrains from scratch but replaces the finished files only when the new run
  finishes, so a crash never loses a finished run; the old run's cached scores go with it.
* One process at a time trains a run: a second waits for the first and then reuses its result.
* A finished run is recorded in the results index (``results_index``).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from rsc_core import registry
from rsc_core.storage.atomic import write_json
from rsc_core.runs.checkpoints import read_checkpoint, save_checkpoint
from rsc_core.storage.digests import file_digest
from rsc_core.errors import CheckpointError, RscError
from rsc_core.training.hardware import check_precision
from rsc_core.training.memory_format import (AUTO, CHANNELS_LAST, check_memory_format,
    use_channels_last)
from rsc_core.storage.paths import fitted_name
from rsc_core.storage.paths import runs_dir as resolve_runs_dir
from rsc_core.training.regularisers import build_regularisers
from rsc_core.runs.index import record_run
from rsc_core.runs.folder import (RUN_NAME_RESERVE, Run, config_hash, resolve_device, run_config,
    run_slug)
from rsc_core.runs.locks import RunLock
from rsc_core.runs.scores import store_score
from rsc_core.evaluation.spurious_score import score_model
from rsc_core.data.spec import SpuriousSpec
from rsc_core.data.planting import SpuriousDataset, build_spurious_dataset
from rsc_core.data.subsets import TrainSubset, apply_subset, kept_spurious_indices
from rsc_core.training.trainer import TrainConfig

if TYPE_CHECKING:
    from rsc_core.data.datasets import ImageData

@dataclass(frozen=True)
class TrainOutcome:
    run: Run
    reused: bool
    resumed_from: int = 0


def find_run(spec: SpuriousSpec, config: TrainConfig, runs_dir: str | Path | None = None,
             subset: TrainSubset | None = None) -> Run:
    cfg = run_config(spec, config, subset)
    root = resolve_runs_dir(runs_dir)
    return Run(root / fitted_name(root, run_slug(spec, config, subset), config_hash(cfg),
                                  RUN_NAME_RESERVE))


def train_run(spec: SpuriousSpec, config: TrainConfig, *, runs_dir: str | Path | None = None,
              data_dir: str | Path | None = None, download: bool | None = None,
              force: bool = False, progress: bool = True, device: str = "auto",
              memory_format: str = AUTO, channels_last: bool = False,
              dataset: SpuriousDataset | None = None,
              on_wait: Callable[[str], None] | None = None,
              subset: TrainSubset | None = None) -> TrainOutcome:
    """Train (or reuse, or resume) the run for ``spec`` and ``config``, on the training rows
    ``subset`` keeps (all of them when None; ``dataset`` is then the full planted set).

    ``memory_format`` (``rsc_core.memory_format``): ``auto`` trains convolutional models
    channels-last; ``channels_last=True`` is the older spelling of ``channels-last``. Neither
    is part of the run's identity.

    Every name, the device and the runs folder are checked before any data is loaded, so a
    typo or an unwritable folder fails at once. The run is claimed with a lock: a second
    process asking for the same run waits (``on_wait`` hears who holds it) and then reuses it."""
    run = find_run(spec, config, runs_dir, subset)
    trainer = registry("trainers").create(config.trainer)
    architecture = registry("architectures").create(config.arch)
    regularisers = build_regularisers(config.regularisers)
    for regulariser in regularisers:
        regulariser.check_config(config)
    torch_device = resolve_device(device)
    check_precision(config.precision, torch_device)  # before any data is loaded
    memory_format = CHANNELS_LAST if channels_last else check_memory_format(memory_format)
    with RunLock(run.path, on_wait=on_wait):
        if not force and run.finished:
            run.model_sha256()
            return TrainOutcome(run, reused=True)
        data = dataset if dataset is not None else build_spurious_dataset(spec, data_dir,
                                                                          download)
        if subset is not None:
            data = apply_subset(data, subset)
        created = not run.path.exists()
        try:
            return _train_locked(run, spec, config, subset, data, trainer, architecture,
                                 regularisers, torch_device, force, progress, memory_format)
        except BaseException:
            # An error before the first epoch's checkpoint leaves nothing worth resuming; once
            # there is a checkpoint (or a final model whose finish was cut short), keep it.
            if created and not has_weights(run):
                shutil.rmtree(run.path, ignore_errors=True)
            raise


def _train_locked(run: Run, spec: SpuriousSpec, config: TrainConfig,
                  subset: TrainSubset | None, data: SpuriousDataset, trainer: Any,
                  architecture: Any, regularisers: list, device: torch.device, force: bool,
                  progress: bool, memory_format: str) -> TrainOutcome:
    run.path.mkdir(parents=True, exist_ok=True)
    folder = folder_identity(run.path)
    write_json(run.path / "config.json", run_config(spec, config, subset))
    torch.manual_seed(config.seed)
    model = architecture.build(data.input_shape, data.num_classes)
    meta = checkpoint_meta(spec, config, data)
    resume = resumable(run, force)
    run.log(f"{'resume from epoch ' + str(resume['epoch']) if resume else 'start'} "
            f"on {device} (pid {os.getpid()})")

    def on_epoch(state, model, optimizer, scheduler) -> None:
        check_folder(run, folder)
        save_checkpoint(run.path / "checkpoint.pt", model, optimizer, scheduler, state.epoch,
                        state.history, meta)
        run.log(json.dumps(state.history[-1]))

    state = trainer.fit(model, data.train, data.test, config, regularisers, device=device,
                        resume=resume, on_epoch=on_epoch, progress=progress,
                        channels_last=use_channels_last(memory_format, model))
    check_folder(run, folder)
    finish_run(run, data.spec, data.test, kept_spurious_indices(data), model, state)
    return TrainOutcome(run, reused=False, resumed_from=resume["epoch"] if resume else 0)


def folder_identity(path: Path) -> tuple[int, int] | None:
    """Which folder ``path`` is (device and inode), or None when there is none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def check_folder(run: Run, identity: tuple[int, int] | None) -> None:
    """Refuse to write on when the run's folder is no longer the one training began in (it
    was deleted, or replaced, meanwhile): writing would make a new folder holding a model and
    a score but no config.json, a run nobody asked for. Nothing more is written."""
    if folder_identity(run.path) != identity:
        raise RscError(f"run folder {run.path} was deleted (or replaced) while it trained; "
                       f"nothing more was written to it; train the run again to start over")


def checkpoint_meta(spec: SpuriousSpec, config: TrainConfig, data: Any) -> dict[str, Any]:
    """What a checkpoint records so it loads without arguments (``data``: a dataset bundle)."""
    return {"arch": config.arch, "input_shape": list(data.input_shape),
            "num_classes": data.num_classes, "spec": spec.as_dict(),
            "config": config.as_dict(), "classes": list(data.classes)}


def has_weights(run: Run) -> bool:
    return (run.path / "checkpoint.pt").exists() or (run.path / "model.pt").exists()


def resumable(run: Run, force: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from: the latest epoch's, or the final model of a run whose
    finish was cut short (model.pt written, metrics.json not), which then only finishes."""
    if force:
        return None
    path = run.path / "checkpoint.pt"
    if not path.is_file():
        path = run.path / "model.pt"
        if not path.is_file() or run.metrics is not None:
            return None
    try:
        return read_checkpoint(path)
    except CheckpointError as exc:
        run.log(f"ignoring unreadable checkpoint: {exc}")
        return None


def finish_run(run: Run, spec: SpuriousSpec, test: ImageData, spurious_indices: np.ndarray,
               model: nn.Module, state: Any) -> None:
    """Write the final model, its checksum, the score for the run's own pattern, then
    metrics.json. Cached scores of an earlier model (``--force``) are removed first."""
    # The final model is the last epoch's checkpoint, renamed atomically (absent when a cut
    # short finish is completed: model.pt already is that checkpoint).
    if (run.path / "checkpoint.pt").exists():
        (run.path / "checkpoint.pt").replace(run.path / "model.pt")
    shutil.rmtree(run.path / "scores", ignore_errors=True)
    model_file = {"sha256": file_digest(run.path / "model.pt"),
                  "bytes": (run.path / "model.pt").stat().st_size}
    model = model.cpu()
    score = None
    if not spec.is_clean:
        result = score_model(model, test, spec.pattern, spec.target, spec.seed)
        store_score(run, model_file["sha256"], result)
        score = result.as_dict()
    last = state.history[-1] if state.history else {}
    write_json(run.path / "metrics.json", {
        "status": "finished",
        "finished_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "spec": spec.as_dict(),
        "epochs": state.epoch,
        "clean_accuracy": last.get("test_accuracy"),
        "train_accuracy": last.get("train_accuracy"),
        "score": score,
        "model_file": model_file,
        "spurious_indices": spurious_indices.tolist(),
        "history": state.history,
    })
    run.log("finished")

    record_run(run)  # best effort: the folder is the truth, the index a cache of it
