"""``rsc patterns ...`` and ``rsc data ...``: look at patterns and spurious datasets."""
from __future__ import annotations


import click
from rich.table import Table

from rsc_core import registry
from rsc_core.datasets import load_dataset
from rsc_core.plots import check_figure_path, save_pattern_grid
from rsc_core.spec import MAX_SEED
from rsc_core.spurious import plant

from .options import data_options, spec_options
from .output import echo_json, print_table


@click.group("patterns")
def patterns_group() -> None:
    """List and draw the spurious patterns."""


@patterns_group.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print the patterns (name, aliases, description, source) as JSON.")
def patterns_list(as_json: bool) -> None:
    """List patterns with their paper names (aliases)."""
    entries = registry("patterns").entries()
    if as_json:
        echo_json([{"name": e.name, "aliases": list(e.aliases), "description": e.description,
                    "source": e.source} for e in entries])
        return
    table = Table("name", "aliases", "description")
    for entry in entries:
        table.add_row(entry.name, ", ".join(entry.aliases), entry.description)
    print_table(table)


@patterns_group.command("show")
@click.argument("pattern")
@click.option("--dataset", default="mnist", show_default=True, help="Dataset to draw images from.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Dataset seed, the spec's last number: it draws the noise image of "
                   "random patterns.")
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
        echo_json(summary)
        return
    table = Table("field", "value", title=f"spurious dataset {spec.name}")
    for key, value in summary.items():
        table.add_row(key, str(value))
    print_table(table)


COMMANDS = [patterns_group, data_group]
