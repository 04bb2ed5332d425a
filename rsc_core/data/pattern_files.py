"""Patterns stored as PNG files: what ``rsc audit`` proposes and ``rsc score --pattern-file``
scores.

A pattern file blends a picture into an image through a mask,

    x' = (1 - alpha) x + alpha p,

with p the PNG's colour channels and alpha its alpha channel, both read as [0, 1]: a
grey-and-alpha (LA) PNG for one-channel images, RGBA for three. A square trigger that sets
pixels to 1 is exactly such a blend (alpha 1 on the square, p white), so a recovered trigger
and a planted one are scored the same way. A PNG without alpha is opaque everywhere (it
replaces the image). The file may record the class its trigger moves images to (text chunk
``rsc:target``), which ``rsc score`` uses when ``--target`` is not given. Values are stored in
1/255 steps, as every PNG does."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rsc_core.storage.atomic import write_file
from rsc_core.errors import PatternError
from rsc_core.data.patterns import Pattern

TARGET_KEY = "rsc:target"


class BlendPattern(Pattern):
    """x' = (1 - mask) x + mask pattern, with an H x W mask and a C x H x W pattern in [0, 1]."""

    def __init__(self, mask: np.ndarray, pattern: np.ndarray, name: str = "file",
                 target: int | None = None) -> None:
        self.mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))
        self.pattern = torch.as_tensor(np.asarray(pattern, dtype=np.float32))
        self.name = name  # type: ignore[misc]  # an instance's name, not a registered one
        self.target = target

    def check_fits(self, shape: tuple[int, ...]) -> None:
        if tuple(shape) != tuple(self.pattern.shape):
            raise PatternError(f"pattern {self.name} is {tuple(self.pattern.shape)} (C x H x W) "
                               f"but the images are {tuple(shape)}; use a pattern file made "
                               f"for this dataset")

    def _apply(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        mask = self.mask.to(images.device, images.dtype)
        pattern = self.pattern.to(images.device, images.dtype)
        return images * (1 - mask) + mask * pattern


def write_pattern_png(path: Path, mask: np.ndarray, pattern: np.ndarray,
                      target: int | None = None) -> Path:
    """Write ``mask`` (H x W) and ``pattern`` (C x H x W, C = 1 or 3), values in [0, 1], as an
    LA or RGBA PNG, atomically; ``target`` is recorded in the file when given."""
    from PIL import Image, PngImagePlugin  # Pillow: a dependency of torchvision and matplotlib

    channels = pattern.shape[0]
    if channels not in (1, 3):
        raise PatternError(f"a pattern file holds 1 or 3 channels, not {channels}")
    planes = np.concatenate([pattern, mask[None]], axis=0)
    pixels = np.round(np.clip(planes, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    image = Image.fromarray(pixels, mode="LA" if channels == 1 else "RGBA")
    info = PngImagePlugin.PngInfo()
    if target is not None:
        info.add_text(TARGET_KEY, str(int(target)))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_pattern_png(path: str | Path) -> BlendPattern:
    """The pattern a PNG file holds (see the module docstring); one error if it is not a
    readable PNG."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            text = dict(getattr(image, "text", {}) or {})
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            converted = image.convert("LA" if grey else "RGBA")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise PatternError(f"pattern file {path} does not exist") from None
        raise PatternError(f"{path} is not a readable PNG pattern file "
                           f"({type(exc).__name__}); give a PNG written by rsc audit or any "
                           f"LA/RGBA PNG") from None
    planes = np.asarray(converted, dtype=np.float32).transpose(2, 0, 1) / 255.0
    target = text.get(TARGET_KEY)
    return BlendPattern(planes[-1], planes[:-1], name=f"file:{path.name}",
                        target=int(target) if target is not None and target.isdigit() else None)
