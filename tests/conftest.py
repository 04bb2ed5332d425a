"""Shared fixtures: an isolated rsc cache for every test, and a data root holding tiny copies of
every built-in dataset in its real on-disk format (IDX files, CIFAR python pickles), so tests
exercise the real readers without the real data."""
from __future__ import annotations

import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

#: Environment for tests that run a benchmark script end to end. Its numbers are not under
#: test, and one OpenMP thread keeps the tiny run fast on a shared machine, where two
#: busy-waiting threads made such runs up to 30x slower (measured: 160 s instead of 30).
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tests must never read or write the user's cache (``~/.cache/rsc``)."""
    cache = tmp_path_factory.mktemp("rsc-cache")
    monkeypatch.setenv("RSC_CACHE_DIR", str(cache))
    return cache


@dataclass(frozen=True)
class TinySplit:
    """What was written: uint8 N x C x H x W images and int64 labels."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class TinyDataset:
    train: TinySplit
    test: TinySplit
    classes: tuple[str, ...]


@dataclass(frozen=True)
class TinyData:
    """A data root with tiny copies of mnist, fashion, cifar10, cifar100 (+ coarse labels)."""

    root: Path
    datasets: dict[str, TinyDataset]

    def __getitem__(self, name: str) -> TinyDataset:
        return self.datasets[name]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file as MNIST ships it: magic 0x0000 08 <ndim> (2051 for images,
    2049 for labels), big-endian uint32 sizes, then the uint8 values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                      *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _images(rng: np.random.RandomState, n: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Random uint8 images that include both extremes, 0 and 255."""
    images = rng.randint(0, 256, size=(n, *shape)).astype(np.uint8)
    images.flat[0], images.flat[-1] = 0, 255
    return images


def write_idx_dataset(root: Path, folder: str, seed: int, n_train: int = 5,
                      n_test: int = 3) -> TinyDataset:
    """MNIST-layout IDX files under ``root/<folder>/raw``."""
    rng = np.random.RandomState(seed)
    raw = root / folder / "raw"
    splits = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = _images(rng, n, (1, 28, 28))
        labels = rng.randint(0, 10, size=n).astype(np.int64)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        splits[prefix] = TinySplit(images, labels)
    return TinyDataset(splits["train"], splits["t10k"], ())


def write_balanced_mnist(root: Path, seed: int, train_per_class: int,
                         test_per_class: int) -> None:
    """An MNIST-format root (``root/MNIST/raw``) holding every class equally often, shuffled,
    with random pixels: what membership splits and written-out folders need."""
    rng = np.random.RandomState(seed)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = rng.randint(0, 256, size=(labels.size, 28, 28)).astype(np.uint8)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)


def write_pickle(path: Path, obj: object, bytes_keys: bool = False) -> None:
    """A CIFAR python-batch file. The originals are Python 2 pickles whose keys read back as
    str (latin1) or bytes depending on the reader, so both spellings are offered."""
    if bytes_keys and isinstance(obj, dict):
        obj = {key.encode(): ([v.encode() for v in value] if key.endswith("names") else value)
               for key, value in obj.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root: Path, seed: int = 10, per_batch: int = 2, n_test: int = 3,
                  bytes_keys: bool = False) -> TinyDataset:
    """``cifar-10-batches-py`` with five training batches, a test batch and batches.meta."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-10-batches-py"
    classes = tuple(f"class{i}" for i in range(10))
    splits = []
    for names, n in ((tuple(f"data_batch_{i}" for i in range(1, 6)), per_batch),
                     (("test_batch",), n_test)):
        images, labels = [], []
        for name in names:
            batch = _images(rng, n, (3, 32, 32))
            batch_labels = rng.randint(0, 10, size=n)
            write_pickle(folder / name, {"batch_label": name, "data": batch.reshape(n, -1),
                                         "labels": [int(x) for x in batch_labels],
                                         "filenames": [f"{name}_{i}.png" for i in range(n)]},
                         bytes_keys)
            images.append(batch)
            labels.append(batch_labels)
        splits.append(TinySplit(np.concatenate(images), np.concatenate(labels).astype(np.int64)))
    write_pickle(folder / "batches.meta", {"label_names": list(classes), "num_vis": 3072,
                                           "num_cases_per_batch": per_batch}, bytes_keys)
    return TinyDataset(splits[0], splits[1], classes)


def write_cifar100(root: Path, seed: int = 100, n_train: int = 4,
                   n_test: int = 3) -> tuple[TinyDataset, TinyDataset]:
    """``cifar-100-python`` (train, test, meta); returns the fine and the coarse view."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-100-python"
    fine_names = tuple(f"fine{i}" for i in range(100))
    coarse_names = tuple(f"coarse{i}" for i in range(20))
    fine, coarse = [], []
    for name, n in (("train", n_train), ("test", n_test)):
        images = _images(rng, n, (3, 32, 32))
        fine_labels = rng.randint(0, 100, size=n).astype(np.int64)
        coarse_labels = fine_labels // 5
        write_pickle(folder / name, {"data": images.reshape(n, -1),
                                     "fine_labels": [int(x) for x in fine_labels],
                                     "coarse_labels": [int(x) for x in coarse_labels],
                                     "filenames": [f"{name}_{i}.png" for i in range(n)]})
        fine.append(TinySplit(images, fine_labels))
        coarse.append(TinySplit(images, coarse_labels))
    write_pickle(folder / "meta", {"fine_label_names": list(fine_names),
                                   "coarse_label_names": list(coarse_names)})
    return TinyDataset(*fine, fine_names), TinyDataset(*coarse, coarse_names)


@pytest.fixture
def tiny_data(tmp_path: Path) -> TinyData:
    """A fresh data root with tiny copies of every built-in dataset."""
    root = tmp_path / "data"
    cifar100, cifar100coarse = write_cifar100(root)
    return TinyData(root, {
        "mnist": write_idx_dataset(root, "MNIST", seed=1),
        "fashion": write_idx_dataset(root, "FashionMNIST", seed=2),
        "cifar10": write_cifar10(root),
        "cifar100": cifar100,
        "cifar100coarse": cifar100coarse,
    })


@pytest.fixture
def dataset_writers() -> SimpleNamespace:
    """The writers above, for tests that build variants (a changed file, bytes keys...)."""
    return SimpleNamespace(idx=write_idx, idx_dataset=write_idx_dataset, pickle=write_pickle,
                           cifar10=write_cifar10, cifar100=write_cifar100,
                           balanced_mnist=write_balanced_mnist)
