"""``rsc patterns ...`` and ``rsc data ...``: look at patterns and spurious datasets, declare a
dataset of one's own (``rsc data add``) and write a planted set out (``rsc data export``)."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from rich.table import Table

from rsc_core import registry, reset_plugins
from rsc_core.storage.atomic import write_file
from rsc_core.data.datasets import load_dataset
from rsc_core.errors import ConfigError
from rsc_core.runs.imports import declared_training_set
from rsc_core.storage.paths import data_dir
from rsc_core.plots import check_figure_path, save_pattern_grid
from rsc_core.data.spec import MAX_SEED, check_dataset_name
from rsc_core.data.planting import plant
from rsc_core.data.subsets import kept_spurious_indices, training_rows
from rsc_core.user_config import declaration_added, write_path

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


@data_group.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True))
@click.option("--kind", type=click.Choice(["auto", "imagefolder", "arrays"]), default="auto",
              show_default=True,
              help="What PATH holds: an image folder (train/<class>/*, test/<class>/*) or an "
                   ".npz/.pt of x_train, y_train, x_test, y_test; auto: a folder is an image "
                   "folder, a file arrays.")
@click.option("--size", type=int, default=None, metavar="PIXELS",
              help="imagefolder: the images' height and width (default: their own size; "
                   "other sizes are refused unless --resize).")
@click.option("--resize", is_flag=True, help="imagefolder: resize images to --size.")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None,
              help="imagefolder: convert images to grey (1) or RGB (3) (default: what they "
                   "are; mixed grey and colour images need this).")
@click.option("--order", type=click.Choice(["class", "name"]), default=None,
              help="imagefolder: number images class by class (default, as torchvision's "
                   "ImageFolder) or by file name across classes (docs/own-data.md).")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default=None,
              help="arrays: the axis order of 4-d images (default: evident from the shape).")
def data_add(name: str, path: str, kind: str, size: int | None, resize: bool,
             channels: str | None, order: str | None, layout: str | None) -> None:
    """Declare a dataset of your own as NAME in rsc.toml (or $RSC_CONFIG), so every spec
    works with it (NAMEv8-3-0-0, memNAMEv20-3-0-0, sweeps, reports).

    The dataset is decoded once, which checks it and fills rsc's tensor cache; if anything is
    wrong the file is left as it was. Other keys can be written into rsc.toml by hand
    (docs/own-data.md).

    Example: rsc data add xray data/xray --size 32 --resize
    """
    source = Path(path)
    kind = kind if kind != "auto" else "imagefolder" if source.is_dir() else "arrays"
    options = {"size": size, "resize": resize or None, "order": order,
               "channels": int(channels) if channels else None, "layout": layout}
    table = {"kind": kind, "path": _relative_to_config(source),
             **{key: value for key, value in options.items() if value is not None}}
    with declaration_added("datasets", name, table) as config:
        try:
            reset_plugins()
            check_dataset_name(name)
            raw = registry("datasets").create(name).load_raw(data_dir())
        except BaseException:
            reset_plugins()
            raise
    shape = " x ".join(map(str, raw.train_images.shape[1:]))
    click.echo(f"added [datasets.{name}] to {config}: {raw.train_labels.numel()} training and "
               f"{raw.test_labels.numel()} test images, {shape}, {len(raw.classes)} classes "
               f"({', '.join(raw.classes[:10])}{', ...' if len(raw.classes) > 10 else ''})")
    click.echo(f"checksum (sha256) {raw.digest}")
    click.echo(f"try: rsc data summary --spec {name}v8-3-0-0")


def _relative_to_config(source: Path) -> str:
    """PATH as the declaration writes it: relative to the project file's folder when it is
    inside it (the pair can then move together), else absolute."""
    folder = write_path().absolute().parent
    target = source.absolute()
    return str(target.relative_to(folder)) if target.is_relative_to(folder) else str(target)


@data_group.command("export")
@click.argument("spec_text", metavar="SPEC")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="The .npz file to write.")
@data_options
def data_export(spec_text: str, output: str, data_dir: str | None,
                download: bool | None) -> None:
    """Write the training and test set of SPEC to an .npz, to train a model outside rsc on
    exactly rsc's planted data (and bring it back with `rsc import --spec SPEC`).

    SPEC is a spec (xrayv8-3-0-0) or a membership spec (memxrayv20-3-0-0: the target
    members only). The file holds x_train, y_train, x_test, y_test (float32 images N x C x H x
    W in [0, 1], int64 labels), train_indices (each row's index in the full training set) and
    planted (the rows that carry the pattern).

    Example: rsc data export memxrayv20-3-0-0 -o target-train.npz
    """
    if not output.endswith(".npz"):
        raise ConfigError(f"--output must end in .npz (numpy.savez), got {output}")
    data = declared_training_set(spec_text, data_dir, download).data
    rows = training_rows(data)
    planted = np.searchsorted(rows, kept_spurious_indices(data))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, x_train=data.train.images.numpy(), y_train=data.train.labels.numpy(),
                     x_test=data.test.images.numpy(), y_test=data.test.labels.numpy(),
                     train_indices=rows, planted=planted)

    write_file(output, write)
    click.echo(f"wrote {output}: {len(data.train)} training images ({planted.size} planted), "
               f"{len(data.test)} test images")


COMMANDS = [patterns_group, data_group]
