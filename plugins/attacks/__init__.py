"""Built-in membership-inference attacks (PROTOCOL.md section 8), one per module."""
from __future__ import annotations

from rsc_core import hookimpl


@hookimpl
def register_attacks(register) -> None:
    """Register the built-in attacks (none yet)."""
