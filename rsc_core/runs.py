"""Runs: one training experiment in one folder, named by a readable slug plus a short hash of
its full configuration. The folder holds ``config.json``, ``metrics.json`` (written last, when
the run finished, with the size and SHA-256 of ``model.pt``), ``model.pt`` (the final
checkpoint), ``checkpoint.pt`` (the latest epoch, while training), ``scores/`` (cached scores,
filed under the checksum of the weights they were computed from) and ``log.txt``. Every file is
written atomically.

* An identical finished configuration is reused, not retrained, unless ``force``; its model
  file is verified against the checksum recorded at finish before it is reused or scored.
* An interrupted run resumes from ``checkpoint.pt`` when trained again with the same config.
* ``force`` retrains from scratch but replaces the finished files only when the new run
  finishes, so a crash never loses a finished run; the old run's cached scores go with it.
* One process at a time trains a run: a second waits for the first and then reuses its result.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from . import registry
from .atomic import write_json, write_numpy
from .checkpoints import build_model_from_checkpoint, read_checkpoint, save_checkpoint
from .digests import file_digest
from .errors import CheckpointError, RscError
from .hardware import check_precision
from .memory_format import AUTO, CHANNELS_LAST, check_memory_format, use_channels_last
from .paths import fitted_name
from .paths import runs_dir as resolve_runs_dir
from .regularisers import build_regularisers
from .run_lock import RunLock
from .scoring import DEFAULT_THRESHOLD, ScoreResult, check_threshold, resolve_target, score_model
from .spec import SpuriousSpec
from .spurious import SpuriousDataset, build_spurious_dataset
from .subsets import TrainSubset, apply_subset, kept_spurious_indices
from .training import TrainConfig

if TYPE_CHECKING:
    from .datasets import ImageData

#: Format 2 records the model file's checksum at finish; format 1 folders cannot be verified.
RUN_FORMAT = 2
#: Bytes a run folder's name leaves free for the names made from it (``<name>.owner`` in
#: ``.locks``, ``.<name>.tmp-<pid>`` of a removal): a longer name is shortened.
RUN_NAME_RESERVE = 16


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU) or a device torch knows and this machine has;
    anything else is one clear error, raised before any run folder is created."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    valid = "auto, cpu, cuda, cuda:N"
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise RscError(f"unknown device {device!r}; use one of {valid}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RscError(f"device {device!r} asked for, but this machine has no CUDA GPU "
                           f"torch can use; use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= count:
            raise RscError(f"device {device!r} does not exist: this machine has {count} "
                           f"CUDA GPU(s), cuda:0-cuda:{count - 1}")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise RscError(f"device {device!r} is not available on this machine; use one "
                           f"of {valid}")
    elif resolved.type != "cpu":
        raise RscError(f"device {device!r} is not supported; use one of {valid}")
    return resolved


def run_config(spec: SpuriousSpec, config: TrainConfig,
               subset: TrainSubset | None = None) -> dict[str, Any]:
    """The full configuration that identifies a run (device choices excluded). A run on the
    whole training set has no ``subset`` key, so its hash is what it always was."""
    config_dict = {"rsc_run": RUN_FORMAT, "spec": spec.as_dict(), "train": config.as_dict()}
    if subset is not None:
        config_dict["subset"] = subset.as_dict()
    return config_dict


def config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def format_number(value: Any) -> str:
    """A number as it appears in names: the shortest text that reads back as the same value
    (``repr``), so ``1e+308`` stays ``1e+308`` and 0.0123456789 is not rounded."""
    return repr(float(value)) if isinstance(value, float) else str(value)


def run_slug(spec: SpuriousSpec, config: TrainConfig, subset: TrainSubset | None = None) -> str:
    """Readable folder name, e.g. ``mnistv8-3-0-0_ce-tor-LargeMLP_adam-lr0.01-b128-e70-s0``
    (``..._minus3-1a2b3c4d`` for a run without three training rows)."""
    parts = [spec.name, config.model_spec.name,
             f"{config.optimizer}-lr{format_number(config.lr)}-b{config.batch_size}"
             f"-e{config.epochs}-s{config.seed}"]
    if config.momentum:
        parts[-1] += f"-m{format_number(config.momentum)}"
    if config.adam_impl != "fused":
        parts[-1] += f"-{config.adam_impl}"
    for reg in config.regularisers:
        params = "-".join(f"{k}{format_number(v)}"
                          for k, v in sorted(reg.get("params", {}).items()))
        parts.append(f"{reg['name']}{'-' + params if params else ''}")
    if subset is not None:
        parts.append(subset.tag())
    slug = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", slug)


def _read_json(path: Path, what: str) -> Any:
    """A run file's JSON, or one clear error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RscError(f"{path} is corrupt ({type(exc).__name__}); {what}") from None
    if not isinstance(data, dict):  # valid JSON, but not the object rsc wrote
        raise RscError(f"{path} is corrupt (not a JSON object); {what}")
    return data


