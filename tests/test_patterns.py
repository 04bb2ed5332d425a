"""Pattern parity with PROTOCOL.md section 2. The expected pixels are computed here the way the
reference computes them: numpy arrays in N x H x W x C float32, noise drawn as
RandomState(seed).rand(H, W, C) in float64, sum clipped and stored back into float32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import rsc_core
from rsc_core.errors import PatternError
from rsc_core.data.patterns import FixedNoisePattern, reference_noise

REGIONS = {"v1": (slice(0, 1), slice(0, 1)), "v3": (slice(0, 3), slice(0, 3)),
           "v8": (slice(0, 5), slice(0, 5)), "v30": (slice(3, 25), slice(13, 16))}
LEVELS = {"v18": 0.25, "v19": 0.5, "v20": 1.0}
ALIASES = {"s1": "v1", "s2": "v3", "s3": "v8", "r1": "v18", "r2": "v19", "r3": "v20",
           "core": "v30"}


def reference_pattern(x_nhwc: np.ndarray, version: str, seed: int) -> np.ndarray:
    """The reference's add_spurious_correlation on a float32 NHWC copy."""
    x = x_nhwc.copy()
    if version in REGIONS:
        rows, cols = REGIONS[version]
        x[:, rows, cols, :] = 1
        return x
    noise = np.random.RandomState(seed).rand(*x.shape[1:])
    out = np.empty_like(x)
    out[...] = np.clip(x + LEVELS[version] * noise.reshape(1, *x.shape[1:]), 0, 1)
    return out


def random_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    uint8 = np.random.RandomState(seed).randint(0, 256, size=(n, channels, size, size))
    return torch.from_numpy(uint8.astype(np.uint8)).float() / 255


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("version", ["v1", "v3", "v8", "v18", "v19", "v20", "v30"])
@pytest.mark.parametrize("seed", [0, 3])
def test_pixels_equal_reference_bit_for_bit(version, seed, channels, size):
    images = random_images(4, channels, size, seed=seed + 11)
    ours = rsc_core.create("patterns", version).apply(images, seed)
    expected = reference_pattern(images.permute(0, 2, 3, 1).numpy(), version, seed)
    assert ours.dtype == torch.float32
    assert np.array_equal(ours.permute(0, 2, 3, 1).numpy(), expected)


@pytest.mark.parametrize("alias,name", sorted(ALIASES.items()))
def test_paper_names_are_aliases(alias, name):
    assert rsc_core.get("patterns", alias).name == name


@pytest.mark.parametrize("version", ["v8", "v20"])
def test_pattern_never_modifies_its_input(version):
    images = random_images(3, 1, 28)
    before = images.clone()
    rsc_core.create("patterns", version)(images, 0)
    assert torch.equal(images, before)


def test_noise_depends_on_seed_and_is_hwc_ordered():
    pattern = rsc_core.create("patterns", "v20")
    assert isinstance(pattern, FixedNoisePattern)
    noise = pattern.noise((3, 4, 5), seed=7)
    hwc = np.random.RandomState(7).rand(4, 5, 3)
    assert np.array_equal(noise.numpy(), hwc.transpose(2, 0, 1))
    assert not torch.equal(pattern.noise((3, 4, 5), 8), noise)
    assert np.array_equal(reference_noise(4, 5, 3, 7), hwc)


def test_too_small_images_give_clear_error():
    with pytest.raises(PatternError, match="at least 25x16"):
        rsc_core.create("patterns", "core").apply(torch.zeros(1, 1, 20, 20), 0)


def test_non_batched_input_is_rejected():
    with pytest.raises(PatternError, match="N x C x H x W"):
        rsc_core.create("patterns", "v8").apply(torch.zeros(1, 28, 28), 0)
