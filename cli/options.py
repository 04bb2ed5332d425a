"""Options shared by several commands: the spurious-dataset spec (as a name or as options) and
the data root."""
from __future__ import annotations

import functools
from typing import Any, Callable

import click

from rsc_core.errors import SpecError
from rsc_core.spec import SpuriousSpec, expand_names, parse_spec


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
                     help="Seed that selects the examples and draws the noise pattern."),
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
