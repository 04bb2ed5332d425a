"""Models trained elsewhere: ``rsc import`` turns a weights file into a run folder, so that every
command that takes a run (``rsc score``, ``sensitivity``, ``mia --target-run``, ``remove``,
``compare``, ``weights``) works on it as on a run rsc trained.

**What is read.** Only tensors and plain data, with ``torch.load(weights_only=True)``: a state
dict, or a dict holding one under ``model_state_dict`` (rsc's and the reference's checkpoints)
or ``state_dict`` (e.g. PyTorch Lightning's). DataParallel's ``module.`` prefixes are removed.
A whole pickled model (``torch.save(model)``) is refused, not unpickled: unpickling runs code
named by the file, so the error says to save ``model.state_dict()`` instead. The weights must
fit the declared architecture exactly (``load_state_dict(strict=True)``), else one error names
the keys that do not fit.

**What it was trained on** must be declared, because every analysis rebuilds the training set:

* a spec: ``xrayv8-3-0-0`` (rsc's planted training set, e.g. written out with ``rsc data
  export``) or ``memxrayv20-3-0-0`` (the target members of that membership split, which is what
  ``rsc mia --target-run`` attacks);
* or the dataset alone (its files as they are), with, optionally, a file of the training
  indices of images the user planted something on themselves. They are recorded as the run's
  spurious examples: what ``rsc remove`` forgets by default. Which pattern to score is then
  given to ``rsc score --pattern P --target C``.

**The recipe** given with the import (``--optimizer``, ``--lr``, ``--epochs``, ...) is recorded
as the run's recipe: retrain and incremental-retraining removals and the shadow models of
``rsc mia`` train with it, so it should be the one the model was trained with.

The folder is named like a trained run plus ``_imported`` and a hash that covers the weights'
checksum, so an import never takes the place of a run rsc trains. It is written under the run's
lock, ``metrics.json`` last; any failure removes the folder, so there is never a half-imported
run. Importing the same file with the same declaration again reuses the folder."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rsc_core.storage.atomic import write_json
from rsc_core.runs.checkpoints import (build_model_from_checkpoint, read_checkpoint,
    save_checkpoint_states)
from rsc_core.storage.digests import file_digest
from rsc_core.errors import CheckpointError, SpecError
from rsc_core.evaluation.predictions import loss_and_accuracy
from rsc_core.data.membership import is_membership_name, membership_split, parse_membership_spec
from rsc_core.storage.paths import fitted_name
from rsc_core.storage.paths import runs_dir as resolve_runs_dir
from rsc_core.runs.locks import RunLock
from rsc_core.runs.folder import RUN_NAME_RESERVE, Run, config_hash, run_config, run_slug
from rsc_core.runs.training import checkpoint_meta, finish_run
from rsc_core.data.spec import SpuriousSpec, parse_spec
from rsc_core.data.planting import SpuriousDataset, build_spurious_dataset
from rsc_core.data.subsets import TrainSubset, apply_subset, kept_spurious_indices, read_index_list
from rsc_core.training.trainer import TrainConfig, TrainState, make_loss

IMPORT_FORMAT = 1


@dataclass(frozen=True)
class TrainingSet:
    """What a model was trained on: a spec, the rows of it (None: all) and the loaded data."""

    spec: SpuriousSpec
    subset: TrainSubset | None
    data: SpuriousDataset


def declared_training_set(spec_text: str, data_dir: str | Path | None = None,
                          download: bool | None = None) -> TrainingSet:
    """The training set a spec names: a spurious spec's planted set, or a membership spec's
    target members (with its planted images)."""
    if is_membership_name(spec_text):
        mem = parse_membership_spec(spec_text)
        data = build_spurious_dataset(mem.spurious, data_dir, download)
        subset = membership_split(mem, data.train.labels.numpy()).target_subset
        return TrainingSet(mem.spurious, subset, apply_subset(data, subset))
    spec = parse_spec(spec_text)
    return TrainingSet(spec, None, build_spurious_dataset(spec, data_dir, download))


@dataclass(frozen=True)
class ImportOutcome:
    run: Run
    reused: bool


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (see the module docstring for what is accepted)."""
    state = read_checkpoint(path)["model_state_dict"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; save one with "
                              f"torch.save(model.state_dict(), PATH)")
    if all(key.startswith("module.") for key in state):  # saved from DataParallel
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def import_run(model_file: str | Path, config: TrainConfig, training_set: TrainingSet, *,
               planted: str | None = None,
               runs_dir: str | Path | None = None, force: bool = False,
               on_wait: Callable[[str], None] | None = None) -> ImportOutcome:
    """Make (or reuse) the run folder of ``model_file``, a model of ``config.arch`` trained
    with ``config``'s recipe on ``training_set``; ``planted`` is an index file (or
    inline list) of images the user planted themselves (only with a clean spec)."""
    path = Path(model_file)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    data, spec, subset = training_set.data, training_set.spec, training_set.subset
    indices = _planted(planted, spec, len(data.train))
    state = read_weights(path)
    model = build_model_from_checkpoint({"model_state_dict": state}, config.arch,
                                        data.input_shape, data.num_classes)
    sha256 = file_digest(path)
    config_dict = {**run_config(spec, config, subset),
                   "imported": {"format": IMPORT_FORMAT, "file": path.name, "sha256": sha256,
                                "planted": None if indices is None else indices.tolist()}}
    root = resolve_runs_dir(runs_dir)
    name = fitted_name(root, run_slug(spec, config, subset) + "_imported",
                       config_hash(config_dict), RUN_NAME_RESERVE)
    run = Run(root / name)
    with RunLock(run.path, on_wait=on_wait):
        if not force and run.finished:
            run.model_sha256()
            return ImportOutcome(run, reused=True)
        created = not run.path.exists()
        try:
            _write(run, config_dict, model, spec, config, data, indices)
        except BaseException:
            if created:
                shutil.rmtree(run.path, ignore_errors=True)
            raise
    return ImportOutcome(run, reused=False)


