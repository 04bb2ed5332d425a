"""Spurious-dataset parity on the canonical data (RSC_DATA_DIR): the selected indices are the
ones the reference's RandomState call selects and the planted pixels are the reference's. The
expected values are computed from the raw IDX files read here with numpy, independently of
rsc's loaders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rsc_core.data.datasets import DatasetBundle, ImageData
from rsc_core.errors import SpecError
from rsc_core.data.spec import SpuriousSpec, parse_spec
from rsc_core.data.planting import build_spurious_dataset, plant

FOLDERS = {"mnist": "MNIST", "fashion": "FashionMNIST"}


def canonical_root() -> Path:
    root = os.environ.get("RSC_DATA_DIR")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("RSC_DATA_DIR does not hold the canonical MNIST (CI sets it)")
    return Path(root)


def read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def reference_build(root: Path, dataset: str, version: str, n: int, label: int, seed: int):
    raw = root / FOLDERS[dataset] / "raw"
    x = read_idx(raw / "train-images-idx3-ubyte")[:, :, :, np.newaxis].astype(np.float32) / 255
    y = read_idx(raw / "train-labels-idx1-ubyte")
    chosen = np.random.RandomState(seed).choice(np.where(y == label)[0], size=n, replace=False)
    noise = np.random.RandomState(seed).rand(*x.shape[1:])
    levels = {"v18": 0.25, "v19": 0.5, "v20": 1.0}
    if version in levels:
        x[chosen] = np.clip(x[chosen] + levels[version] * noise.reshape(1, *x.shape[1:]), 0, 1)
    else:
        x[chosen, :5, :5] = 1  # v8
    return chosen, x


@pytest.mark.parametrize("text", ["mnistv8-3-0-0", "mnistv20-10-1-2", "fashionv20-5-0-4"])
def test_indices_and_pixels_match_reference(text):
    root = canonical_root()
    spec = parse_spec(text)
    ours = build_spurious_dataset(spec, data_dir=root)
    chosen, x_ref = reference_build(root, spec.dataset, spec.pattern, spec.n, spec.target,
                                    spec.seed)
    assert ours.spurious_indices.tolist() == chosen.tolist()
    assert (ours.train.labels[torch.from_numpy(chosen)] == spec.target).all()
    ours_nhwc = ours.train.images[torch.from_numpy(chosen)].permute(0, 2, 3, 1).numpy()
    assert np.array_equal(ours_nhwc, x_ref[chosen])
    others = np.setdiff1d(np.arange(len(ours.train)), chosen)[:2000]
    assert np.array_equal(ours.train.images[torch.from_numpy(others)].permute(0, 2, 3, 1).numpy(),
                          x_ref[others])


def test_known_indices_for_mnistv8_3_0_0():
    """Pinned values, so a change of selection logic cannot go unnoticed."""
    root = canonical_root()
    y = read_idx(root / "MNIST" / "raw" / "train-labels-idx1-ubyte")
    expected = np.random.RandomState(0).choice(np.where(y == 0)[0], size=3, replace=False)
    assert build_spurious_dataset("mnistv8-3-0-0", data_dir=root).spurious_indices.tolist() \
        == expected.tolist()


def tiny_bundle(labels: list[int], seed: int = 0) -> DatasetBundle:
    images = torch.from_numpy(np.random.RandomState(seed).rand(len(labels), 1, 8, 8)).float()
    split = ImageData(images, torch.tensor(labels, dtype=torch.int64))
    return DatasetBundle("mnist", split, split, tuple(str(i) for i in range(10)))


def test_labels_unchanged_test_set_clean_input_untouched():
    bundle = tiny_bundle([0, 1, 0, 2, 0, 1])
    before = bundle.train.images.clone()
    data = plant(bundle, SpuriousSpec.build("mnist", "v3", 2, 0, 5))
    assert torch.equal(bundle.train.images, before)
    assert torch.equal(data.train.labels, bundle.train.labels)
    assert data.test is bundle.test
    changed = (data.train.images != before).flatten(1).any(1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(data.spurious_indices.tolist())
    assert set(data.spurious_indices.tolist()) <= {0, 2, 4}


def test_twoclass_draws_both_classes_from_one_random_state():
    labels = [0, 1, 2, 1, 2, 1, 2, 0]
    data = plant(tiny_bundle(labels), SpuriousSpec.build("mnist", "v8", 2, (1, 2), 3))
    rs = np.random.RandomState(3)
    y = np.array(labels)
    first = rs.choice(np.where(y == 1)[0], size=2, replace=False)
    second = rs.choice(np.where(y == 2)[0], size=2, replace=False)
    assert data.spurious_indices.tolist() == [*first.tolist(), *second.tolist()]


def test_n_larger_than_class_is_a_spec_error():
    with pytest.raises(SpecError, match="larger than class 0"):
        plant(tiny_bundle([0, 1, 1]), SpuriousSpec.build("mnist", "v8", 2, 0, 0))


def test_summary_reports_indices_and_spec():
    data = plant(tiny_bundle([0, 1, 0, 2]), SpuriousSpec.build("mnist", "v8", 1, 0, 0))
    summary = data.summary()
    assert summary["spec"] == "mnistv8-1-0-0"
    assert summary["num_spurious"] == 1
    assert summary["spurious_labels"] == [0]


def test_clean_spec_returns_dataset_unchanged():
    bundle = tiny_bundle([0, 1])
    data = plant(bundle, SpuriousSpec.build("mnist"))
    assert data.spurious_indices.size == 0 and data.train is bundle.train
