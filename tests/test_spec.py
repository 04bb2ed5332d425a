"""Parsing and validating spurious-dataset specs, including a property-based test that random
strings give either a valid spec or a SpecError, never anything else."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from rsc_core.errors import SpecError
from rsc_core.data.spec import SpuriousSpec, parse_spec


@pytest.mark.parametrize("text,expected", [
    ("mnistv8-3-0-0", SpuriousSpec("mnist", "v8", 3, (0,), 0)),
    ("mnistv20-10-1-2", SpuriousSpec("mnist", "v20", 10, (1,), 2)),
    ("fashionv20-5-0-4", SpuriousSpec("fashion", "v20", 5, (0,), 4)),
    ("cifar10v8-3-0-0", SpuriousSpec("cifar10", "v8", 3, (0,), 0)),
    ("cifar100v3-1-99-7", SpuriousSpec("cifar100", "v3", 1, (99,), 7)),
    ("cifar100coarsev1-2-19-0", SpuriousSpec("cifar100coarse", "v1", 2, (19,), 0)),
    ("twoclassmnistv8-3-1-2-0", SpuriousSpec("mnist", "v8", 3, (1, 2), 0)),
    ("mnists3-3-0-0", SpuriousSpec("mnist", "v8", 3, (0,), 0)),
    ("mnist", SpuriousSpec("mnist")),
    ("cifar10", SpuriousSpec("cifar10")),
])
def test_parse(text, expected):
    assert parse_spec(text) == expected


@pytest.mark.parametrize("text", ["mnistv8-3-0-0", "twoclassmnistv20-3-1-2-5", "mnist",
                                  "fashionv30-100-9-1"])
def test_name_round_trips(text):
    assert parse_spec(text).name == text


def test_alias_canonicalises_to_reference_name():
    assert parse_spec("mnistr3-3-0-0").name == "mnistv20-3-0-0"


@pytest.mark.parametrize("text,message", [
    ("svhnv8-3-0-0", "unknown dataset"),
    ("mnistv99-3-0-0", "unknown pattern"),
    ("mnistv8-3-10-0", "out of range"),
    ("mnistv8--3-0-0", "cannot parse"),
    ("mnistv8-3-0-0x", "cannot parse"),
    ("mnistv8-3-0-0 ", "cannot parse"),
    ("mnistv8-3-0", "needs 3 numbers"),
    ("twoclassmnistv8-3-1-0", "needs 4 numbers"),
    ("mnistv8-3-0-99999999999", "seed must be"),
    ("", "cannot parse"),
    ("MNISTv8-3-0-0", "cannot parse"),
])
def test_bad_specs(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


def test_build_from_options_validates():
    assert SpuriousSpec.build("mnist", "s3", 3, 0, 0).name == "mnistv8-3-0-0"
    with pytest.raises(SpecError, match="non-negative"):
        SpuriousSpec.build("mnist", "s3", -1, 0, 0)
    with pytest.raises(SpecError, match="target class"):
        SpuriousSpec.build("mnist", "s3", 3, None, 0)
    with pytest.raises(SpecError, match="at most two"):
        SpuriousSpec.build("mnist", "s3", 3, (0, 1, 2), 0)
    with pytest.raises(SpecError, match="unknown pattern"):
        SpuriousSpec.build("mnist", "nope", 3, (0,), 0)


def test_two_class_spec_needs_two_different_classes():
    with pytest.raises(SpecError, match="two different target classes") as info:
        SpuriousSpec.build("mnist", "v8", 3, (0, 0), 0)
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match="got 0 twice"):
        parse_spec("twoclassmnistv8-3-0-0-0")
    assert parse_spec("twoclassmnistv8-3-0-1-0").targets == (0, 1)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(max_size=40),
    st.from_regex(r"(twoclass)?(mnist|fashion|cifar10|cifar100|x)(v[0-9]{1,3}|s[0-9]|r3|core)?"
                  r"(-[0-9]{1,12}){0,5}.{0,2}", fullmatch=True),
))
def test_random_strings_parse_or_raise_spec_error(text):
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(spec, SpuriousSpec)
        assert parse_spec(spec.name) == spec