def _planted(text: str | None, spec: SpuriousSpec, num_train: int) -> np.ndarray | None:
    """The user's own planted rows, checked against the training set; only for a clean spec
    (a spurious spec's planted rows are rsc's)."""
    if text is None:
        return None
    if not spec.is_clean:
        raise SpecError(f"--planted lists images planted in the dataset's own files; "
                        f"{spec.name} plants rsc's pattern itself, so give --dataset "
                        f"{spec.dataset} with --planted, or the spec alone")
    indices = np.unique(np.asarray(read_index_list(text, "planted"), dtype=np.int64))
    if indices.size == 0:
        raise SpecError("--planted lists no training index; give one per line")
    bad = indices[(indices < 0) | (indices >= num_train)]
    if bad.size:
        raise SpecError(f"planted index {int(bad[0])} is out of range: the training set has "
                        f"{num_train} images (indices 0-{num_train - 1})")
    return indices


def _write(run: Run, config_dict: dict[str, Any], model: torch.nn.Module, spec: SpuriousSpec,
           config: TrainConfig, data: SpuriousDataset, planted: np.ndarray | None) -> None:
    """Fill the folder as a finished training run would be, ``metrics.json`` last: the model
    in rsc's checkpoint format, its accuracies and (for a spurious spec) its score."""
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.path / "config.json", config_dict)
    loss = make_loss(config.loss)
    train_loss, train_accuracy = loss_and_accuracy(model, data.train.images, data.train.labels,
                                                   loss)
    test_loss, test_accuracy = loss_and_accuracy(model, data.test.images, data.test.labels,
                                                 loss)
    history = [{"epoch": config.epochs, "train_loss": train_loss,
                "train_accuracy": train_accuracy, "test_loss": test_loss,
                "test_accuracy": test_accuracy}]
    save_checkpoint_states(run.path / "model.pt", model.state_dict(), None, None,
                           config.epochs, history, checkpoint_meta(spec, config, data))
    run.log(f"imported from {config_dict['imported']['file']} "
            f"(sha256 {config_dict['imported']['sha256'][:16]})")
    kept = planted if planted is not None else kept_spurious_indices(data)
    finish_run(run, spec, data.test, kept, model, TrainState(config.epochs, history))
