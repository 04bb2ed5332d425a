"""``rsc runs list`` and ``rsc runs show``: the results index (rsc_core.results_index) on the
command line. Both refresh the index from the run folders first, so they are never stale."""
from __future__ import annotations


import click
from rich.table import Table

from rsc_core.errors import ConfigError
from rsc_core.reports.report import to_csv
from rsc_core.runs.folder import format_number
from rsc_core.runs.index import COLUMNS, WHERE_HELP, column_name, get_run, list_runs

from .output import echo_json, print_table
from .train_commands import runs_dir_option

#: What a terminal listing shows unless --columns says otherwise.
DEFAULT_COLUMNS = ("spec", "train_seed", "recipe", "status", "epochs_done",
                   "clean_accuracy", "score")



def _columns(text: str | None, default: tuple[str, ...]) -> list[str]:
    if not text:
        return list(default)
    given = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in given if column_name(c) is None]
    if unknown:
        raise ConfigError(f"unknown column(s) {', '.join(unknown)} in --columns; columns: "
                          f"{', '.join(COLUMNS)}")
    return [column_name(c) for c in given]


#: Measured quantities, shown with 4 decimals; other numbers are shown as recorded.
_METRICS = {"clean_accuracy", "train_accuracy", "score", "patterned_accuracy"}


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column in _METRICS:
        return f"{value:.4f}"
    return format_number(value)


@click.group("runs")
def runs_group() -> None:
    """The results index: every run under the runs root, one row each."""


LIST_HELP = ("List runs (finished, running, interrupted) with their configuration and "
             "metrics, from the results index (refreshed from the run folders first).\n\n"
             "Columns, for --where and --columns: " + ", ".join(COLUMNS) + ".\n\n"
             "Example: rsc runs list --where \"pattern=s3 and n>=3 and status=finished\"")


@runs_group.command("list", help=LIST_HELP)
@click.option("--where", "where", default=None, metavar="EXPR",
              help=f"Only runs matching EXPR: {WHERE_HELP}.")
@click.option("--columns", default=None, metavar="A,B,...",
              help="Columns to show (default for the terminal: "
                   f"{', '.join(DEFAULT_COLUMNS)}; --json and --csv give all).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the rows as CSV.")
@runs_dir_option
def list_command(where, columns, as_json, as_csv, runs_dir) -> None:
    if as_json and as_csv:
        raise ConfigError("give --json or --csv, not both")
    rows = list_runs(where, runs_dir)
    if as_json or as_csv:
        names = _columns(columns, tuple(COLUMNS))
        rows = [{k: r[k] for k in names} for r in rows]
        if as_json:
            echo_json(rows)
        else:
            click.echo(to_csv(rows, names), nl=False)
        return
    names = _columns(columns, DEFAULT_COLUMNS)
    table = Table(title=f"{len(rows)} run(s)" + (f" where {where}" if where else ""))
    for name in names:
        table.add_column(name.replace("_", " "), no_wrap=name in ("name", "spec", "status"))
    for row in rows:
        table.add_row(*[_cell(n, row[n]) for n in names])
    print_table(table)


@runs_group.command("show")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print the row as JSON.")
@runs_dir_option
def show_command(run, as_json, runs_dir) -> None:
    """Everything the index records of one RUN (a folder name, a unique prefix of one, or a
    path)."""
    row = get_run(run, runs_dir)
    if as_json:
        echo_json(row)
        return
    table = Table("column", "value", title=row["name"])
    for key in COLUMNS:
        table.add_row(key, _cell(key, row[key]))
    print_table(table)


COMMANDS = [runs_group]
