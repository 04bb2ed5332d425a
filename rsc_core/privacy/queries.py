"""What membership-inference models are observed on besides their pools (``rsc mia``):

* the **control**: the planted pattern (same pattern, same seed) drawn on images of the target
  class that no target, shadow or reference model ever trained on (``MembershipSplit.control``).
  The target and every halves shadow are observed on them right after the target's pool, so
  an attack scores them exactly as it scores the pool. They answer the question the planted
  images alone cannot: is an attack that calls the planted images members detecting
  membership, or the pattern the model learned? A patterned image the model never saw is
  called a member as often in the second case.
* the **population** (for attacks with ``needs_population``, e.g. RMIA): a seeded sample of
  the shadow pool, clean images that neither the target nor any clean-halves shadow trained
  on, observed by the target and by that attack's shadows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rsc_core.data.datasets import DatasetBundle
from rsc_core.errors import ConfigError, RscError
from rsc_core.data.membership import MembershipSplit
from rsc_core.data.planting import patched_rows

#: Control images by default: enough to measure a rate of 1% to about +-0.9% (95%), and left
#: by the 1,000-image reserved draw for every n up to 500.
DEFAULT_CONTROL = 500
POPULATION_SALT = 0x706F70  # "pop": the population sample's generator


@dataclass(frozen=True)
class QueryImages:
    """The images of one membership dataset that models are observed on."""

    train: torch.Tensor           # the training set as the target saw it (planted rows)
    labels: np.ndarray            # labels of the training set
    control: np.ndarray           # original indices of the control images (sorted)
    control_images: torch.Tensor  # those images with the planted pattern drawn on them
    population: np.ndarray        # original indices of the population (clean training images)


def control_size(split: MembershipSplit, asked: int | None) -> int:
    """``asked`` control images (an error if fewer are reserved), or by default
    ``DEFAULT_CONTROL`` or as many as there are, if fewer (a small dataset)."""
    if asked is None:
        return min(DEFAULT_CONTROL, split.control_available())
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 0:
        raise ConfigError(f"the control size must be a whole number, 0 or more, got {asked!r}")
    split.control(asked)  # refuses a size beyond what is reserved, naming the limit
    return asked


def population_sample(split: MembershipSplit, size: int) -> np.ndarray:
    """``size`` images of the shadow pool, drawn with a generator seeded by (POPULATION_SALT,
    seed): the same population for every n."""
    pool = np.concatenate([split.shadow_members, split.shadow_non_members])
    if size > pool.size:
        raise ConfigError(f"{split.spec.name}: the population can hold at most {pool.size} "
                          f"images (the shadow pool), not {size}; give a smaller "
                          f"population= option")
    rng = np.random.default_rng([POPULATION_SALT, split.spec.spurious.seed])
    return np.sort(rng.choice(np.sort(pool), size=size, replace=False)).astype(np.int64)


def query_images(bundle: DatasetBundle, split: MembershipSplit, control: int,
                 population: int) -> QueryImages:
    """The training images as the target saw them, ``control`` control images with the
    pattern drawn on, and a population of ``population`` clean shadow-pool images."""
    indices, rows = patched_rows(bundle, split.spec.spurious)
    if not np.array_equal(indices, split.spurious):  # the split reserves this very draw
        raise RscError(f"{split.spec.name}: the planted images differ from the split's "
                       f"spurious images; this is a bug, please report it")
    train = bundle.train.images.clone()
    if indices.size:
        train[torch.from_numpy(indices)] = rows
    from rsc_core import registry  # here, as in data/planting.py: the plugin machinery imports late

    chosen = split.control(control)
    pattern = registry("patterns").create(split.spec.spurious.pattern)
    clean = bundle.train.images[torch.from_numpy(chosen)]
    drawn = pattern.apply(clean, split.spec.spurious.seed) if chosen.size else clean.clone()
    return QueryImages(train, bundle.train.labels.numpy(), chosen, drawn,
                       population_sample(split, population) if population else
                       np.empty(0, dtype=np.int64))
