"""The command line's ``NAME[:key=value,...]`` form, shared by every option that names a plugin
with parameters (``-r weight-decay:value=1e-4``, ``--attack lira-offline:variance=fixed``)."""
from __future__ import annotations

from typing import Any

from .errors import ConfigError


def parse_named_options(text: str, what: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:key=value,...]`` -> ``(NAME, {key: value})``; values are parsed as int, float,
    true/false, or kept as strings. Dashes in keys become underscores, and a key given twice
    (in either spelling) is an error rather than silently the last value. ``what`` names the
    option in messages ("regulariser", "attack")."""
    name, _, rest = text.partition(":")
    if not name.strip():
        raise ConfigError(f"bad {what} {text!r}; expected NAME[:key=value,...]")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad {what} parameter {item!r} in {text!r}; expected key=value")
        key = key.strip().replace("-", "_")
        if key in params:
            raise ConfigError(f"parameter {key!r} is given twice in {text!r} (dashes and "
                              f"underscores in keys are the same); give it once")
        params[key] = parse_value(value.strip())
    return name.strip(), params


def format_named_options(name: str, params: dict[str, Any]) -> str:
    """The inverse of ``parse_named_options``, for messages and labels."""
    text = ",".join(f"{key}={value}" for key, value in params.items())
    return f"{name}:{text}" if text else name


def parse_value(value: str) -> Any:
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


def check_known_options(what: str, options: Any, known: Any) -> None:
    """One error naming the first option of ``options`` not in ``known``, and those it has
    (``what``: e.g. "method group-influence", "auditor saliency")."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"{what} has no option {unknown[0]!r}; its options are: {listed}")
