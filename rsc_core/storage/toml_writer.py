"""TOML text for the value types rsc writes (strings, numbers, booleans, lists and inline
tables): grids saved from presets and the dataset declarations ``rsc data add`` appends to
``rsc.toml``. Python reads TOML (tomllib) but does not write it."""
from __future__ import annotations

from typing import Any


def to_toml(data: dict[str, Any]) -> str:
    """A grid as TOML text (the value types grids use: strings, numbers, booleans, lists and
    inline tables), so a preset can be saved and edited as a file."""
    lines = []
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in data.items():
        if key not in tables:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
