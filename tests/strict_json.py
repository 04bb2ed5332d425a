"""Strict JSON for tests: what RFC 8259 allows and nothing more (Python's json module would
also read NaN, Infinity and -Infinity, which jq, JavaScript and most other readers refuse)."""
from __future__ import annotations

import json
from typing import Any


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON (RFC 8259)")


def loads(text: str) -> Any:
    """``json.loads`` that refuses NaN and infinities."""
    return json.loads(text, parse_constant=_refuse)
