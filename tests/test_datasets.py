"""The built-in dataset providers, loaded through the registry from tiny files in the real
formats (see conftest.py), their checksum verification, plus checks against the canonical copies
(MNIST and Fashion-MNIST verified, the re-packed CIFAR-10 warned about once)."""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision.datasets

import rsc_core
from rsc_core.data import cache as dataset_cache
from rsc_core.data.datasets import DatasetBundle, DatasetProvider
from rsc_core.errors import DatasetCorruptError, DatasetMissingError, RscError
from rsc_core.storage.paths import cache_dir, data_dir
from rsc_core.data.cache import CacheWarning, RawSplits, UnverifiedDataWarning, read_cache

NAMES = ("mnist", "fashion", "cifar10", "cifar100", "cifar100coarse")
GREY = ("mnist", "fashion")
CIFAR = ("cifar10", "cifar100", "cifar100coarse")


def provider(name: str) -> DatasetProvider:
    return rsc_core.create("datasets", name)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process would: no folder warned about yet."""
    monkeypatch.setattr(dataset_cache, "_warned_folders", set())


def load(name: str, root: Path, **kwargs) -> DatasetBundle:
    """Load, ignoring the expected "integrity not verified" warning: tiny files never match
    the published checksums."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedDataWarning)
        return provider(name).load(root, **kwargs)


def assert_matches(bundle: DatasetBundle, expected, name: str) -> None:
    """Shapes, dtypes, [0, 1] range, exact pixels (uint8 / 255) and labels."""
    p = provider(name)
    assert bundle.name == name
    assert bundle.num_classes == p.num_classes
    if expected.classes:
        assert bundle.classes == expected.classes
    for split in ("train", "test"):
        got, want = getattr(bundle, split), getattr(expected, split)
        assert got.images.dtype == torch.float32
        assert got.labels.dtype == torch.int64
        assert tuple(got.images.shape) == (len(want.labels), *p.input_shape)
        assert got.images.min() == 0.0 and got.images.max() == 1.0
        assert torch.equal(got.images, torch.from_numpy(want.images).to(torch.float32) / 255)
        assert torch.equal(got.labels, torch.from_numpy(want.labels))


def cache_files() -> list[Path]:
    return sorted((cache_dir() / "tensors").glob("*.pt"))


def refuse_torchvision(monkeypatch: pytest.MonkeyPatch, class_name: str) -> None:
    """Make torchvision unusable, so a successful load proves the cache was used."""
    def fail(*args, **kwargs):
        raise AssertionError(f"torchvision.datasets.{class_name} was called")

    monkeypatch.setattr(torchvision.datasets, class_name, fail)


def md5_of(path: Path) -> str:
    """Independent of rsc's digest function, which some tests make fail."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust_idx(monkeypatch: pytest.MonkeyPatch, name: str, root: Path) -> None:
    """Pretend the tiny IDX files are the published ones: the provider's MD5s become theirs."""
    p = provider(name)
    folder = root / p.folder
    monkeypatch.setattr(type(p), "md5s", {f: md5_of(folder / f) for f in p.files})


def refuse_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make rsc's digest function fail, so a successful load proves nothing was hashed."""
    def fail(*args, **kwargs):
        raise AssertionError("a dataset file was hashed")

    monkeypatch.setattr(dataset_cache, "file_digest", fail)


def unverified(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UnverifiedDataWarning)]


