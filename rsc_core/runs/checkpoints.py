"""Checkpoints: rsc's own (which record architecture, input shape, class count, spec and config,
so they load without extra arguments) and the reference's (``epoch``, ``model_state_dict``,
``optimizer_state_dict``). Files are always read with ``weights_only=True``: a checkpoint can
hold tensors and plain data, never code."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsc_core.storage.atomic import write_torch
from rsc_core.errors import CheckpointError

FORMAT = "rsc-checkpoint/1"


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    scheduler: Any, epoch: int, history: list[dict], meta: dict) -> None:
    """Write atomically: an interrupted save leaves the previous checkpoint intact."""
    save_checkpoint_states(path, model.state_dict(),
                           optimizer.state_dict() if optimizer is not None else None,
                           scheduler.state_dict() if scheduler is not None else None,
                           epoch, history, meta)


def save_checkpoint_states(path: str | Path, model_state: dict, optimizer_state: dict | None,
                           scheduler_state: dict | None, epoch: int, history: list[dict],
                           meta: dict) -> None:
    """``save_checkpoint`` from state dicts (a multi-model trainer has no per-member optimizer
    object, only each member's slice of the group's state)."""
    write_torch(Path(path), {
        "format": FORMAT,
        "epoch": epoch,
        "model_state_dict": model_state,
        "optimizer_state_dict": optimizer_state,
        "scheduler_state_dict": scheduler_state,
        "history": history,
        "meta": meta,
    })


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely; any problem is one ``CheckpointError`` line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):  # not a pickle at all: garbage
            raise _corrupt(path, exc) from None
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data, which rsc "
            f"refuses to load because they could run code ({_unsafe_global(exc)}); for a "
            f"whole pickled model (torch.save(model)), save its weights instead: "
            f"torch.save(model.state_dict(), PATH)"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError, TypeError, AttributeError) as exc:  # what torch raises on garbage
        raise _corrupt(path, exc) from None
    if isinstance(data, dict) and "model_state_dict" in data:
        return data
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        return {**data, "model_state_dict": data["state_dict"]}  # e.g. PyTorch Lightning's
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"model_state_dict": data}  # a bare state_dict
    raise CheckpointError(f"{path} is not a model checkpoint (no 'model_state_dict')")


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file "
                           f"({type(exc).__name__}); re-create it (rsc train --force)")


def _unsafe_global(exc: BaseException) -> str:
    """The line of torch's long message that names the refused global, or its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported global" in line]
    return (named or lines or ["refused"])[0][:160]


def build_model_from_checkpoint(checkpoint: dict[str, Any], arch: str | None = None,
                                input_shape: tuple[int, int, int] | None = None,
                                num_classes: int | None = None) -> nn.Module:
    """Build the recorded (or given) architecture and load the weights strictly."""
    from rsc_core import registry

    meta = checkpoint.get("meta") or {}
    arch = arch or meta.get("arch")
    input_shape = tuple(input_shape or meta.get("input_shape") or ())
    num_classes = num_classes or meta.get("num_classes")
    if not arch or len(input_shape) != 3 or not num_classes:
        raise CheckpointError("this checkpoint does not record its architecture (a reference "
                              "checkpoint?); pass --arch and --dataset to say what it holds")
    model = registry("architectures").create(arch).build(input_shape, int(num_classes))
    try:
        model.load_state_dict(checkpoint["model_state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit architecture {arch} with input "
                              f"{input_shape} and {num_classes} classes: "
                              f"{_misfit(model.state_dict(), checkpoint['model_state_dict'], exc)}"
                              ) from None
    return model


def _misfit(expected: dict[str, Any], given: dict[str, Any], exc: RuntimeError) -> str:
    """Which keys do not fit, counted, with an example of each kind (torch's own message runs
    to hundreds of lines for a wrong architecture)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} is {tuple(given[k].shape)} in the file, {tuple(expected[k].shape)} in the "
              f"model" for k in expected if k in given and hasattr(given[k], "shape")
              and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = [f"{len(items)} {what} (e.g. {items[0]})" for items, what in (
        (missing, "missing keys"), (unexpected, "unexpected keys"), (shapes, "shape mismatches"))
        if items]
    return "; ".join(parts) or str(exc).strip().splitlines()[0]
