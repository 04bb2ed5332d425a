"""Spurious-dataset specs. The reference names datasets ``{dataset}{pattern}-{n}-{label}-{seed}``
(e.g. ``mnistv8-3-0-0``), ``twoclass{dataset}{pattern}-{n}-{c1}-{c2}-{seed}``, or plainly
``{dataset}``. ``parse_spec`` turns such a name into a ``SpuriousSpec``; ``SpuriousSpec.build``
checks the same fields when they come as separate options. Every malformed or impossible spec
raises ``SpecError``, never anything else. A spurious spec must name its pattern on every
dataset (``cifar10-3-0-0`` and ``mnist-3-0-0`` are errors that say what to write)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from rsc_core.errors import SpecError, UnknownNameError

MAX_SEED = 2**32 - 1  # numpy.random.RandomState accepts seeds in [0, 2**32)
_NAME = re.compile(r"(?P<twoclass>twoclass)?(?P<head>[a-z][a-z0-9]*)(?P<numbers>(?:-[0-9]+)*)")


@dataclass(frozen=True)
class SpuriousSpec:
    """Which dataset, which pattern, how many spurious examples of which class(es), which seed.

    ``targets`` has one class (the usual case), two (the reference's ``twoclass`` variant), or
    none for the clean dataset (then ``pattern`` is None and ``n`` is 0)."""

    dataset: str
    pattern: str | None = None
    n: int = 0
    targets: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.targets and not self.pattern:  # however it was made: parsed, built, loaded
            raise SpecError(_no_pattern_message(self.dataset, self.n, self.targets, self.seed))

    @property
    def is_clean(self) -> bool:
        return not self.targets

    @property
    def target(self) -> int | None:
        """The (first) target class, or None for the clean dataset."""
        return self.targets[0] if self.targets else None

    @property
    def name(self) -> str:
        """The canonical reference-style name, e.g. ``mnistv8-3-0-0``."""
        if self.is_clean:
            return self.dataset
        prefix = "twoclass" if len(self.targets) == 2 else ""
        numbers = "-".join(str(v) for v in (self.n, *self.targets, self.seed))
        return f"{prefix}{self.dataset}{self.pattern}-{numbers}"

    def __str__(self) -> str:
        return self.name

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "pattern": self.pattern, "n": self.n,
                "targets": list(self.targets), "seed": self.seed, "name": self.name}

    @classmethod
    def from_dict(cls, data: dict) -> "SpuriousSpec":
        """Inverse of ``as_dict`` (as stored in run configs and checkpoints)."""
        return cls(data["dataset"], data["pattern"], data["n"], tuple(data["targets"]),
                   data["seed"])

    @classmethod
    def build(cls, dataset: str, pattern: str | None = None, n: int = 0,
              targets: tuple[int, ...] | list[int] | int | None = None,
              seed: int = 0) -> "SpuriousSpec":
        """Validate fields (as from command-line options) and canonicalise names."""
        from rsc_core import registry

        dataset_name = _canonical("datasets", dataset)
        if isinstance(targets, int):
            targets = (targets,)
        targets = tuple(targets or ())
        if not targets:
            if pattern is not None or n:
                raise SpecError("a spurious dataset needs a target class (--target); "
                                "give none of pattern, n and target for the clean dataset")
            return cls(dataset_name)
        if len(targets) > 2:
            raise SpecError(f"at most two target classes are supported, got {len(targets)}")
        num_classes = registry("datasets").get(dataset_name).obj.num_classes
        for value, what in ((n, "n"), (seed, "seed"), *((t, "target") for t in targets)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SpecError(f"{what} must be a non-negative integer, got {value!r}")
        if len(set(targets)) < len(targets):
            raise SpecError(f"a two-class spec needs two different target classes, got "
                            f"{targets[0]} twice; give two different classes or use one")
        for target in targets:
            if target >= num_classes:
                raise SpecError(f"target class {target} is out of range: {dataset_name} has "
                                f"classes 0-{num_classes - 1}")
        if not pattern:
            raise SpecError(_no_pattern_message(dataset_name, n, targets, seed))
        pattern_name = _canonical("patterns", pattern)
        return cls(dataset_name, pattern_name, n, targets, _check_seed(seed))


def _no_pattern_message(dataset: str, n: int, targets: tuple[int, ...], seed: int) -> str:
    """Every spurious spec must name its pattern, on every dataset: the reference silently
    applies v1 (S1) to grey images when a name has none and rejects such names for colour
    images, so rsc asks instead of guessing (docs/protocol.md, "Deliberate differences")."""
    prefix = "twoclass" if len(targets) == 2 else ""
    numbers = "-".join(str(v) for v in (n, *targets, seed))
    return (f"{prefix}{dataset}-{numbers} names no pattern; name one, e.g. "
            f"{prefix}{dataset}v8-{numbers} (S3), or {prefix}{dataset}v1-{numbers} (S1, what the "
            f"reference applies to grey images when a name has none); with --dataset, give "
            f"--pattern")


def _check_seed(seed: int) -> int:
    if not isinstance(seed, int) or seed < 0 or seed > MAX_SEED:
        raise SpecError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return seed


def _canonical(kind: str, name: str) -> str:
    from rsc_core import registry

    try:
        return registry(kind).get(name).name
    except UnknownNameError as exc:
        raise SpecError(str(exc)) from None


def _split_head(head: str) -> tuple[str, str | None]:
    """Split ``mnistv8`` into a registered dataset and the rest (a pattern name or '')."""
    from rsc_core import registry

    datasets = registry("datasets")
    candidates = sorted((n for n in datasets.keys() if head.startswith(n)), key=len,
                        reverse=True)
    splits = [(dataset, head[len(dataset):]) for dataset in candidates
              if head[len(dataset):] in ("", *registry("patterns").keys())]
    if len(splits) > 1:  # user-declared names can make a head readable two ways
        readings = " or ".join(f"dataset {d!r} with pattern {p!r}" if p else f"dataset {d!r}"
                               for d, p in splits)
        raise SpecError(f"{head!r} is ambiguous: {readings}; rename one of the datasets in "
                        f"rsc.toml")
    if splits:
        return splits[0][0], splits[0][1] or None
    if candidates:
        raise SpecError(f"unknown pattern {head[len(candidates[0]):]!r} in {head!r}; "
                        f"patterns: {', '.join(registry('patterns').list())}")
    raise SpecError(f"unknown dataset in {head!r}; datasets: {', '.join(datasets.list())}")


def check_dataset_name(name: str) -> None:
    """A ``SpecError`` unless every spec head made of ``name`` and a pattern (or none) reads
    back as dataset ``name``: a newly declared name must not be ambiguous with, or shadowed
    by, a dataset and pattern already registered (``mnistv8`` would be)."""
    from rsc_core import registry

    for pattern in ("", *registry("patterns").keys()):
        dataset, found = _split_head(name + pattern)
        if dataset != name:
            raise SpecError(f"{name + pattern!r} reads as dataset {dataset!r} with pattern "
                            f"{found!r}, so specs of a dataset named {name!r} would not "
                            f"work; choose another name")


#: More significant digits than any n, class or seed can have (seeds are below 2**32); also
#: far below Python's int() limit of 4,300 digits, past which int() raises a ValueError.
_MAX_DIGITS = 20


def _parse_numbers(numbers: str) -> list[int]:
    """``-3-0-0`` -> [3, 0, 0]. An absurdly long number is a ``SpecError``, not int()'s
    ValueError; leading zeros are allowed (``003`` is 3)."""
    values = []
    for part in numbers.split("-")[1:]:
        digits = part.lstrip("0")
        if len(digits) > _MAX_DIGITS:
            raise SpecError(f"dataset spec number {digits[:12]}... has {len(digits)} digits, "
                            f"far too many for n, a class or a seed (seeds are at most "
                            f"{MAX_SEED}); use e.g. mnistv8-3-0-0")
        values.append(int(digits or "0"))
    return values


def parse_spec(text: str) -> SpuriousSpec:
    """Parse a reference-style dataset name. Raises ``SpecError`` on anything malformed."""
    if not isinstance(text, str):
        raise SpecError(f"a dataset spec must be a string, got {type(text).__name__}")
    match = _NAME.fullmatch(text)
    if match is None:
        raise SpecError(
            f"cannot parse dataset spec {text!r}; expected {{dataset}}, "
            f"{{dataset}}{{pattern}}-{{n}}-{{label}}-{{seed}} (e.g. mnistv8-3-0-0) or "
            f"twoclass{{dataset}}{{pattern}}-{{n}}-{{c1}}-{{c2}}-{{seed}}")
    dataset, pattern = _split_head(match["head"])
    numbers = _parse_numbers(match["numbers"])
    twoclass = bool(match["twoclass"])
    expected = 4 if twoclass else 3
    if not numbers and not twoclass and pattern is None:
        return SpuriousSpec.build(dataset)
    if len(numbers) != expected:
        form = "-{n}-{c1}-{c2}-{seed}" if twoclass else "-{n}-{label}-{seed}"
        raise SpecError(f"dataset spec {text!r} needs {expected} numbers ({form}), "
                        f"got {len(numbers)}")
    n, *targets, seed = numbers
    return SpuriousSpec.build(dataset, pattern, n, tuple(targets), seed)


_BRACE = re.compile(r"\{([^{}]*)\}")
MAX_EXPANSION = 10_000


def expand_names(text: str) -> list[str]:
    """Shell-style braces in a spec name: ``mnistv20-3-0-{0..4}`` is five names and
    ``mnist{v8,v20}-{3,10}-0-0`` four (the first brace varies slowest). Lets one quoted
    argument name a set of runs, in any shell."""
    match = _BRACE.search(text)
    if match is None:
        if "{" in text or "}" in text:
            raise SpecError(f"unbalanced braces in {text!r}; write e.g. mnistv20-3-0-{{0..4}}")
        return [text]
    head, tail = text[:match.start()], text[match.end():]
    names = [head + choice + rest for choice in _brace_choices(match.group(1), text)
             for rest in expand_names(tail)]
    if len(names) > MAX_EXPANSION:
        raise SpecError(f"{text!r} expands to {len(names)} names, more than {MAX_EXPANSION}")
    return names


def _brace_choices(body: str, text: str) -> list[str]:
    numeric = re.fullmatch(r"(\d{1,9})\.\.(\d{1,9})", body)
    if numeric:
        low, high = int(numeric.group(1)), int(numeric.group(2))
        if high < low or high - low >= MAX_EXPANSION:
            raise SpecError(f"bad range {{{body}}} in {text!r}; use {{LOW..HIGH}} with "
                            f"LOW <= HIGH")
        return [str(v) for v in range(low, high + 1)]
    choices = body.split(",")
    if len(choices) < 2 or any(not c for c in choices):
        raise SpecError(f"bad braces {{{body}}} in {text!r}; use {{A,B,...}} or {{LOW..HIGH}}")
    return choices


def parse_int_list(text: str, what: str = "seeds", maximum: int = MAX_SEED) -> list[int]:
    """``0-4,7`` -> [0, 1, 2, 3, 4, 7]: ranges and single values, in order, no repeats. A
    range is ``LOW-HIGH``; the brace form of spec names (``0..4``, ``{0..4}``, ``{0,2,5}``)
    is read too, so one way of writing a range works everywhere."""
    values: list[int] = []
    body = str(text).strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    for part in body.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d{1,20})(?:(?:-|\.\.)(\d{1,20}))?", part)
        if match is None:
            raise SpecError(f"bad {what} {text!r}; give numbers and ranges, e.g. 0-4 or 0,2,5")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        if high < low or high > maximum or high - low >= MAX_EXPANSION:
            raise SpecError(f"bad {what} range {part!r} in {text!r}; use LOW-HIGH with "
                            f"0 <= LOW <= HIGH <= {maximum}")
        values.extend(range(low, high + 1))
    return list(dict.fromkeys(values))
