"""The ``rsc`` command: a Click group. Built-in subcommands live in the modules of this package;
plugins add their own through the ``register_commands`` hook. Every ``RscError`` becomes a
one-line message on stderr and a non-zero exit code."""
from __future__ import annotations

import sys
import warnings

import click

from rsc_core.errors import RscError


class RscGroup(click.Group):
    """A Click group that turns rsc's errors into one clean line."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except RscError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=RscGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rsc")
def cli() -> None:
    """rsc: plant rare spurious correlations, train networks, and measure what they learned.

    Start with `rsc quickstart`, list plugins with `rsc plugins`, and see
    docs/ for the protocol and the library API.
    """


def _add_builtin_commands() -> None:
    from . import data_commands, plugin_commands, quickstart, theory, train_commands

    for module in (plugin_commands, data_commands, train_commands, quickstart, theory):
        for command in module.COMMANDS:
            cli.add_command(command)


def _add_plugin_commands() -> None:
    from rsc_core.plugins import add_commands

    try:
        add_commands(cli)
    except RscError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)


_add_builtin_commands()
_add_plugin_commands()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings reach users as one line, without the source line Python adds."""
    return f"warning: {message}\n"


def main() -> None:
    warnings.formatwarning = _one_line_warning
    cli()
