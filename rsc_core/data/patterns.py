"""The pattern interface. A pattern is a pure function of (images, seed): it returns patterned
copies and never modifies its input. Images are N x C x H x W float32 tensors in [0, 1].

Two helpers cover the reference's patterns and are the documented contract for authors:

* ``SquarePattern`` sets a fixed rectangle of pixels to 1 in every channel.
* ``FixedNoisePattern`` adds ``level * U`` and clips to [0, 1], where U is ONE noise image drawn
  as ``numpy.random.RandomState(seed).rand(H, W, C)`` (H x W x C order, float64), exactly as
  the reference does. The sum is formed in float64 and rounded to float32 once, as the
  reference's numpy code does, so patterned pixels equal the reference's bit for bit.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from rsc_core.errors import PatternError


class Pattern(ABC):
    """A spurious pattern. Subclasses set ``name``, ``aliases``, ``description``."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __call__(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        return self.apply(images, seed)

    def apply(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Return patterned copies of ``images`` (N x C x H x W, float32 in [0, 1])."""
        if images.dim() != 4:
            raise PatternError(
                f"pattern {self.name}: expected images of shape N x C x H x W, got "
                f"{tuple(images.shape)}"
            )
        self.check_fits(tuple(images.shape[1:]))
        if not 0 <= seed <= 2**32 - 1:  # numpy's RandomState range, as for spec seeds
            raise PatternError(f"pattern seed must be an integer in [0, {2**32 - 1}], got "
                               f"{seed}")
        return self._apply(images, seed)

    def check_fits(self, shape: tuple[int, ...]) -> None:
        """Raise ``PatternError`` if the pattern cannot be drawn on C x H x W images."""

    @abstractmethod
    def _apply(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """Pattern a 4-d tensor already known to fit; must not modify ``images``."""


class SquarePattern(Pattern):
    """Sets rows ``rows`` and columns ``cols`` (half-open ranges) to 1 in every channel."""

    rows: ClassVar[tuple[int, int]] = (0, 1)
    cols: ClassVar[tuple[int, int]] = (0, 1)

    def check_fits(self, shape: tuple[int, ...]) -> None:
        _, height, width = shape
        if height < self.rows[1] or width < self.cols[1]:
            raise PatternError(
                f"pattern {self.name} needs images of at least {self.rows[1]}x{self.cols[1]} "
                f"pixels, got {height}x{width}; choose a smaller pattern"
            )

    def _apply(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        out = images.clone()
        out[:, :, self.rows[0]:self.rows[1], self.cols[0]:self.cols[1]] = 1.0
        return out


def reference_noise(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """The reference's fixed noise image: ``RandomState(seed).rand(H, W, C)``, float64."""
    return np.random.RandomState(seed).rand(height, width, channels)


class FixedNoisePattern(Pattern):
    """Adds ``level`` times one fixed uniform noise image and clips to [0, 1]."""

    level: ClassVar[float] = 1.0

    def noise(self, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
        """The noise image for C x H x W images as a float64 C x H x W tensor."""
        channels, height, width = shape
        hwc = reference_noise(height, width, channels, seed)
        return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))

    def _apply(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        noise = self.noise(tuple(images.shape[1:]), seed).to(images.device)
        summed = images.to(torch.float64) + self.level * noise
        return summed.clamp_(0.0, 1.0).to(images.dtype)
