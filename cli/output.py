"""How every command prints: JSON through one strict writer, and tables that a pipe or a log
file gets whole.

* ``echo_json``: every ``--json`` goes through ``rsc_core.json_output.to_json``, so it is
  valid RFC 8259 JSON (no bare NaN; a missing number is null with a reason in ``why_null``).
* ``table_console`` / ``print_table``: on a terminal, rich's tables at the terminal's width;
  piped or redirected, at the table's own full width, so no column is squeezed and no cell
  cut (rich would otherwise assume 80 columns and fold every table into them).
"""
from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from rsc_core.json_output import to_json


def echo_json(data: Any) -> None:
    """Print ``data`` as strict JSON (two-space indent) on stdout."""
    click.echo(to_json(data))


class _FullWidthConsole(Console):
    """A console for a pipe or a file: each table is printed at its natural width."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        tables = [o for o in objects if isinstance(o, Table)]
        if not tables:  # a line of text: whole, never folded at 80 columns
            kwargs.setdefault("soft_wrap", True)
            super().print(*objects, **kwargs)
            return
        wide = Console(width=10_000, color_system=None, force_terminal=False)
        needed = max(Measurement.get(wide, wide.options, t).maximum for t in tables)
        for table in tables:  # a title or caption wraps between words, never inside one
            words = [w for text in (table.title, table.caption) if isinstance(text, str)
                     for w in text.split()]
            table.min_width = max([table.min_width or 0, *map(len, words)])
            needed = max(needed, table.min_width)
        original = self.width
        self.width = max(original, needed)
        try:
            super().print(*objects, **kwargs)
        finally:
            self.width = original


def table_console() -> Console:
    """The console every table goes through: a terminal's own width, else full width."""
    console = Console()
    return console if console.is_terminal else _FullWidthConsole()


def print_table(table: Table, console: Console | None = None) -> None:
    """Print ``table`` whole (see the module's docstring)."""
    (console or table_console()).print(table)
