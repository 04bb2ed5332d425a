"""Runs: one training experiment in one folder, named by a readable slug plus a short hash of
its full configuration. The folder holds ``config.json``, ``metrics.json`` (written last, when
the run finished), ``model.pt`` (the final checkpoint), ``checkpoint.pt`` (the latest epoch,
while training) and ``log.txt``. Every file is written atomically.

* An identical finished configuration is reused, not retrained, unless ``force``.
* An interrupted run resumes from ``checkpoint.pt`` when trained again with the same config.
* ``force`` retrains from scratch but replaces the finished files only when the new run
  finishes, so a crash never loses a finished run.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from . import registry
from .atomic import write_json, write_numpy
from .checkpoints import build_model_from_checkpoint, read_checkpoint, save_checkpoint
from .errors import CheckpointError, RscError
from .paths import runs_dir as resolve_runs_dir
from .regularisers import build_regularisers
from .scoring import DEFAULT_THRESHOLD, ScoreResult, resolve_target, score_model
from .spec import SpuriousSpec
from .spurious import SpuriousDataset, build_spurious_dataset
from .training import TrainConfig

if TYPE_CHECKING:
    from .datasets import ImageData

RUN_FORMAT = 1


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_config(spec: SpuriousSpec, config: TrainConfig) -> dict[str, Any]:
    """The full configuration that identifies a run (device choices excluded)."""
    return {"rsc_run": RUN_FORMAT, "spec": spec.as_dict(), "train": config.as_dict()}


def config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_slug(spec: SpuriousSpec, config: TrainConfig) -> str:
    """Readable folder name, e.g. ``mnistv8-3-0-0_ce-tor-LargeMLP_adam-lr0.01-b128-e70-s0``."""
    parts = [spec.name, config.model_spec.name,
             f"{config.optimizer}-lr{config.lr:g}-b{config.batch_size}-e{config.epochs}"
             f"-s{config.seed}"]
    if config.momentum:
        parts[-1] += f"-m{config.momentum:g}"
    for reg in config.regularisers:
        params = "-".join(f"{k}{_format_value(v)}" for k, v in sorted(reg.get("params", {}).items()))
        parts.append(f"{reg['name']}{'-' + params if params else ''}")
    slug = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", slug)


@dataclass(frozen=True)
class Run:
    """A run folder on disk."""

    path: Path

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise RscError(f"{path} is not an rsc run folder (no config.json); give a run "
                           f"folder or a checkpoint file")
        return cls(path)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    @property
    def metrics(self) -> dict[str, Any] | None:
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None

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
    def name(self) -> str:
        return self.path.name

    def load_model(self) -> nn.Module:
        if not self.finished:
            raise RscError(f"run {self.path} has not finished; train it first (rsc train)")
        return build_model_from_checkpoint(read_checkpoint(self.path / "model.pt"))

    def log(self, line: str) -> None:
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        with open(self.path / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")


@dataclass(frozen=True)
class TrainOutcome:
    run: Run
    reused: bool
    resumed_from: int = 0


def find_run(spec: SpuriousSpec, config: TrainConfig, runs_dir: str | Path | None = None) -> Run:
    cfg = run_config(spec, config)
    return Run(resolve_runs_dir(runs_dir) / f"{run_slug(spec, config)}-{config_hash(cfg)}")


def train_run(spec: SpuriousSpec, config: TrainConfig, *, runs_dir: str | Path | None = None,
              data_dir: str | Path | None = None, download: bool | None = None,
              force: bool = False, progress: bool = True, device: str = "auto",
              channels_last: bool = False, dataset: SpuriousDataset | None = None) -> TrainOutcome:
    """Train (or reuse, or resume) the run for ``spec`` and ``config``."""
    run = find_run(spec, config, runs_dir)
    if run.finished and not force:
        return TrainOutcome(run, reused=True)
    # Resolve every name before loading data, so a typo fails at once.
    trainer = registry("trainers").create(config.trainer)
    architecture = registry("architectures").create(config.arch)
    regularisers = build_regularisers(config.regularisers)
    data = dataset if dataset is not None else build_spurious_dataset(spec, data_dir, download)
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.path / "config.json", run_config(spec, config))
    torch.manual_seed(config.seed)
    model = architecture.build(data.input_shape, data.num_classes)
    meta = {"arch": config.arch, "input_shape": list(data.input_shape),
            "num_classes": data.num_classes, "spec": spec.as_dict(),
            "config": config.as_dict(), "classes": list(data.classes)}
    resume = _resumable(run, force)
    run.log(f"{'resume from epoch ' + str(resume['epoch']) if resume else 'start'} "
            f"on {resolve_device(device)}")

    def on_epoch(state, model, optimizer, scheduler) -> None:
        save_checkpoint(run.path / "checkpoint.pt", model, optimizer, scheduler, state.epoch,
                        state.history, meta)
        run.log(json.dumps(state.history[-1]))

    state = trainer.fit(model, data.train, data.test, config, regularisers,
                        device=resolve_device(device), resume=resume, on_epoch=on_epoch,
                        progress=progress, channels_last=channels_last)
    _finish(run, data, model, state, meta)
    return TrainOutcome(run, reused=False, resumed_from=resume["epoch"] if resume else 0)


def _resumable(run: Run, force: bool) -> dict[str, Any] | None:
    path = run.path / "checkpoint.pt"
    if force or not path.is_file():
        return None
    try:
        return read_checkpoint(path)
    except CheckpointError as exc:
        run.log(f"ignoring unreadable checkpoint: {exc}")
        return None


def _finish(run: Run, data: SpuriousDataset, model: nn.Module, state: Any, meta: dict) -> None:
    """Write the final model, the score for the run's own pattern, then metrics.json."""
    # The final model is the last epoch's checkpoint, renamed atomically.
    (run.path / "checkpoint.pt").replace(run.path / "model.pt")
    model = model.cpu()
    score = None
    if not data.spec.is_clean:
        result = score_model(model, data.test, data.spec.pattern, data.spec.target,
                             data.spec.seed)
        _store_score(run, result)
        score = result.as_dict()
    last = state.history[-1] if state.history else {}
    write_json(run.path / "metrics.json", {
        "status": "finished",
        "finished_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "spec": data.spec.as_dict(),
        "epochs": state.epoch,
        "clean_accuracy": last.get("test_accuracy"),
        "train_accuracy": last.get("train_accuracy"),
        "score": score,
        "spurious_indices": data.spurious_indices.tolist(),
        "history": state.history,
    })
    run.log("finished")


