"""``rsc patterns ...`` and ``rsc data ...``: look at patterns and spurious datasets."""
from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from rsc_core import registry
from rsc_core.datasets import load_dataset
from rsc_core.plots import check_figure_path, save_pattern_grid
from rsc_core.spec import MAX_SEED
from rsc_core.spurious import plant

from .options import data_options, spec_options


@click.group("patterns")
def patterns_group() -> None:
    """List and draw the spurious patterns."""


@patterns_group.command("list")
def patterns_list() -> None:
    """List patterns with their paper names (aliases)."""
    table = Table("name", "aliases", "description")
    for entry in registry("patterns").entries():
        table.add_row(entry.name, ", ".join(entry.aliases), entry.description)
    Console().print(table)


@patterns_group.command("show")
@click.argument("pattern")
@click.option("--dataset", default="mnist", show_default=True, help="Dataset to draw images from.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Pattern seed (draws the noise image of random patterns).")
@click.option("--count", type=click.IntRange(1, 16), default=6, show_default=True,
              help="How many images to show.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="pattern.png",
              show_default=True,
              help="Figure to write; its extension picks the format (png, pdf, svg, ...).")
@data_options
def patterns_show(pattern: str, dataset: str, seed: int, count: int, output: str,
                  data_dir: str | None, download: bool | None) -> None:
    """Write a figure (PNG unless -o names another format) of a few clean training images
    above the same images with PATTERN."""
    entry = registry("patterns").get(pattern)
    check_figure_path(output)  # before loading data
    bundle = load_dataset(dataset, data_dir, download)
    clean = bundle.train.images[:count]
    patterned = entry.create().apply(clean, seed)
    names = [bundle.classes[int(y)] for y in bundle.train.labels[:count]]
    aliases = f" ({', '.join(entry.aliases)})" if entry.aliases else ""
    title = f"{entry.name}{aliases} on {dataset}, seed {seed}"
    path = save_pattern_grid(clean, patterned, title, output, names)
    click.echo(f"wrote {path}")


@click.group("data")
def data_group() -> None:
    """Inspect datasets and spurious datasets."""


@data_group.command("summary")
@spec_options
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def data_summary(spec, data_dir: str | None, download: bool | None, as_json: bool) -> None:
    """Build a spurious dataset and print what was planted where.

    Example: rsc data summary --spec mnistv8-3-0-0
    """
    dataset = plant(load_dataset(spec.dataset, data_dir, download), spec)
    summary = dataset.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    table = Table("field", "value", title=f"spurious dataset {spec.name}")
    for key, value in summary.items():
        table.add_row(key, str(value))
    Console().print(table)


COMMANDS = [patterns_group, data_group]
