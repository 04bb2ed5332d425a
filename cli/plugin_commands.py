"""``rsc plugins``: what is installed, by kind, with its source distribution and failures."""
from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from rsc_core import KINDS, load_plugins


def plugins_report() -> dict:
    """Every registered item by kind, and every plugin that failed to load."""
    state = load_plugins()
    return {
        "kinds": {kind: [e.as_dict() for e in state.registries[kind].entries()]
                  for kind in KINDS},
        "failed": [f.as_dict() for f in state.failures],
    }


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def plugins_command(as_json: bool) -> None:
    """List every registered plugin item by kind, with the distribution it came from.

    Plugins that failed to import or register are listed as failed (set
    RSC_STRICT_PLUGINS=1 to make such a failure an error).
    """
    report = plugins_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console = Console()
    table = Table("kind", "name", "aliases", "source", "description")
    for kind, entries in report["kinds"].items():
        for entry in entries:
            table.add_row(kind, entry["name"], ", ".join(entry["aliases"]), entry["source"],
                          entry["description"])
    console.print(table)
    for failure in report["failed"]:
        console.print(f"[red]failed[/red] {failure['entry_point']} from {failure['source']} "
                      f"({failure['stage']}): {failure['error']}", markup=True, highlight=False)


COMMANDS = [plugins_command]
