"""Built-in data-removal methods (PROTOCOL.md section 7), one per module."""
from __future__ import annotations

from rsc_core import hookimpl


@hookimpl
def register_removers(register) -> None:
    """Register the built-in removers (none yet)."""
