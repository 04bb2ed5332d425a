"""The reference's spurious patterns (PROTOCOL.md section 2), with the paper's names as
aliases. Squares and the bar set pixels to 1; the random patterns add a fixed noise image."""
from __future__ import annotations

from rsc_core import hookimpl
from rsc_core.data.patterns import FixedNoisePattern, SquarePattern


class V1(SquarePattern):
    """S1: pixel (0, 0) set to 1 in every channel."""

    name, aliases = "v1", ("s1",)
    rows, cols = (0, 1), (0, 1)


class V3(SquarePattern):
    """S2: a white 3x3 square in the top-left corner."""

    name, aliases = "v3", ("s2",)
    rows, cols = (0, 3), (0, 3)


class V8(SquarePattern):
    """S3: a white 5x5 square in the top-left corner."""

    name, aliases = "v8", ("s3",)
    rows, cols = (0, 5), (0, 5)


class V30(SquarePattern):
    """Core: a vertical white bar, rows 3-24, columns 13-15."""

    name, aliases = "v30", ("core",)
    rows, cols = (3, 25), (13, 16)


class V18(FixedNoisePattern):
    """R1: x + 0.25 U with one fixed uniform noise image U, clipped to [0, 1]."""

    name, aliases, level = "v18", ("r1",), 0.25


class V19(FixedNoisePattern):
    """R2: x + 0.5 U with one fixed uniform noise image U, clipped to [0, 1]."""

    name, aliases, level = "v19", ("r2",), 0.5


class V20(FixedNoisePattern):
    """R3: x + U with one fixed uniform noise image U, clipped to [0, 1]."""

    name, aliases, level = "v20", ("r3",), 1.0


@hookimpl
def register_patterns(register) -> None:
    for pattern in (V1, V3, V8, V18, V19, V20, V30):
        register(pattern)