def trust_files(monkeypatch: pytest.MonkeyPatch, cls: type, folder: Path) -> None:
    """Pretend the tiny CIFAR files are the published ones: torchvision's MD5s become theirs."""
    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(cls, "train_list", [[n, md5(n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})


# --- registry ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_metadata(name):
    entry = rsc_core.get("datasets", name)
    p = entry.create()
    assert isinstance(p, DatasetProvider) and p.name == name
    assert entry.description and p.folder and p.files
    assert len(p.input_shape) == 3 and p.num_classes in (10, 20, 100)


# --- reading the real formats ----------------------------------------------------------------


@pytest.mark.parametrize("name", GREY)
def test_idx_files_load(tiny_data, monkeypatch, name):
    trust_idx(monkeypatch, name, tiny_data.root)  # matching checksums: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedDataWarning)
        bundle = provider(name).load(tiny_data.root)
    assert_matches(bundle, tiny_data[name], name)
    assert len(bundle.classes) == 10


@pytest.mark.parametrize("name", GREY)
def test_mismatching_idx_files_warn_once(tiny_data, name):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = provider(name).load(tiny_data.root)  # decoded and hashed
        second = provider(name).load(tiny_data.root)  # from the cache
    (message,) = unverified(record)
    folder = tiny_data.root / provider(name).folder
    assert "\n" not in message and repr(name) in message and str(folder) in message
    assert all(f in message for f in provider(name).files)
    assert "integrity not verified" in message
    assert_matches(first, tiny_data[name], name)
    assert_matches(second, tiny_data[name], name)


def test_warning_names_only_the_differing_files(tiny_data, monkeypatch):
    trust_idx(monkeypatch, "mnist", tiny_data.root)
    monkeypatch.setitem(provider("mnist").md5s, "t10k-labels-idx1-ubyte", "0" * 32)
    with pytest.warns(UnverifiedDataWarning) as record:
        provider("mnist").load(tiny_data.root)
    (message,) = unverified(record)
    assert "t10k-labels-idx1-ubyte" in message
    assert not any(f in message for f in provider("mnist").files[:3])


def test_published_md5s_are_the_uncompressed_files():
    """The declared files are exactly the ones read, with 32-hex-digit MD5s."""
    for name in GREY:
        p = provider(name)
        assert set(p.published_md5s()) == set(p.files)
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in p.published_md5s().values())
    for name in CIFAR:
        assert set(provider(name).published_md5s()) == set(provider(name).files)


@pytest.mark.parametrize("name", CIFAR)
def test_repacked_cifar_loads_with_warning(tiny_data, name):
    with pytest.warns(UnverifiedDataWarning, match="integrity not verified") as record:
        bundle = provider(name).load(tiny_data.root)
        again = provider(name).load(tiny_data.root)
    (message,) = unverified(record)  # once per folder, not per load
    assert "\n" not in message and repr(name) in message
    assert str(tiny_data.root / provider(name).folder) in message
    assert all(f in message for f in provider(name).files)
    assert_matches(bundle, tiny_data[name], name)
    assert_matches(again, tiny_data[name], name)


@pytest.mark.parametrize("name", CIFAR)
def test_verified_cifar_loads_silently(tiny_data, monkeypatch, name):
    p = provider(name)
    cls = getattr(torchvision.datasets, p.torchvision_class)
    trust_files(monkeypatch, cls, tiny_data.root / p.folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedDataWarning)
        bundle = p.load(tiny_data.root)
    assert_matches(bundle, tiny_data[name], name)


def test_cifar_pickles_with_bytes_keys(tmp_path, dataset_writers):
    expected = dataset_writers.cifar10(tmp_path, bytes_keys=True)
    assert_matches(load("cifar10", tmp_path), expected, "cifar10")


def test_cifar_pickle_cannot_run_code(tiny_data, dataset_writers, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return open, (str(marker), "w")

    dataset_writers.pickle(tiny_data.root / "cifar-10-batches-py" / "data_batch_1",
                           {"data": Exploit(), "labels": [0]})
    with pytest.raises(DatasetCorruptError, match="refusing to load"):
        load("cifar10", tiny_data.root)
    assert not marker.exists()


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_missing_dataset_is_one_clear_line(tmp_path, monkeypatch, name):
    p = provider(name)
    refuse_torchvision(monkeypatch, p.torchvision_class)
    with pytest.raises(DatasetMissingError) as info:
        p.load(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, RscError) and "\n" not in message
    assert repr(name) in message and str(tmp_path / p.folder) in message
    assert all(f in message for f in p.files) and "RSC_DATA_DIR" in message
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_one_missing_file_is_missing(tiny_data):
    (tiny_data.root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetMissingError, match="t10k-labels-idx1-ubyte"):
        load("mnist", tiny_data.root)


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    def offline(root, train=True, download=False):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetMissingError, match="download") as info:
        load("mnist", tmp_path, download=True)
    assert "\n" not in str(info.value) and info.value.__suppress_context__


def test_download_fetches_missing_files(tmp_path, monkeypatch, dataset_writers):
    written = {}

    class MNIST(torchvision.datasets.MNIST):  # the name sets torchvision's folder
        def __init__(self, root, train=True, download=False):
            if download and not written:
                written["data"] = dataset_writers.idx_dataset(Path(root), "MNIST", seed=5)
            super().__init__(root, train=train, download=False)

    monkeypatch.setattr(torchvision.datasets, "MNIST", MNIST)
    bundle = load("mnist", tmp_path, download=True)
    assert_matches(bundle, written["data"], "mnist")


def test_truncated_idx_is_one_line(tiny_data):
    path = tiny_data.root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetCorruptError) as info:
        load("mnist", tiny_data.root)
    assert "\n" not in str(info.value) and "'mnist'" in str(info.value)


def test_wrong_image_size_is_rejected(tiny_data, dataset_writers):
    import numpy as np

    raw = tiny_data.root / "MNIST" / "raw"
    dataset_writers.idx(raw / "train-images-idx3-ubyte", np.zeros((5, 14, 14), np.uint8))
    with pytest.raises(DatasetCorruptError, match="expected uint8 N x 1 x 28 x 28"):
        load("mnist", tiny_data.root)


def test_unreadable_cifar_batch_is_one_line(tiny_data):
    (tiny_data.root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetCorruptError) as info:
        load("cifar10", tiny_data.root)
    assert "\n" not in str(info.value)


