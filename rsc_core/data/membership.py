"""Membership data (PROTOCOL.md section 8): which training images a membership-inference target
model and its shadow models train on, and which held-out images serve as their non-members.

The reference named these datasets ``mem{dataset}{pattern}-{n}-{label}-{seed}`` but never
published how it split them, so rsc defines its own split, seeded and balanced (the exact
construction is in docs/privacy.md and in ``membership_split`` below):

1. ``reserved``: the first ``reserve`` images of the reference's spurious draw for (label,
   seed), ``RandomState(seed).choice(class indices, size=reserve, replace=False)``. A smaller n
   draws a prefix of it, so the n spurious images of every n up to ``reserve`` are inside it
   and the rest of the split does not depend on n.
2. Every other training image is assigned, class by class, to four equal parts by a generator
   seeded with (SPLIT_SALT, seed): target members, target non-members, shadow members, shadow
   non-members (the remainder of each class, at most 3 images, is left out).
3. The n spurious images (patterned) replace n same-class images of the target members, so
   the target trains on as many images of each class as every other model, whatever n is.
4. The control images (``control``): the LAST images of the reserved draw, which no model of
   any n up to ``reserve - size`` trains on. ``rsc mia`` draws the planted pattern on them and
   scores them exactly as the target's examples; being the same images for every such n, they
   make results at different n comparable.

Target and shadow models are ordinary runs: a ``SpuriousSpec`` plus a ``TrainSubset`` (the
target: the planted spec keeping the target members; the shadow: the clean dataset keeping the
shadow members), so they are trained, reused, resumed and listed like any run, and a shadow
model (which never sees a planted image) is the same run for every n.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsc_core.errors import SpecError
from rsc_core.data.spec import SpuriousSpec, parse_spec
from rsc_core.data.planting import select_spurious_indices
from rsc_core.data.subsets import TrainSubset

PREFIX = "mem"
#: The most spurious images a membership spec may ask for: the protocol's largest n.
RESERVE_MAX = 1000
#: Entropy mixed with the spec's seed, so the split's generator is not the reference's draw.
SPLIT_SALT = 0x6D656D  # "mem"
HALVES_SALT = 0x6C6972  # "lir": LiRA's random halves
PARTS = ("target_members", "target_non_members", "shadow_members", "shadow_non_members")


@dataclass(frozen=True)
class MembershipSpec:
    """A membership dataset: the planted dataset ``spurious`` split into pools (see module)."""

    spurious: SpuriousSpec

    @property
    def name(self) -> str:
        return PREFIX + self.spurious.name

    def __str__(self) -> str:
        return self.name

    @property
    def clean(self) -> SpuriousSpec:
        """The clean dataset that shadow models train on (they never see a planted image)."""
        return SpuriousSpec(self.spurious.dataset)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spurious": self.spurious.as_dict()}


def is_membership_name(text: str) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def parse_membership_spec(text: str) -> MembershipSpec:
    """``memmnistv20-3-0-0`` -> the membership dataset of ``mnistv20-3-0-0``; anything else is
    one ``SpecError`` that shows the expected form."""
    form = "mem{dataset}{pattern}-{n}-{label}-{seed}, e.g. memmnistv20-3-0-0"
    if not is_membership_name(text):
        raise SpecError(f"{text!r} is not a membership spec; membership inference needs "
                        f"{form}")
    rest = text[len(PREFIX):]
    if rest.startswith("twoclass"):
        raise SpecError(f"membership specs have one target class; use {form}")
    spec = parse_spec(rest)
    if spec.is_clean:
        raise SpecError(f"{text!r} names no pattern, n, label and seed; use {form}")
    if spec.n > RESERVE_MAX:
        raise SpecError(f"n = {spec.n} is too large for a membership spec (at most "
                        f"{RESERVE_MAX}, the protocol's largest n)")
    return MembershipSpec(spec)


@dataclass(frozen=True)
class Pool:
    """Examples a model is observed on: original training indices, and which of them it
    trained on (members) and which it did not (non-members)."""

    indices: np.ndarray  # int64, original training indices
    member: np.ndarray   # bool, same length

    def __len__(self) -> int:
        return int(self.indices.size)


@dataclass(frozen=True)
class MembershipSplit:
    """The four disjoint parts of one membership dataset (original training indices, sorted),
    the planted images and the images they displaced. See the module docstring."""

    spec: MembershipSpec
    target_members: np.ndarray
    target_non_members: np.ndarray
    shadow_members: np.ndarray
    shadow_non_members: np.ndarray
    spurious: np.ndarray   # the planted images, in the reference's draw order
    displaced: np.ndarray  # same-class images the planted ones replaced (never scored)
    reserved: np.ndarray   # the reference's draw prefix kept out of every pool (sorted)
    labels: np.ndarray     # labels of the whole training set
    reserved_order: np.ndarray  # the same draw in the order it was drawn

    # -- the runs --------------------------------------------------------------------------
    @property
    def target_subset(self) -> TrainSubset:
        """The target model's training rows (with the planted spec)."""
        return TrainSubset.keeping(self.target_members)

    @property
    def shadow_subset(self) -> TrainSubset:
        """The shadow model's training rows (with the clean dataset)."""
        return TrainSubset.keeping(self.shadow_members)

    # -- what models are observed on --------------------------------------------------------
    def target_pool(self) -> Pool:
        """The target's members (planted images included) and its non-members."""
        return _pool(self.target_members, self.target_non_members)

    def shadow_pool(self) -> Pool:
        """The shadow model's members and non-members (no planted image among them)."""
        return _pool(self.shadow_members, self.shadow_non_members)

    def clean_target_pool(self) -> np.ndarray:
        """The target pool before any image was planted or displaced: every image a model of
        the target's pool could train on at any n (LiRA's offline shadows draw halves of it)."""
        full = np.concatenate([self.target_members, self.target_non_members, self.displaced])
        return np.sort(np.setdiff1d(full, self.spurious))

    def halves(self, pool: np.ndarray, count: int) -> list[np.ndarray]:
        """``count`` (even) training sets drawn as complementary random halves of ``pool``:
        shadows 2p and 2p+1 split pool p's permutation, so every example is in exactly half of
        the shadows and every shadow trains on ``len(pool) // 2`` images. Pair p's permutation
        comes from a generator seeded with (HALVES_SALT, seed, p), so the first K shadows of a
        larger set are the K shadows of a smaller one."""
        if count < 2 or count % 2:
            raise SpecError(f"shadow models come in complementary pairs; give an even number, "
                            f"at least 2, got {count}")
        pool = np.sort(np.asarray(pool, dtype=np.int64))
        half = pool.size // 2
        sets = []
        for pair in range(count // 2):
            order = np.random.default_rng([HALVES_SALT, self.spec.spurious.seed, pair]) \
                .permutation(pool)
            sets.extend([np.sort(order[:half]), np.sort(order[half:2 * half])])
        return sets

    def control_available(self) -> int:
        """How many reserved images no model trains on: the draw minus the planted prefix."""
        return int(self.reserved_order.size - self.spec.spurious.n)

    def control(self, size: int) -> np.ndarray:
        """The ``size`` control images (see the module), sorted: images of the target class
        that no target, shadow or reference model trains on."""
        available = self.control_available()
        if not 0 <= size <= available:
            raise SpecError(f"{self.spec.name} has {available} reserved images of class "
                            f"{self.spec.spurious.target} that no model trains on, fewer "
                            f"than the {size} control images asked for; use --control-size "
                            f"{available} or less (0: no control)")
        return np.sort(self.reserved_order[self.reserved_order.size - size:])

    # -- slices -----------------------------------------------------------------------------
    def same_class_members(self) -> np.ndarray:
        """Target members of the spurious class that carry no pattern (the study's control)."""
        target = self.spec.spurious.target
        members = self.target_members
        return np.sort(np.setdiff1d(members[self.labels[members] == target], self.spurious))

    def check(self) -> None:
        """The split's invariants; a violation is a bug, reported as one line."""
        parts = [getattr(self, name) for name in PARTS]
        sizes = {p.size for p in parts}
        joined = np.concatenate([*parts, self.displaced, np.setdiff1d(self.reserved,
                                                                      self.spurious)])
        problems = []
        if len(sizes) != 1:
            problems.append(f"unequal parts {[p.size for p in parts]}")
        if np.unique(joined).size != joined.size:
            problems.append("overlapping parts")
        if not np.isin(self.spurious, self.target_members).all():
            problems.append("a planted image outside the target members")
        counts = [np.bincount(self.labels[p], minlength=self.labels.max() + 1) for p in parts]
        if any(not np.array_equal(counts[0], c) for c in counts[1:]):
            problems.append("parts with different class counts")
        if problems:
            raise SpecError(f"membership split of {self.spec.name} is broken: "
                            f"{'; '.join(problems)}")

    def digest(self) -> str:
        """A short checksum of the four parts, to tell two splits apart in results."""
        text = "|".join(",".join(map(str, getattr(self, name))) for name in PARTS)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def summary(self) -> dict[str, Any]:
        return {"spec": self.spec.name, "seed": self.spec.spurious.seed,
                "part_size": int(self.target_members.size), "reserved": int(self.reserved.size),
                "spurious": self.spurious.tolist(), "displaced": self.displaced.tolist(),
                "same_class_members": int(self.same_class_members().size),
                "digest": self.digest()}

    def as_dict(self) -> dict[str, Any]:
        """Every index list (for the result folder's split.json)."""
        data = {name: getattr(self, name).tolist() for name in PARTS}
        data.update(spec=self.spec.name, spurious=self.spurious.tolist(),
                    displaced=self.displaced.tolist(), reserved=self.reserved.tolist())
        return data


def _pool(members: np.ndarray, non_members: np.ndarray) -> Pool:
    indices = np.concatenate([members, non_members]).astype(np.int64)
    member = np.concatenate([np.ones(members.size, bool), np.zeros(non_members.size, bool)])
    return Pool(indices, member)


def reserve_size(labels: np.ndarray, target: int) -> int:
    """How many of the target class the split keeps out of every pool: RESERVE_MAX, or half
    the class on a dataset too small for that (tests' tiny copies)."""
    return int(min(RESERVE_MAX, np.count_nonzero(labels == target) // 2))


def membership_split(spec: MembershipSpec, labels: np.ndarray) -> MembershipSplit:
    """The seeded, balanced split of a training set with ``labels`` (see the module)."""
    labels = np.asarray(labels, dtype=np.int64)
    planted = spec.spurious
    target, n, seed = planted.target, planted.n, planted.seed
    reserve = reserve_size(labels, target)
    if n > reserve:
        raise SpecError(f"n = {n} is too large for {spec.name}: this training set allows at "
                        f"most {reserve} spurious images of class {target}")
    reserved = select_spurious_indices(labels, target, reserve, np.random.RandomState(seed))
    spurious = reserved[:n]
    rest = np.setdiff1d(np.arange(labels.size), reserved)
    rng = np.random.default_rng([SPLIT_SALT, seed])
    parts: list[list[np.ndarray]] = [[] for _ in PARTS]
    target_order = np.empty(0, dtype=np.int64)
    for label in range(int(labels.max()) + 1):
        order = rng.permutation(rest[labels[rest] == label])
        quarter = order.size // 4
        for k in range(4):
            parts[k].append(order[k * quarter:(k + 1) * quarter])
        if label == target:
            target_order = order[:quarter]
    if n > target_order.size:
        raise SpecError(f"n = {n} is too large for {spec.name}: the target members hold only "
                        f"{target_order.size} images of class {target}")
    displaced = np.sort(target_order[target_order.size - n:]) if n else target_order[:0]
    joined = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    joined[0] = np.sort(np.concatenate([np.setdiff1d(joined[0], displaced), spurious]))
    split = MembershipSplit(spec, *joined, spurious=spurious, displaced=displaced,
                            reserved=np.sort(reserved), labels=labels, reserved_order=reserved)
    split.check()
    return split
