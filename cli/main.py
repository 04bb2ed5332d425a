"""The ``rsc`` command: a Click group. Built-in subcommands live in the modules of this package;
plugins add their own through the ``register_commands`` hook.

Every failure reaches the user as ONE line on stderr starting with ``Error:`` (one per problem
when an error holds several, ``RscError.problems``) and a non-zero exit code, never a
traceback. Commands do not catch operating-system errors one by one: they
are all turned into one line here, at the boundary, by ``os_error_message``. Exit codes:
0 success, 2 any error rsc reports (``EXIT_ERROR``), 130 interrupted (``EXIT_INTERRUPTED``),
141 stdout closed early (``EXIT_BROKEN_PIPE``, nothing printed); a traceback (exit 1) is a bug.
"""
from __future__ import annotations

import errno
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import click

from rsc_core.errors import RscError
from rsc_core.storage.paths import file_in_the_way

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a reader that went away

#: Where each kind of output goes, for the "choose another location" hints.
_LOCATIONS = "--runs-dir or RSC_RUNS_DIR for runs, RSC_CACHE_DIR for the cache, -o for figures"


def fail(message: str, exit_code: int = EXIT_ERROR) -> NoReturn:
    """Print ``Error: message`` on one line of stderr and exit."""
    click.echo(f"Error: {one_line(message)}", err=True)
    sys.exit(exit_code)


def one_line(text: str) -> str:
    """Join lines and shorten absurd digit runs (a 5,000-digit number is not worth echoing)."""
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return re.sub(r"[0-9]{41,}", lambda m: f"{m[0][:12]}...({len(m[0])} digits)", text)


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: what happened to which path, and what to do."""
    path = exc.filename if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
    name = os.fsdecode(path) if path is not None else None
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        where = f" while writing {name}" if name else ""
        return (f"{what}{where}; free some space there, or write elsewhere ({_LOCATIONS}), "
                f"and run the command again")
    if name is None:
        return f"{reason} (errno {code}); check the disk and the paths given, and run again"
    if code == errno.EROFS:
        return (f"{name} is not writable: it is on a read-only file system; choose a writable "
                f"location ({_LOCATIONS})")
    if isinstance(exc, PermissionError):
        return (f"{name} is not writable (or not readable) by this user ({reason}); fix its "
                f"permissions or choose another location ({_LOCATIONS})")
    if isinstance(exc, NotADirectoryError):
        component = file_in_the_way(Path(name))
        which = f"{component} is a file" if component else "a component of it is a file"
        return f"cannot use {name}: {which}, not a folder; choose another path"
    if isinstance(exc, FileExistsError):
        return (f"cannot create folder {name}: a file of that name exists; remove it or "
                f"choose another path")
    if isinstance(exc, IsADirectoryError):
        return f"{name} is a folder where a file is needed; choose a file path"
    if isinstance(exc, FileNotFoundError):
        return f"{name} does not exist; check the path"
    return f"{name}: {reason}; check the path and the disk, and run the command again"


def _broken_pipe() -> NoReturn:
    """The reader of stdout went away (``rsc ... | head``): stop quietly, as other tools do.
    stdout is pointed at devnull so Python's final flush does not complain again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests)
        pass
    sys.exit(EXIT_BROKEN_PIPE)


def usage_message(exc: click.UsageError) -> str:
    """Click's usage error as one line with a pointer to the command's help."""
    message = one_line(exc.format_message()).rstrip(".")
    path = exc.ctx.command_path if exc.ctx is not None else "rsc"
    return f"{message} (see '{path} --help')"


class RscGroup(click.Group):
    """A Click group that turns every failure below it into one clean line."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        """Usage errors in the group's own options (``rsc --bogus``) are one line too."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # plain `rsc`: Click prints the help
        except click.UsageError as exc:
            fail(usage_message(exc), exc.exit_code)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except RscError as exc:
            for problem in exc.problems[:-1]:  # several found at once: one line each
                click.echo(f"Error: {one_line(problem)}", err=True)
            fail(exc.problems[-1] if exc.problems else str(exc), exc.exit_code)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `rsc data` alone: Click prints the group's help
        except click.UsageError as exc:
            fail(usage_message(exc), exc.exit_code)
        except BrokenPipeError:
            _broken_pipe()
        except OSError as exc:
            fail(os_error_message(exc))
        except OverflowError as exc:
            fail(f"a number is too large to compute with ({exc}); use smaller values")
        except KeyboardInterrupt:
            fail("interrupted; run the same command again to continue (an unfinished "
                 "training run resumes from its last saved epoch)", EXIT_INTERRUPTED)


@click.group(cls=RscGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rsc")
def cli() -> None:
    """rsc: plant rare spurious correlations, train networks, and measure what they learned.

    Start with `rsc quickstart`, list plugins with `rsc plugins`, and see
    docs/ for the protocol and the library API.
    """


def _add_builtin_commands() -> None:
    from . import (audit_commands, data_commands, import_commands, plugin_commands,
                   privacy_commands,
                   quickstart, removal_commands, report_commands, runs_commands,
                   sweep_commands, theory, train_commands)

    for module in (plugin_commands, data_commands, train_commands, quickstart, theory,
                   removal_commands, privacy_commands, runs_commands, report_commands,
                   sweep_commands, import_commands, audit_commands):
        for command in module.COMMANDS:
            cli.add_command(command)


def _add_plugin_commands() -> None:
    from rsc_core.plugins import add_commands

    try:
        add_commands(cli)
    except RscError as exc:
        fail(str(exc), exc.exit_code)


_add_builtin_commands()
_add_plugin_commands()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings reach users as one line, without the source line Python adds."""
    return f"warning: {message}\n"


def main() -> None:
    warnings.formatwarning = _one_line_warning
    cli()
