"""Training on part of a training set. Exact unlearning (retraining without a forget set) and
membership inference (a target pool, a shadow pool, LiRA's random halves) all need runs that
train on a subset of a planted training set. A ``TrainSubset`` is part of a run's identity
(its config, hash and folder name), so such runs are reused, resumed and listed like any run.

Indices are ORIGINAL training-set indices. The kept rows stay in their original order and the
trainer permutes them as it permutes a full training set (``randperm(len(kept))``), so a subset
run is exactly a run on the reduced dataset."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from rsc_core.data.datasets import ImageData
from rsc_core.errors import SpecError
from rsc_core.data.planting import SpuriousDataset


@dataclass(frozen=True)
class TrainSubset:
    """Either every training row except ``indices`` (``mode == "exclude"``) or only
    ``indices`` (``mode == "keep"``). ``indices`` are sorted, distinct and non-negative."""

    mode: str
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.mode not in ("exclude", "keep"):
            raise SpecError(f"a training subset either excludes or keeps rows, not "
                            f"{self.mode!r}")
        if not self.indices:
            what = "remove" if self.mode == "exclude" else "keep"
            raise SpecError(f"the list of training rows to {what} is empty; give at least one "
                            f"index")

    @classmethod
    def excluding(cls, indices: Iterable[int]) -> "TrainSubset":
        """All training rows except ``indices`` (e.g. a forget set)."""
        return cls("exclude", _normalise(indices))

    @classmethod
    def keeping(cls, indices: Iterable[int]) -> "TrainSubset":
        """Only the training rows ``indices`` (e.g. a shadow model's half of a pool)."""
        return cls("keep", _normalise(indices))

    def rows(self, num_train: int) -> np.ndarray:
        """The sorted original indices a run on ``num_train`` training images trains on."""
        indices = np.asarray(self.indices, dtype=np.int64)
        if indices[-1] >= num_train:
            raise SpecError(f"training index {int(indices[-1])} is out of range: the training "
                            f"set has {num_train} images (indices 0-{num_train - 1})")
        if self.mode == "keep":
            return indices
        kept = np.setdiff1d(np.arange(num_train, dtype=np.int64), indices, assume_unique=True)
        if kept.size == 0:
            raise SpecError("removing these rows leaves no training image; remove fewer")
        return kept

    def size_key(self) -> tuple[str, int]:
        """Runs on one base dataset whose subsets share this key train on equally many rows
        (what lets them share a multi-model group)."""
        return self.mode, len(self.indices)

    def digest(self) -> str:
        text = ",".join(map(str, self.indices))
        return hashlib.sha256(f"{self.mode}:{text}".encode()).hexdigest()[:8]

    def tag(self) -> str:
        """The part of a run's folder name that names its subset, e.g. ``minus3-1a2b3c4d``."""
        word = "minus" if self.mode == "exclude" else "keep"
        return f"{word}{len(self.indices)}-{self.digest()}"

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "indices": list(self.indices)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSubset":
        return cls(data["mode"], _normalise(data["indices"]))


_INDEX_LIST = re.compile(r"\s*-?\d+(\s*,\s*-?\d+)*\s*,?\s*")


def read_index_list(text: str, noun: str, error: type[Exception] = SpecError) -> list[int]:
    """Training indices as a user writes them: an inline list ``3,17,42`` or a text file of
    indices (whitespace, commas or one per line; ``#`` starts a comment). ``noun`` names the
    list in errors (``forget`` -> "forget set", "forget file"). Range is checked later,
    against the loaded data (``TrainSubset.rows``)."""
    text = text.strip()
    if _INDEX_LIST.fullmatch(text):
        return [int(part) for part in text.replace(",", " ").split()]
    path = Path(text)
    if not path.is_file():
        raise error(f"{noun} set {text!r} is neither 'spurious', a list of training indices "
                    f"like 3,17,42, nor an existing file")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{noun} file {path} is not a text file; write one training index per "
                    f"line") from None
    indices = []
    for number, line in enumerate(content.splitlines(), start=1):
        for word in line.split("#", 1)[0].replace(",", " ").split():
            try:
                indices.append(int(word))
            except ValueError:
                raise error(f"{noun} file {path} line {number}: {word!r} is not a training "
                            f"index; write whole numbers, one per line or comma-separated"
                            ) from None
    return indices


def _normalise(indices: Iterable[int]) -> tuple[int, ...]:
    values = []
    for value in indices:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise SpecError(f"training indices must be whole numbers, got {value!r}")
        if value < 0:
            raise SpecError(f"training indices cannot be negative, got {value}")
        values.append(int(value))
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class SubsetDataset(SpuriousDataset):
    """A spurious dataset restricted to some training rows. ``train_rows[i]`` is the original
    index of training row i; ``spurious_indices`` are positions in the reduced training set
    (so ``train.images[spurious_indices]`` are the planted rows that remain)."""

    train_rows: np.ndarray

    def original_spurious_indices(self) -> np.ndarray:
        return self.train_rows[self.spurious_indices]


def apply_subset(data: SpuriousDataset, subset: TrainSubset) -> SubsetDataset:
    """``data`` with only the rows ``subset`` keeps; the input is not modified. ``subset``
    numbers the rows of ``data.train``: applied to a ``SubsetDataset`` it narrows that subset
    further, and ``train_rows`` stays in original numbering."""
    rows = subset.rows(len(data.train))
    index = torch.from_numpy(rows)
    train = ImageData(data.train.images.index_select(0, index),
                      data.train.labels.index_select(0, index))
    positions = np.searchsorted(rows, data.spurious_indices)
    positions = np.minimum(positions, rows.size - 1)
    remains = rows[positions] == data.spurious_indices
    fields = {name: getattr(data, name) for name in data.__dataclass_fields__}
    fields.update(train=train, spurious_indices=positions[remains].astype(np.int64),
                  train_rows=training_rows(data)[rows])
    return SubsetDataset(**fields)


def training_rows(data: SpuriousDataset) -> np.ndarray:
    """The original indices of ``data.train``'s rows, in order."""
    if isinstance(data, SubsetDataset):
        return data.train_rows
    return np.arange(len(data.train), dtype=np.int64)


def without(subset: TrainSubset | None, indices: Iterable[int]) -> TrainSubset:
    """The training subset of a run trained on ``subset`` (None: every row) with ``indices``
    (original numbering) removed too: what exact unlearning of a subset run trains on."""
    indices = _normalise(indices)
    if subset is None:
        return TrainSubset.excluding(indices)
    if subset.mode == "exclude":
        return TrainSubset.excluding((*subset.indices, *indices))
    return TrainSubset.keeping(sorted(set(subset.indices) - set(indices)))


def kept_spurious_indices(data: SpuriousDataset) -> np.ndarray:
    """The planted rows a run trains on, in original training-set numbering."""
    if isinstance(data, SubsetDataset):
        return data.original_spurious_indices()
    return data.spurious_indices


__all__ = ["TrainSubset", "SubsetDataset", "apply_subset", "kept_spurious_indices",
           "read_index_list", "training_rows", "without"]
