"""``rsc plugins``: every installed plugin package (version, hooks, commands), every registered
item by kind with its source distribution, and the plugins that clashed or failed.

On a terminal the listing is rich tables; piped or redirected it is plain tab-separated lines
that are never wrapped or truncated, so ``rsc plugins | grep NAME`` finds every item."""
from __future__ import annotations

import sys
from typing import Any, Iterable

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rsc_core import KINDS, load_plugins
from rsc_core.plugins import add_commands

from .output import echo_json

SECTIONS: dict[str, tuple[str, ...]] = {
    "packages": ("package", "version", "status", "hooks", "commands"),
    "kinds": ("kind", "name", "aliases", "source", "description"),
    "conflicts": ("conflict", "name", "kept", "skipped"),
    "failed": ("failed", "entry point", "stage", "error"),
}


def plugins_report() -> dict[str, Any]:
    """Packages, every registered item by kind, conflicts and failures, as plain data."""
    state = load_plugins()
    if not state.commands_collected:  # plugins were reset after the CLI was built (tests)
        add_commands(click.Group())
    return {
        "packages": [p.as_dict() for p in state.packages.values()],
        "kinds": {kind: [e.as_dict() for e in state.registries[kind].entries()]
                  for kind in KINDS},
        "conflicts": [c.as_dict() for c in state.conflicts],
        "failed": [f.as_dict() for f in state.failures],
    }


def _joined(values: Iterable[str]) -> str:
    return ", ".join(values) or "-"


def _rows(report: dict[str, Any]) -> dict[str, list[tuple[str, ...]]]:
    """The report as table rows, one list per section."""
    packages = [(p["name"], p["version"] or "-",
                 f"{p['status']} ({p['reason']})" if p["reason"] else p["status"],
                 _joined(p["hooks"]), _joined(p["commands"])) for p in report["packages"]]
    items = [(kind, e["name"], _joined(e["aliases"]), e["source"], e["description"] or "-")
             for kind, entries in report["kinds"].items() for e in entries]
    conflicts = [(c["kind"], c["name"], f"{c['kept_source']} ({c['kept_item']})",
                  f"{c['skipped_source']} ({c['skipped_item']})") for c in report["conflicts"]]
    failed = [(f["source"], f["entry_point"], f["stage"], f["error"]) for f in report["failed"]]
    return {"packages": packages, "kinds": items, "conflicts": conflicts, "failed": failed}


def _print_plain(rows: dict[str, list[tuple[str, ...]]]) -> None:
    """Tab-separated lines under a ``# column...`` header per section; nothing is cut."""
    first = True
    for section, table in rows.items():
        if not table and section in ("conflicts", "failed"):
            continue
        if not first:
            click.echo("")
        first = False
        click.echo("# " + "\t".join(SECTIONS[section]))
        for row in table:
            click.echo("\t".join(" ".join(cell.split()) for cell in row))


def _print_tables(rows: dict[str, list[tuple[str, ...]]]) -> None:
    console = Console()
    titles = {"packages": "Packages", "kinds": "Items", "conflicts": "Conflicts (later one "
              "skipped)", "failed": "Failed"}
    for section, table_rows in rows.items():
        if not table_rows and section in ("conflicts", "failed"):
            continue
        table = Table(*SECTIONS[section], title=titles[section], title_justify="left")
        for row in table_rows:
            table.add_row(*(Text(cell) for cell in row))  # names are not rich markup
        console.print(table)


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def plugins_command(as_json: bool) -> None:
    """List plugin packages and everything they register.

    Shows each package with rsc entry points (version, status, the hooks it implements, the
    commands it adds), every registered item by kind with the package it came from, and any
    conflicts (two packages registering one name: the first loaded wins, rsc's own first) and
    failures (a module that did not import or a hook that raised). Piped output is plain
    tab-separated lines, never truncated.

    Environment: RSC_DISABLE_PLUGINS=pkg,... skips packages; RSC_LOAD_PLUGINS=pkg,... loads
    only those third-party packages; RSC_STRICT_PLUGINS=1 makes conflicts and failures errors.
    See docs/plugins.md.
    """
    report = plugins_report()
    if as_json:
        echo_json(report)
        return
    rows = _rows(report)
    if sys.stdout.isatty():
        _print_tables(rows)
    else:
        _print_plain(rows)


COMMANDS = [plugins_command]
