"""MNIST and Fashion-MNIST: four uncompressed IDX files each, decoded by torchvision and cached
as uint8 tensors by ``CachedProvider`` (``rsc_core.dataset_cache``), which also verifies the MD5s
declared here."""
from __future__ import annotations

from pathlib import Path

import torch

from rsc_core.data.cache import CachedProvider, RawSplits, first_line, torchvision_class
from rsc_core.errors import DatasetCorruptError

# Only the .gz archives have published MD5s (torchvision's ``MNIST.resources`` and
# ``FashionMNIST.resources``, and Fashion-MNIST's README); torchvision never checks the
# uncompressed files it reads. The MD5s below are of the UNCOMPRESSED files: computed from the
# project's canonical copies (shared/data, whose README records that they were checked), and
# identical to the digests other projects record for the files gunzipped from the published
# archives (e.g. third-party FashionMNIST classes' ``raw_data`` lists).

_MNIST_MD5S = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_FASHION_MD5S = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


class IdxProvider(CachedProvider):
    """A grey 28 x 28 dataset stored as four uncompressed IDX files, read by torchvision."""

    input_shape = (1, 28, 28)
    num_classes = 10
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def decode(self, root: Path) -> RawSplits:
        """torchvision's ``.data``/``.targets`` are already whole uint8/int64 tensors; only a
        channel axis is added."""
        cls = torchvision_class(self.torchvision_class)
        try:
            train = cls(str(root), train=True, download=False)
            test = cls(str(root), train=False, download=False)
        except Exception as exc:  # truncated or foreign files trip torchvision's asserts
            raise DatasetCorruptError(
                f"dataset {self.name!r} in {root / self.folder} could not be read "
                f"({first_line(exc)}); replace the files with a fresh copy") from None
        return RawSplits(train.data.unsqueeze(1), train.targets.to(torch.int64),
                         test.data.unsqueeze(1), test.targets.to(torch.int64),
                         tuple(cls.classes))


class MNIST(IdxProvider):
    """MNIST handwritten digits (60,000 train / 10,000 test, 1 x 28 x 28)."""

    name = "mnist"
    description = "MNIST handwritten digits, 60k/10k grey 28x28, 10 classes"
    folder = "MNIST/raw"
    torchvision_class = "MNIST"
    md5s = _MNIST_MD5S


class FashionMNIST(IdxProvider):
    """Fashion-MNIST clothing images (60,000 train / 10,000 test, 1 x 28 x 28)."""

    name = "fashion"
    description = "Fashion-MNIST clothing, 60k/10k grey 28x28, 10 classes"
    folder = "FashionMNIST/raw"
    torchvision_class = "FashionMNIST"
    md5s = _FASHION_MD5S
