"""Build a spurious training set exactly as the reference does (PROTOCOL.md section 2):
``RandomState(seed).choice(np.where(y_train == label)[0], size=n, replace=False)`` selects
training images of the target class, and the pattern (with the same seed) is applied to those
images only. Labels are never changed; the test set stays clean."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rsc_core.data.datasets import DatasetBundle, ImageData, load_dataset
from rsc_core.errors import SpecError
from rsc_core.data.spec import SpuriousSpec


@dataclass(frozen=True)
class SpuriousDataset(DatasetBundle):
    """A clean test set, a training set with planted patterns, and what was planted where."""

    spec: SpuriousSpec
    spurious_indices: np.ndarray  # int64, in the order the reference draws them

    def summary(self) -> dict:
        """Plain facts about the dataset, for printing or JSON."""
        labels = self.train.labels
        return {
            "spec": self.spec.name,
            "dataset": self.spec.dataset,
            "pattern": self.spec.pattern,
            "targets": list(self.spec.targets),
            "seed": self.spec.seed,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "num_train": len(self.train),
            "num_test": len(self.test),
            "num_spurious": int(self.spurious_indices.size),
            "spurious_indices": self.spurious_indices.tolist(),
            "spurious_labels": labels[torch.from_numpy(self.spurious_indices)].tolist(),
        }


def select_spurious_indices(labels: np.ndarray, label: int, n: int,
                            random_state: np.random.RandomState) -> np.ndarray:
    """The reference's draw: ``n`` distinct training indices of class ``label``."""
    candidates = np.where(labels == label)[0]
    if n > candidates.size:
        raise SpecError(f"n = {n} is larger than class {label}, which has {candidates.size} "
                        f"training images; choose a smaller n")
    return random_state.choice(candidates, size=n, replace=False).astype(np.int64)


def patched_rows(bundle: DatasetBundle, spec: SpuriousSpec) -> tuple[np.ndarray, torch.Tensor]:
    """The training indices ``spec`` plants its pattern on (in the reference's draw order) and
    those images with the pattern applied. Everything else of the training set is unchanged,
    so many specs on one base dataset need only these rows each (multi-model training)."""
    from rsc_core import registry

    empty = np.empty(0, dtype=np.int64)
    if spec.is_clean:
        return empty, bundle.train.images[:0].clone()
    for target in spec.targets:
        if target >= bundle.num_classes:
            raise SpecError(f"target class {target} is out of range: {spec.dataset} has "
                            f"classes 0-{bundle.num_classes - 1}")
    pattern = registry("patterns").create(spec.pattern)
    labels = bundle.train.labels.numpy()
    random_state = np.random.RandomState(spec.seed)
    drawn, rows = [], []
    for target in spec.targets:  # twoclass: drawn in order from ONE RandomState, applied in turn
        indices = select_spurious_indices(labels, target, spec.n, random_state)
        if indices.size:
            rows.append(pattern.apply(bundle.train.images[torch.from_numpy(indices)], spec.seed))
        drawn.append(indices)
    indices = np.concatenate(drawn) if drawn else empty
    images = torch.cat(rows) if rows else bundle.train.images[:0].clone()
    return indices, images


def plant(bundle: DatasetBundle, spec: SpuriousSpec) -> SpuriousDataset:
    """Apply ``spec`` to a loaded clean dataset. The input bundle is not modified."""
    indices, rows = patched_rows(bundle, spec)
    if spec.is_clean:
        return SpuriousDataset(bundle.name, bundle.train, bundle.test, bundle.classes, spec,
                               indices)
    images = bundle.train.images.clone()
    if indices.size:
        images[torch.from_numpy(indices)] = rows
    train = ImageData(images, bundle.train.labels)
    return SpuriousDataset(bundle.name, train, bundle.test, bundle.classes, spec, indices)


def build_spurious_dataset(spec: SpuriousSpec | str, data_dir: str | Path | None = None,
                           download: bool | None = None) -> SpuriousDataset:
    """Load the clean dataset named by ``spec`` and plant its pattern."""
    from rsc_core.data.spec import parse_spec

    if isinstance(spec, str):
        spec = parse_spec(spec)
    return plant(load_dataset(spec.dataset, data_dir, download), spec)
