"""A run folder: one training experiment in one folder, named by a readable slug plus a short
hash of its full configuration. The folder holds ``config.json``, ``metrics.json`` (written
last, when the run finished, with the size and SHA-256 of ``model.pt``), ``model.pt`` (the final
checkpoint), ``checkpoint.pt`` (the latest epoch, while training), ``scores/`` (cached scores,
filed under the checksum of the weights they were computed from) and ``log.txt``. Every file is
written atomically. This module reads such folders and names them; training one is
``run_training``, scoring one ``run_scores``."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsc_core.runs.checkpoints import build_model_from_checkpoint, read_checkpoint
from rsc_core.storage.digests import file_digest
from rsc_core.errors import CheckpointError, RscError
from rsc_core.data.spec import SpuriousSpec
from rsc_core.data.subsets import TrainSubset
from rsc_core.training.trainer import TrainConfig

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
