"""The dataset interface. A provider loads a clean dataset from a root folder in torchvision's
on-disk layout and returns tensors: images N x C x H x W float32 in [0, 1] (uint8 / 255, the
reference's scaling), labels int64, plus class names and the input shape."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from rsc_core.errors import DatasetMissingError


@dataclass(frozen=True)
class ImageData:
    """One split of a dataset."""

    images: torch.Tensor  # N x C x H x W, float32 in [0, 1]
    labels: torch.Tensor  # N, int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DatasetBundle:
    """Train and test splits with their metadata."""

    name: str
    train: ImageData
    test: ImageData
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DatasetProvider(ABC):
    """Loads one clean dataset. Subclasses set the class attributes below."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    num_classes: ClassVar[int] = 10
    input_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    folder: ClassVar[str] = ""  # sub-folder of the data root
    files: ClassVar[tuple[str, ...]] = ()  # files expected under the folder

    @abstractmethod
    def load(self, root: Path, download: bool = False) -> DatasetBundle:
        """Load both splits from ``root``; raise ``DatasetMissingError`` if absent."""

    def missing_error(self, root: Path) -> DatasetMissingError:
        """The one-line error for files that are absent and may not be downloaded."""
        where = Path(root) / self.folder
        expected = ", ".join(self.files) or "the dataset files"
        return DatasetMissingError(
            f"dataset {self.name!r} not found in {where} (expected {expected}); point "
            f"RSC_DATA_DIR or --data-dir at a folder holding a copy, or pass --download"
        )


def to_unit_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], computed as float32(x) / 255 like the reference."""
    return images_uint8.to(torch.float32).div_(255.0)


def load_dataset(name: str, data_dir: str | Path | None = None,
                 download: bool | None = None) -> DatasetBundle:
    """Load a clean dataset by registered name from the resolved data root."""
    from rsc_core import registry
    from rsc_core.storage.paths import data_dir as resolve_data_dir, download_allowed

    provider = registry("datasets").create(name)
    return provider.load(resolve_data_dir(data_dir), download=download_allowed(download))
