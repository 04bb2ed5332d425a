"""Declared, validated parameters for the built-in regularisers.

A regulariser lists its parameters in ``PARAMS`` (name -> ``Param``); ``ParamRegulariser``
checks and normalises them in ``__init__``: numbers become floats, flags bools, and ``spec()``
records the required parameters plus every optional one that differs from its default, so
equivalent spellings (``value=1`` / ``value=1.0``, ``decoupled=false`` / nothing) name the same
run. The converters raise ``ValueError`` with the reason, which ``__init__`` turns into one
``ConfigError`` naming the regulariser, the parameter and what it accepts."""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

from rsc_core.errors import ConfigError
from rsc_core.training.regularisers import Regulariser

#: The default of a parameter that has none: it must be given.
REQUIRED = object()


class Param:
    """One declared parameter: a converter (raising ``ValueError`` with the reason) and a
    default (``REQUIRED`` when it has none)."""

    def __init__(self, convert: Callable[[Any], Any], default: Any = REQUIRED,
                 doc: str = "") -> None:
        self.convert, self.default, self.doc = convert, default, doc


def number(low: float | None = None, *, strict: bool = False,
           high: float | None = None, strict_high: bool = False) -> Callable[[Any], float]:
    """A converter to a finite float within optional bounds (``strict``: bound excluded)."""
    def convert(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ValueError(f"must be finite, got {value!r}")
        if low is not None and (result <= low if strict else result < low):
            raise ValueError(f"must be {'>' if strict else '>='} {low:g}, got {value!r}")
        if high is not None and (result >= high if strict_high else result > high):
            raise ValueError(f"must be {'<' if strict_high else '<='} {high:g}, got {value!r}")
        return result
    return convert


def flag(value: Any) -> bool:
    """A converter to a bool from a bool, 0/1, or true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise ValueError(f"must be true or false, got {value!r}")


def choice(*options: str) -> Callable[[Any], str]:
    """A converter to one of ``options`` (case-insensitive)."""
    def convert(value: Any) -> str:
        text = str(value).lower() if isinstance(value, str) else None
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return text
    return convert


class ParamRegulariser(Regulariser):
    """A regulariser whose parameters are declared in ``PARAMS`` (name -> ``Param``).

    ``__init__`` rejects unknown names, converts every value, fills in defaults and sets each
    parameter as an attribute; ``self.params`` (what ``spec()`` records) keeps the required
    parameters and the optional ones that differ from their defaults."""

    PARAMS: ClassVar[dict[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        accepted = ", ".join(self.PARAMS) or "none"
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise ConfigError(f"{self.name}: unknown parameter{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown))}; accepted: {accepted}")
        recorded: dict[str, Any] = {}
        for key, param in self.PARAMS.items():
            if key not in params:
                if param.default is REQUIRED:
                    raise ConfigError(f"{self.name} needs {key}=... ({param.doc}); "
                                      f"accepted: {accepted}")
                setattr(self, key, param.default)
                continue
            try:
                value = param.convert(params[key])
            except ValueError as exc:
                raise ConfigError(f"{self.name}: {key} {exc} ({param.doc}); "
                                  f"accepted: {accepted}") from None
            setattr(self, key, value)
            if param.default is REQUIRED or value != param.default:
                recorded[key] = value
        super().__init__(**recorded)
