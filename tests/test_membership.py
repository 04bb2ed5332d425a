"""Membership data: ``mem`` spec names, and the seeded, balanced split into a target pool and a
disjoint shadow pool (docs/privacy.md)."""
from __future__ import annotations

import numpy as np
import pytest

from rsc_core.errors import SpecError
from rsc_core.data.membership import (PARTS, RESERVE_MAX, MembershipSplit, membership_split,
    parse_membership_spec)
from rsc_core.data.spec import parse_spec
from rsc_core.data.planting import select_spurious_indices


def labels_of(per_class: int = 120, classes: int = 10, seed: int = 0) -> np.ndarray:
    """A shuffled training set with ``per_class`` images of each class (class 3 one short, so
    the remainders are exercised)."""
    labels = np.repeat(np.arange(classes), per_class)
    labels = np.delete(labels, np.flatnonzero(labels == 3)[0])
    return np.random.RandomState(seed).permutation(labels)


def split_of(name: str, labels: np.ndarray | None = None) -> MembershipSplit:
    return membership_split(parse_membership_spec(name), labels_of() if labels is None
                            else labels)


def test_spec_names_round_trip_to_ordinary_specs():
    mem = parse_membership_spec("memmnistv20-3-0-0")
    assert mem.spurious == parse_spec("mnistv20-3-0-0")
    assert mem.name == "memmnistv20-3-0-0" and str(mem) == mem.name
    assert mem.clean == parse_spec("mnist")
    assert parse_membership_spec("memfashionr3-10-1-2").spurious.name == "fashionv20-10-1-2"


@pytest.mark.parametrize("text, fragment", [
    ("mnistv20-3-0-0", "not a membership spec"),
    ("memmnist", "names no pattern"),
    ("memtwoclassmnistv8-3-0-1-0", "one target class"),
    ("memmnistv20-3-0", "needs 3 numbers"),
    (f"memmnistv20-{RESERVE_MAX + 1}-0-0", "too large"),
    ("memmnistzz-3-0-0", "unknown pattern"),
])
def test_bad_spec_names_are_one_spec_error(text, fragment):
    with pytest.raises(SpecError, match=fragment):
        parse_membership_spec(text)


def test_parts_are_disjoint_equal_and_class_balanced():
    labels = labels_of()
    split = split_of("memmnistv20-5-2-7", labels)
    parts = [getattr(split, name) for name in PARTS]
    everything = np.concatenate(parts)
    assert np.unique(everything).size == everything.size  # no overlap, pools disjoint
    assert len({p.size for p in parts}) == 1
    counts = [np.bincount(labels[p], minlength=10) for p in parts]
    assert all(np.array_equal(counts[0], c) for c in counts)
    target_pool = set(split.target_members) | set(split.target_non_members)
    shadow_pool = set(split.shadow_members) | set(split.shadow_non_members)
    assert not target_pool & shadow_pool


def test_spurious_images_are_the_reference_draw_and_only_in_the_target_training_set():
    labels = labels_of()
    split = split_of("memmnistv20-5-2-7", labels)
    reference = select_spurious_indices(labels, 2, 5, np.random.RandomState(7))
    assert np.array_equal(split.spurious, reference)  # what `rsc train` plants for the spec
    assert np.isin(split.spurious, split.target_members).all()
    for name in PARTS[1:]:
        assert not np.isin(split.spurious, getattr(split, name)).any()
    assert not np.isin(split.reserved, split.shadow_members).any()
    assert (labels[split.displaced] == 2).all() and split.displaced.size == 5
    assert not np.isin(split.displaced, split.target_members).any()


def test_split_is_reproducible_from_its_seed_and_changes_with_it():
    a, b = split_of("memmnistv20-3-0-4"), split_of("memmnistv20-3-0-4")
    for name in (*PARTS, "spurious", "displaced", "reserved"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.digest() == b.digest()
    other = split_of("memmnistv20-3-0-5")
    assert not np.array_equal(a.shadow_members, other.shadow_members)
    assert a.digest() != other.digest()


def test_shadow_pool_and_clean_target_pool_do_not_depend_on_n():
    splits = [split_of(f"memmnistv20-{n}-0-1") for n in (0, 1, 3, 10)]
    for split in splits[1:]:
        assert np.array_equal(split.shadow_members, splits[0].shadow_members)
        assert np.array_equal(split.shadow_non_members, splits[0].shadow_non_members)
        assert np.array_equal(split.target_non_members, splits[0].target_non_members)
        assert np.array_equal(split.clean_target_pool(), splits[0].clean_target_pool())
        assert split.target_members.size == splits[0].target_members.size
    # a larger n plants a superset (the reference's draw is a prefix of one permutation)
    assert set(splits[2].spurious) <= set(splits[3].spurious)


def test_target_and_shadow_runs_are_ordinary_spec_plus_subset():
    split = split_of("memmnistv20-3-0-0")
    assert split.target_subset.mode == "keep"
    assert np.array_equal(split.target_subset.rows(split.labels.size), split.target_members)
    assert np.array_equal(split.shadow_subset.rows(split.labels.size), split.shadow_members)
    pool = split.target_pool()
    assert pool.member.sum() == (~pool.member).sum() == split.target_members.size
    same = split.same_class_members()
    assert (split.labels[same] == 0).all() and not np.isin(same, split.spurious).any()


def test_halves_are_complementary_equal_and_nested_in_k():
    split = split_of("memmnistv20-3-0-0")
    pool = split.target_pool().indices
    halves = split.halves(pool, 6)
    assert {h.size for h in halves} == {pool.size // 2}
    membership = np.stack([np.isin(pool, h) for h in halves])
    assert (membership.sum(axis=0) == 3).all()  # every example in exactly half
    for first, second in zip(halves[::2], halves[1::2]):
        assert not np.intersect1d(first, second).size
    for small, large in zip(split.halves(pool, 4), halves):
        assert np.array_equal(small, large)
    with pytest.raises(SpecError, match="even"):
        split.halves(pool, 3)


def test_n_beyond_what_the_training_set_holds_is_refused():
    labels = labels_of(per_class=20)  # reserve = 10 images of the class
    with pytest.raises(SpecError, match="at most 10"):
        split_of("memmnistv20-11-0-0", labels)
    assert split_of("memmnistv20-2-0-0", labels).spurious.size == 2
