"""Options shared by several commands: the spurious-dataset spec (as a name or as options) and
the data root."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import click

from rsc_core.errors import SpecError
from rsc_core.data.spec import SpuriousSpec, expand_names, parse_spec


def data_options(fn: Callable) -> Callable:
    """``--data-dir`` and ``--download/--no-download``."""
    fn = click.option("--download/--no-download", default=None,
                      help="Allow downloading missing datasets (default: RSC_DOWNLOAD, else no).")(fn)
    fn = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                      help="Dataset root in torchvision's layout (default: RSC_DATA_DIR, "
                           "else rsc's cache folder).")(fn)
    return fn


def spec_options(fn: Callable | None = None, *, many: bool = False) -> Callable:
    """A spec as ``--spec mnistv8-3-0-0`` or as ``--dataset/--pattern/--n-spurious/--target/
    --seed``; the command receives one ``spec`` keyword (a ``SpuriousSpec``). With
    ``many=True``, ``--spec`` is repeatable and takes braces (``mnistv20-3-0-{0..4}``), and the
    command receives ``specs``, a list."""
    if fn is None:
        return functools.partial(spec_options, many=many)

    @functools.wraps(fn)
    def wrapper(*args: Any, spec: Any, dataset: str | None, pattern: str | None,
                n_spurious: int | None, target: tuple[int, ...], dataset_seed: int,
                **kwargs: Any) -> Any:
        if not many:
            return fn(*args, spec=resolve_spec(spec, dataset, pattern, n_spurious, target,
                                               dataset_seed), **kwargs)
        if not spec:
            return fn(*args, specs=[resolve_spec(None, dataset, pattern, n_spurious, target,
                                                 dataset_seed)], **kwargs)
        names = [name for text in spec for name in expand_names(text)]
        return fn(*args, specs=[resolve_spec(name, dataset, pattern, n_spurious, target,
                                             dataset_seed) for name in names], **kwargs)

    spec_help = ("Reference-style name, e.g. mnistv8-3-0-0 ({dataset}{pattern}-{n}-{label}-"
                 "{seed}) or plain mnist.")
    if many:
        spec_help += (" Repeatable; braces name several runs: 'mnistv20-3-0-{0..4}', "
                      "'mnist{v8,v20}-3-0-0' (quote them).")
    for option in reversed((
        click.option("--spec", "spec", default=None, metavar="NAME", multiple=many,
                     help=spec_help),
        click.option("--dataset", default=None, help="Dataset name (instead of --spec)."),
        click.option("--pattern", default=None, help="Pattern name or alias, e.g. v8 or s3."),
        click.option("--n-spurious", "-n", type=int, default=None,
                     help="Number of spurious training examples."),
        click.option("--target", type=int, multiple=True,
                     help="Target class of the spurious examples (twice for two classes)."),
        click.option("--seed", "dataset_seed", type=int, default=0, show_default=True,
                     help="Dataset seed, the spec's last number: it selects the examples and "
                          "draws the noise pattern."),
    )):
        wrapper = option(wrapper)
    return wrapper


def resolve_spec(spec: str | None, dataset: str | None, pattern: str | None,
                 n_spurious: int | None, target: tuple[int, ...], seed: int) -> SpuriousSpec:
    """One spec from either form; giving both forms is an error."""
    if spec and (dataset or pattern or n_spurious is not None or target):
        raise SpecError("give the dataset either as --spec NAME or as --dataset/--pattern/"
                        "--n-spurious/--target options, not both")
    if spec:
        return parse_spec(spec)
    if not dataset:
        raise SpecError("no dataset given; use --spec mnistv8-3-0-0 or --dataset mnist "
                        "[--pattern s3 --n-spurious 3 --target 0 --seed 0]")
    return SpuriousSpec.build(dataset, pattern, n_spurious or 0, target, seed)


def old_spelling(old: str, new: str, dest: str) -> Callable:
    """Keep ``old``, an earlier spelling of the option ``new`` (whose parameter is ``dest``),
    working for older scripts: hidden from --help, it sets ``dest`` with a one-line note on
    stderr; giving both is an error. docs/usage.md, "Conventions", lists these."""
    hidden = f"old_{dest}"

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(hidden)
            if value is not None:
                context = click.get_current_context()
                if context.get_parameter_source(dest) is not click.core.ParameterSource.DEFAULT:
                    raise click.UsageError(f"{old} is the old spelling of {new}; give one")
                click.echo(f"note: {old} is now spelled {new} ({old} still works)", err=True)
                param = next(p for p in context.command.params if p.name == dest)
                kwargs[dest] = param.type_cast_value(context, value)
            return fn(*args, **kwargs)

        return click.option(old, hidden, default=None, hidden=True)(wrapper)

    return decorate


def run_path(text: str, runs_dir: str | None) -> Path:
    """A run given on the command line: a path (folder or checkpoint file) when one exists,
    else a run's folder name, or a unique start of one, under the runs root (found through
    the results index, as `rsc runs show` finds it)."""
    from rsc_core.storage.paths import runs_dir as resolve_runs_dir
    from rsc_core.runs.index import get_run

    path = Path(text)
    if path.exists():
        return path
    root = resolve_runs_dir(runs_dir)
    if len(path.parts) > 1 or not root.is_dir() or not any(
            child.name.startswith(text) for child in root.iterdir()):
        raise click.BadParameter(f"'{text}' does not exist: it is neither a file, a folder "
                                 f"nor the name of a run under {root}", param_hint="'SOURCE'")
    return Path(get_run(text, runs_dir)["path"])


class PluginNamesOption(click.Option):
    """An option whose help lists the names registered for a plugin ``kind`` in place of
    ``{names}``, read from the registry when the help is shown: installed third-party
    plugins are listed beside rsc's own."""

    def __init__(self, *args: Any, kind: str, **kwargs: Any) -> None:
        self.kind = kind
        super().__init__(*args, **kwargs)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from rsc_core import list_names

        original = self.help or ""
        self.help = original.replace("{names}", ", ".join(list_names(self.kind)))
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = original