# --- cache -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100coarse"])
def test_second_load_uses_cache(tiny_data, monkeypatch, name):
    first = load(name, tiny_data.root)
    assert len(cache_files()) == 1
    refuse_torchvision(monkeypatch, provider(name).torchvision_class)
    refuse_hashing(monkeypatch)
    monkeypatch.setattr(dataset_cache, "_warned_folders", set())  # as in a new process
    with pytest.warns(UnverifiedDataWarning):  # the cache remembers the verdict...
        second = provider(name).load(tiny_data.root)  # ...without hashing the files again
    assert_matches(second, tiny_data[name], name)
    assert torch.equal(first.train.images, second.train.images)


def test_cached_verified_load_is_silent_and_does_not_hash(tiny_data, monkeypatch):
    trust_idx(monkeypatch, "mnist", tiny_data.root)
    provider("mnist").load(tiny_data.root)
    refuse_hashing(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedDataWarning)
        bundle = provider("mnist").load(tiny_data.root)
    assert_matches(bundle, tiny_data["mnist"], "mnist")


def test_changed_file_is_verified_again(tiny_data, monkeypatch, dataset_writers):
    trust_idx(monkeypatch, "mnist", tiny_data.root)
    provider("mnist").load(tiny_data.root)
    path = tiny_data.root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    dataset_writers.idx(path, (tiny_data["mnist"].train.labels + 1) % 10)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.warns(UnverifiedDataWarning, match="train-labels-idx1-ubyte") as record:
        provider("mnist").load(tiny_data.root)
    assert "train-images-idx3-ubyte" not in unverified(record)[0]


def test_changed_source_invalidates_cache(tiny_data, dataset_writers):
    load("mnist", tiny_data.root)
    old = cache_files()
    path = tiny_data.root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    new_labels = (tiny_data["mnist"].train.labels + 1) % 10
    dataset_writers.idx(path, new_labels)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    bundle = load("mnist", tiny_data.root)
    assert torch.equal(bundle.train.labels, torch.from_numpy(new_labels))
    assert len(cache_files()) == 1 and cache_files() != old  # the stale entry is gone


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _wrong_content(path: Path) -> None:
    obj = torch.load(path, weights_only=True)
    obj["train_images"] = obj["train_images"][:, :, :10]
    torch.save(obj, path)


def _not_a_dict(path: Path) -> None:
    torch.save([1, 2, 3], path)


@pytest.mark.parametrize("corrupt", [_garbage, _truncated, _wrong_content, _not_a_dict])
def test_corrupt_cache_is_rebuilt(tiny_data, corrupt):
    load("mnist", tiny_data.root)
    (path,) = cache_files()
    corrupt(path)
    assert_matches(load("mnist", tiny_data.root), tiny_data["mnist"], "mnist")
    assert isinstance(read_cache(path, provider("mnist")), RawSplits)


def test_unwritable_cache_only_warns(tiny_data, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RSC_CACHE_DIR", str(blocker))
    trust_idx(monkeypatch, "mnist", tiny_data.root)
    with pytest.warns(CacheWarning, match="RSC_CACHE_DIR"):
        bundle = provider("mnist").load(tiny_data.root)
    assert_matches(bundle, tiny_data["mnist"], "mnist")


# --- the canonical data --------------------------------------------------------------------------

# Published pixel means of the canonical copies (shared/data/README.md).
CANONICAL_MEANS = {"mnist": (0.1307, 0.1325), "fashion": (0.2860, 0.2868)}


@pytest.mark.skipif(not os.environ.get("RSC_DATA_DIR"),
                    reason="RSC_DATA_DIR is not set; point it at the canonical data "
                           "(CI uses ../shared/data) to check MNIST and Fashion-MNIST")
@pytest.mark.parametrize("name", GREY)
def test_canonical_data(name, monkeypatch):
    with warnings.catch_warnings():  # the canonical copies match the published checksums
        warnings.simplefilter("error", UnverifiedDataWarning)
        bundle = provider(name).load(data_dir())
    assert (len(bundle.train), len(bundle.test)) == (60000, 10000)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    means = (bundle.train.images.mean().item(), bundle.test.images.mean().item())
    assert tuple(round(m, 4) for m in means) == CANONICAL_MEANS[name]
    refuse_torchvision(monkeypatch, provider(name).torchvision_class)
    cached = provider(name).load(data_dir())
    assert torch.equal(cached.test.images, bundle.test.images)
    assert torch.equal(cached.train.labels, bundle.train.labels)


@pytest.mark.skipif(not os.environ.get("RSC_DATA_DIR"),
                    reason="RSC_DATA_DIR is not set; point it at the canonical data "
                           "(CI uses ../shared/data) to check the re-packed CIFAR-10")
def test_canonical_repacked_cifar10_warns_once():
    root = data_dir()
    if not (root / "cifar-10-batches-py" / "batches.meta").is_file():
        pytest.skip(f"no CIFAR-10 copy in {root}")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = provider("cifar10").load(root)
        second = provider("cifar10").load(root)
    (message,) = unverified(record)
    assert "'cifar10'" in message and "data_batch_1" in message
    assert len(first.train) == 50000 and torch.equal(first.test.labels, second.test.labels)