def score_key(pattern: str, target: int, seed: int, threshold: float,
              exclude_target: bool) -> str:
    return f"{pattern}-t{target}-s{seed}-th{threshold:g}{'-excl' if exclude_target else ''}"


def _store_score(run: Run, result: ScoreResult) -> None:
    key = score_key(result.pattern, result.target, result.seed, result.threshold,
                    result.exclude_target)
    folder = run.path / "scores"
    folder.mkdir(exist_ok=True)
    write_numpy(folder / f"{key}.npy", result.indicators)
    write_json(folder / f"{key}.json", result.as_dict())


def score_run(run: Run, pattern: str | None = None, target: int | None = None,
              seed: int | None = None, threshold: float = DEFAULT_THRESHOLD,
              exclude_target: bool = False, data_dir: str | Path | None = None,
              download: bool | None = None, device: str = "auto",
              load_test: Callable[[], ImageData] | None = None) -> ScoreResult:
    """The spurious score of a finished run (its own pattern by default), cached per run.

    The test split is loaded only when the score is not cached; ``load_test`` lets a caller
    that scores many runs of one dataset share one loaded copy."""
    spec = run.spec
    pattern, target, seed = resolve_target(spec, pattern, target, seed)
    pattern = registry("patterns").get(pattern).name
    key = score_key(pattern, target, seed, threshold, exclude_target)
    cached = run.path / "scores" / f"{key}.json"
    if cached.is_file() and (run.path / "scores" / f"{key}.npy").is_file():
        data = json.loads(cached.read_text())
        return ScoreResult(**data, indicators=np.load(run.path / "scores" / f"{key}.npy"))
    if load_test is None:
        from .datasets import load_dataset

        def load_test() -> ImageData:
            return load_dataset(spec.dataset, data_dir, download).test
    result = score_model(run.load_model(), load_test(), pattern, target, seed, threshold,
                         exclude_target, resolve_device(device))
    _store_score(run, result)
    return result
