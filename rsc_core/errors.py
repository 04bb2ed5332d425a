"""Error types. Every error rsc raises on bad input is an ``RscError`` whose message is one
line saying what was wrong and what to do; the CLI prints it and exits non-zero."""
from __future__ import annotations


__all__ = ['RscError', 'SpecError', 'UnknownNameError', 'PluginError',
           'PluginConflictError', 'DatasetMissingError', 'DatasetCorruptError',
           'PatternError', 'CheckpointError', 'ConfigError', 'DivergenceError',
           'OptionalDependencyError', 'UserConfigError']


class RscError(Exception):
    """Base class: a user-facing, one-line error."""

    exit_code = 2
    #: Several independent problems found at once (e.g. every bad key of a grid file), each a
    #: one-line error; the message joins them and the CLI prints one ``Error:`` line each.
    problems: tuple[str, ...] = ()

    @classmethod
    def several(cls, problems: list[str]) -> "RscError":
        """One error reporting all of ``problems`` (at least one)."""
        error = cls("; ".join(problems))
        error.problems = tuple(problems)
        return error


class SpecError(RscError, ValueError):
    """A malformed or impossible spurious-dataset spec."""


class UnknownNameError(RscError, KeyError):
    """A plugin name that no registered plugin of that kind has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginError(RscError):
    """A plugin failed to load (raised only with RSC_STRICT_PLUGINS=1)."""


class PluginConflictError(RscError):
    """Two plugins registered the same name for the same kind."""


class DatasetMissingError(RscError, FileNotFoundError):
    """Dataset files are not on disk and may not be downloaded."""


class DatasetCorruptError(RscError, ValueError):
    """Dataset files exist but cannot be decoded into the expected images and labels."""


class PatternError(RscError, ValueError):
    """A pattern does not fit the images it is applied to."""


class CheckpointError(RscError):
    """A checkpoint is missing, corrupt or of the wrong architecture."""


class ConfigError(RscError, ValueError):
    """A bad training, regulariser or run option."""


class DivergenceError(RscError):
    """Training produced a NaN or infinite loss."""


class OptionalDependencyError(RscError, ImportError):
    """An optional extra (for example ``rsc[dp]``) is needed but not installed."""


class UserConfigError(ConfigError):
    """The user's project file (``rsc.toml``, ``rsc_core.user_config``) is malformed or declares
    something impossible. Unlike a failing plugin, which is skipped with a warning, this stops
    rsc: running on with part of the user's own declarations ignored would silently use other
    data than they named."""
