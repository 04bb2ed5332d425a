"""The one JSON writer behind every ``--json`` output and ``report.json``: always valid RFC 8259
JSON, which has no NaN or Infinity.

Python's ``json`` writes a float NaN as the bare word ``NaN``, which strict readers (``jq``,
JavaScript, ``json.loads(..., parse_constant=...)``) reject. rsc instead follows one
convention, documented in docs/usage.md ("Conventions"): a number that cannot be given is
``null``, and the object holding it says why in ``why_null``, a map from the field's name to
a reason. Producers that know the reason (a standard error of one run, a p-value without a
baseline) put it in ``why_null`` themselves; any other non-finite number that reaches the
writer is still written as ``null`` and its reason says which value it was."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: The key of the reasons map in an object with null numbers.
WHY_NULL = "why_null"


def to_json(data: Any, indent: int | None = 2) -> str:
    """``data`` as strict JSON text (numpy scalars and arrays, tuples and paths included),
    non-finite numbers replaced as the module says."""
    return json.dumps(finite(data), indent=indent, allow_nan=False, default=_plain)


def finite(data: Any) -> Any:
    """``data`` with every non-finite float as None, each recorded in its object's
    ``why_null`` (a reason given there already is kept)."""
    if isinstance(data, dict):
        out: dict[Any, Any] = {}
        reasons = dict(data.get(WHY_NULL) or {})
        for key, value in data.items():
            if key == WHY_NULL:
                continue
            value = _scalar(value)
            if isinstance(value, float) and not math.isfinite(value):
                reasons.setdefault(key, f"not a finite number ({value})")
                out[key] = None
            elif isinstance(value, (list, tuple)) and any(_non_finite(v) for v in value):
                reasons.setdefault(key, "entries that are not finite numbers are null")
                out[key] = finite(value)
            else:
                out[key] = finite(value)
        if reasons:
            out[WHY_NULL] = reasons
        return out
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    data = _scalar(data)
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _scalar(value: Any) -> Any:
    """A numpy scalar or 0-d array as the Python number it holds."""
    if hasattr(value, "ndim") and getattr(value, "ndim") == 0 and hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple, dict, str)):
        return value.tolist()
    return value


def _non_finite(value: Any) -> bool:
    value = _scalar(value)
    return isinstance(value, float) and not math.isfinite(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
