"""The command line's ``NAME[:key=value,...]`` form, shared by every option that names a plugin
with parameters (``-r weight-decay:value=1e-4``, ``--attack lira-offline:variance=fixed``)."""
from __future__ import annotations

from typing import Any, Iterable

from rsc_core.errors import ConfigError


def parse_named_options(text: str, what: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:key=value,...]`` -> ``(NAME, {key: value})``; values are parsed as int, float,
    true/false, or kept as strings. Dashes in keys become underscores, and a key given twice
    (in either spelling) is an error rather than silently the last value. ``what`` names the
    option in messages ("regulariser", "attack")."""
    name, _, rest = text.partition(":")
    if not name.strip():
        raise ConfigError(f"bad {what} {text!r}; expected NAME[:key=value,...]")
    params = parse_key_values((part.strip() for part in rest.split(",")), what,
                              f" in {text!r}")
    return name.strip(), params


def parse_key_values(items: Iterable[str], what: str, where: str = "") -> dict[str, Any]:
    """``key=value`` items (empty ones skipped) -> ``{key: value}``, values read by
    ``parse_value``; the one parser behind ``NAME:k=v,...`` and ``-O KEY=VALUE``. Dashes in
    keys become underscores; a key given twice is an error, not silently the last value."""
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in items)):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad {what} parameter {item!r}{where}; expected key=value")
        key = key.strip().replace("-", "_")
        if key in params:
            raise ConfigError(f"parameter {key!r} is given twice{where} (dashes and "
                              f"underscores in keys are the same); give it once")
        params[key] = parse_value(value.strip())
    return params


def format_named_options(name: str, params: dict[str, Any]) -> str:
    """The inverse of ``parse_named_options``, for messages and labels."""
    text = ",".join(f"{key}={value}" for key, value in params.items())
    return f"{name}:{text}" if text else name


def parse_value(value: str) -> Any:
    """A command-line value: true/yes/on and false/no/off are booleans, then int, then
    float; anything else stays a string."""
    lowered = value.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def convert_option(key: str, value: Any, kind: type, owner: str) -> Any:
    """``value`` of option ``key`` as ``kind`` (the type of its default), or one
    ``ConfigError`` naming ``owner`` ("method retrain", "attack rmia"). A boolean is never a
    number (``steps=true`` is not 1), a fractional number is never a whole one, and a string
    is read as ``parse_value`` reads the command line."""
    if kind is type(None) or kind is object:
        return value
    wanted = {int: "a whole number", float: "a number", bool: "true or false",
              str: "text"}.get(kind, f"a {kind.__name__}")
    problem = ConfigError(f"option {key!r} of {owner} must be {wanted}, got {value!r}")
    if isinstance(value, str) and kind is not str:
        value = parse_value(value)
    if kind is bool:
        if isinstance(value, int) and value in (0, 1):  # 0/1 as a flag, not 2 or 0.5
            return bool(value)
        raise problem
    if isinstance(value, bool):
        raise problem
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise problem
        return value
    if kind is float:
        if not isinstance(value, (int, float)):
            raise problem
        return float(value)
    if kind is str:
        return str(value)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise problem from None
def check_known_options(what: str, options: Any, known: Any) -> None:
    """One error naming the first option of ``options`` not in ``known``, and those it has
    (``what``: e.g. "method group-influence", "auditor saliency")."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"{what} has no option {unknown[0]!r}; its options are: {listed}")