@dataclass(frozen=True)
class Run:
    """A run folder on disk. ``Run("runs/<folder>")`` and ``Run.open(...)`` both accept a str or
    a ``Path``; ``open`` also checks that the folder is a run."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise RscError(f"{path} is not an rsc run folder (no config.json); give a run "
                           f"folder or a checkpoint file")
        run = cls(path)
        version = run.config.get("rsc_run")
        if version != RUN_FORMAT:
            raise RscError(f"run {path} has folder format {version!r}, which rsc "
                           f"{RUN_FORMAT} cannot verify; train it again with this version "
                           f"(rsc train ... --force)")
        return run

    @property
    def config(self) -> dict[str, Any]:
        return _read_json(self.path / "config.json",
                          "remove the run folder and train it again")

    @property
    def metrics(self) -> dict[str, Any] | None:
        path = self.path / "metrics.json"
        if not path.is_file():
            return None
        return _read_json(path, "retrain the run with rsc train ... --force")

    @property
    def finished(self) -> bool:
        metrics = self.metrics
        return bool(metrics and metrics.get("status") == "finished"
                    and (self.path / "model.pt").is_file())

    @property
    def spec(self) -> SpuriousSpec:
        return SpuriousSpec.from_dict(self.config["spec"])

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config["train"])

    @property
    def subset(self) -> TrainSubset | None:
        """The training rows this run trained on, or None for the whole training set."""
        data = self.config.get("subset")
        return TrainSubset.from_dict(data) if data else None

    @property
    def name(self) -> str:
        return self.path.name

    def model_sha256(self) -> str:
        """The checksum of ``model.pt`` after checking it against the size and SHA-256 recorded
        when the run finished: a truncated or replaced model file is an error, never a score."""
        if not self.finished:
            raise RscError(f"run {self.path} has not finished; train it first (rsc train)")
        recorded = (self.metrics or {}).get("model_file") or {}
        path = self.path / "model.pt"
        problem = None
        if "sha256" not in recorded or "bytes" not in recorded:
            problem = "its metrics.json records no checksum for it"
        elif path.stat().st_size != recorded["bytes"]:
            problem = (f"it has {path.stat().st_size} bytes where {recorded['bytes']} were "
                       f"recorded (truncated or replaced?)")
        else:
            actual = file_digest(path)
            if actual != recorded["sha256"]:
                problem = "its SHA-256 differs from the one recorded (replaced or corrupted?)"
            else:
                return actual
        raise CheckpointError(f"model file {path} does not match its run: {problem}; retrain "
                              f"it with rsc train ... --force")

    def load_model(self) -> nn.Module:
        self.model_sha256()
        return build_model_from_checkpoint(read_checkpoint(self.path / "model.pt"))

    def log(self, line: str) -> None:
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        try:
            with open(self.path / "log.txt", "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} {line}\n")
        except FileNotFoundError:
            raise RscError(f"run folder {self.path} was deleted while it was in use; nothing "
                           f"more was written to it; train the run again to start over"
                           ) from None
        except OSError as exc:  # a failed write() names no file; say which (disk full?)
            exc.filename = exc.filename or str(self.path / "log.txt")
            raise


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
        _store_score(run, model_file["sha256"], result)
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
    from .results_index import record_run  # here: results_index imports this module

    record_run(run)  # best effort: the folder is the truth, the index a cache of it


def score_key(pattern: str, target: int, seed: int, threshold: float,
              exclude_target: bool) -> str:
    return (f"{pattern}-t{target}-s{seed}-th{format_number(float(threshold))}"
            f"{'-excl' if exclude_target else ''}")


def _score_files(run: Run, model_sha256: str, key: str) -> tuple[Path, Path]:
    """Cached scores live under the checksum of the weights they were computed from, so a
    score can never outlive (or be mistaken for) the model that produced it."""
    folder = run.path / "scores" / model_sha256[:16]
    return folder / f"{key}.json", folder / f"{key}.npy"


def _store_score(run: Run, model_sha256: str, result: ScoreResult) -> None:
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
        from .datasets import load_dataset

        def load_test() -> ImageData:
            return load_dataset(spec.dataset, data_dir, download).test
    model = build_model_from_checkpoint(read_checkpoint(run.path / "model.pt"))
    result = score_model(model, load_test(), pattern, target, seed, threshold,
                         exclude_target, resolve_device(device))
    _store_score(run, model_sha256, result)
    return result
