"""Figures rsc writes, through matplotlib's Agg backend (no display needed), in any format
matplotlib can write, chosen by the file's extension (PNG when there is none).

``check_figure_path`` validates an output path before any work is done (a command that trains
for minutes must not fail at its last step on a typo); figures are written atomically, so a
full disk never leaves a half-written image."""
from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402

from rsc_core.storage.atomic import write_file  # noqa: E402
from rsc_core.errors import ConfigError  # noqa: E402


def supported_formats() -> list[str]:
    """The extensions matplotlib can write (png, pdf, svg, jpg, ...), sorted."""
    return sorted(FigureCanvasBase.get_supported_filetypes())


def figure_format(path: str | Path) -> str:
    """The format a figure path asks for: its extension, lower-cased, or png without one."""
    suffix = Path(path).suffix
    return suffix[1:].lower() if suffix else "png"


def check_figure_path(path: str | Path) -> Path:
    """``path`` as a ``Path`` if a figure can be written there, else one ``ConfigError``:
    an unsupported extension, a folder, a file where a folder is needed, or a folder this
    user may not write. Missing folders are fine: they are created when the figure is saved."""
    path = Path(path)
    if figure_format(path) not in supported_formats():
        raise ConfigError(f"cannot write a figure to {path}: unsupported extension "
                          f"{path.suffix!r}; use one of {', '.join(supported_formats())}")
    if path.is_dir():
        raise ConfigError(f"cannot write a figure to {path}: it is a folder; give a file name")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        raise ConfigError(f"cannot write a figure to {path}: {folder} is a file, not a "
                          f"folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write a figure to {path}: folder {folder} is not writable; "
                          f"choose another path with -o")
    return path


def _as_picture(image: torch.Tensor):
    """C x H x W in [0, 1] -> what imshow wants (H x W grey, or H x W x 3)."""
    image = image.detach().cpu()
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Write ``fig`` atomically in the format its extension names, then close it."""
    path = check_figure_path(path)
    try:
        return write_file(path, lambda tmp: fig.savefig(tmp, format=figure_format(path),
                                                        **savefig_kwargs))
    finally:
        plt.close(fig)


def _save(fig, title: str, path: str | Path) -> Path:
    fig.suptitle(fit_title(title, fig.get_figwidth()))
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def save_pattern_grid(clean: torch.Tensor, patterned: torch.Tensor, title: str,
                      path: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Two rows: clean images above, the same images with the pattern below."""
    count = clean.shape[0]
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.6), squeeze=False)
    for column in range(count):
        for row, images in enumerate((clean, patterned)):
            axis = axes[row][column]
            axis.imshow(_as_picture(images[column]), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        if labels is not None:
            axes[0][column].set_title(labels[column], fontsize=8)
    axes[0][0].set_ylabel("clean")
    axes[1][0].set_ylabel("patterned")
    return _save(fig, title, path)


def save_comparison_plot(rows: Sequence[dict], title: str, path: str | Path) -> Path:
    """Spurious score and clean accuracy against n (error bars: SEM where available), on the
    fixed 0-1 axes both quantities live on, so a small difference never looks large; the
    title says how many runs each point pools."""
    import math

    ns = [row["n"] for row in rows]
    counts = sorted({int(row.get("runs", 1)) for row in rows})
    runs = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    title = f"{title}, {runs} run(s) per point"
    positions = list(range(len(ns)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    for axis, key, label in ((left, "score", "spurious score"),
                             (right, "clean_accuracy", "clean test accuracy")):
        means = [row[f"{key}_mean"] for row in rows]
        sems = [0.0 if math.isnan(row[f"{key}_sem"]) else row[f"{key}_sem"] for row in rows]
        axis.errorbar(positions, means, yerr=sems, marker="o", capsize=3)
        axis.set_xticks(positions, [str(n) for n in ns])
        axis.set_xlabel("number of spurious examples n")
        axis.set_ylabel(label)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    return _save(fig, title, path)


@dataclass(frozen=True)
class Curve:
    """One line of an against-n figure: a mean per n with its SEM (NaN: one run, no bar)
    and how many runs each point pools."""

    label: str
    ns: Sequence[int]
    means: Sequence[float]
    sems: Sequence[float]
    runs: Sequence[int]


@dataclass(frozen=True)
class Panel:
    """One axis of curves against n. ``zoom``: also draw it again beside, with the y axis
    fitted to the data and labelled as zoomed (clean accuracy, flat on a 0-1 axis)."""

    title: str
    ylabel: str
    curves: Sequence[Curve]
    legend: str = "best"  # matplotlib's legend location
    zoom: bool = False


#: How figures against n place n = 0 on a log axis: matplotlib's symlog scale, linear on
#: [0, 1] and logarithmic above, so the clean model (n = 0) sits at 0 beside n = 1, 3, 10...
N_AXIS_CAPTION = ("n on a symmetric-log axis (linear from 0 to 1, logarithmic above), so the "
                  "clean model at n = 0 (open marker) has a place on it; error bars: SEM over "
                  "runs")


def runs_text(counts: Sequence[int]) -> str:
    counts = sorted(set(int(c) for c in counts))
    if not counts:
        return "0"
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def _draw_n_axis(axis, panel: Panel, zoomed: bool = False) -> None:
    ns_all: set[int] = set()
    for index, curve in enumerate(panel.curves):
        color = f"C{index % 10}"
        sems = [0.0 if s is None or s != s else s for s in curve.sems]
        axis.errorbar(curve.ns, curve.means, yerr=sems, marker="o", capsize=3, color=color,
                      label=curve.label)
        zero = [i for i, n in enumerate(curve.ns) if n == 0]
        if zero:
            axis.plot([0] * len(zero), [curve.means[i] for i in zero], marker="o",
                      linestyle="none", markerfacecolor="white", markeredgecolor=color,
                      zorder=3)
        ns_all.update(int(n) for n in curve.ns)
    axis.set_xscale("symlog", linthresh=1, linscale=0.5)
    ticks = sorted(ns_all)
    axis.set_xticks(ticks, [str(n) for n in ticks])
    axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axis.set_xlim(-0.25, max(ticks + [1]) * 1.6)
    axis.set_xlabel("number of spurious training examples n")
    if zoomed:
        low, high = zoom_limits([(m, s) for c in panel.curves for m, s in zip(c.means, c.sems)])
        axis.set_ylim(low, high)
        axis.set_ylabel(f"{panel.ylabel} (zoomed)")
        axis.set_title(f"{panel.title}: zoomed")  # the ticks give the range
    else:
        axis.set_ylim(0, 1)
        axis.set_ylabel(panel.ylabel)
        axis.set_title(panel.title)
    axis.grid(alpha=0.3)
    if panel.curves:
        axis.legend(fontsize=8, loc=panel.legend)


def zoom_limits(points: Sequence[tuple[float, float | None]]) -> tuple[float, float]:
    """A y range that shows ``(mean, sem)`` points with their error bars and a margin, inside
    [0, 1]: what a zoomed panel of accuracies spans."""
    values = []
    for mean, sem in points:
        if mean is None or mean != mean:
            continue
        bar = 0.0 if sem is None or sem != sem else sem
        values += [mean - bar, mean + bar]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    margin = max(0.1 * (high - low), 0.005)
    return max(0.0, low - margin), min(1.0, high + margin)


def fit_title(title: str, width_inches: float, font_size: float = 10) -> str:
    """``title`` with each line wrapped to the figure's width (about 11 characters per inch
    at font size 10) at spaces only, so that a long recipe is never cut off at the edges and
    never split inside a word: ``ce-tor-LargeMLP`` or a run folder's name stays whole, even
    when it is longer than a line."""
    width = max(20, int(11 * width_inches * 10 / font_size))
    return "\n".join(textwrap.fill(line, width, break_long_words=False,
                                    break_on_hyphens=False)
                     for line in title.splitlines())


def build_n_figure(panels: Sequence[Panel], title: str):
    """The figure ``save_n_curves`` writes (returned open, for inspection); the title gets
    the number of runs per point and the meaning of the error bars appended."""
    counts = [r for panel in panels for curve in panel.curves for r in curve.runs]
    bars = "error bars: SEM" if max(counts, default=1) > 1 else "no error bars"
    title = f"{title}\n{runs_text(counts)} run(s) per point, {bars}"
    drawn = [(panel, zoomed) for panel in panels
             for zoomed in ((False, True) if panel.zoom else (False,))]
    width = max(6.4, 4.6 * len(drawn))
    fig, axes = plt.subplots(1, len(drawn), figsize=(width, 3.9 + 0.15 * title.count("\n")),
                             squeeze=False)
    for axis, (panel, zoomed) in zip(axes[0], drawn):
        _draw_n_axis(axis, panel, zoomed)
    fig.suptitle(fit_title(title, width), fontsize=10)
    fig.tight_layout()
    return fig


def save_n_curves(panels: Sequence[Panel], title: str, paths: Sequence[str | Path]) -> list[Path]:
    """Curves against n, one panel each (fixed 0-1 y axes, SEM error bars, n = 0 placed as
    ``N_AXIS_CAPTION`` says; a ``zoom`` panel also zoomed), written to every path in
    ``paths`` (PNG, PDF, ...)."""
    return save_to_all(build_n_figure(panels, title), paths)


def save_to_all(fig, paths: Sequence[str | Path]) -> list[Path]:
    """Write ``fig`` to every path (its extension picks the format), atomically; close it."""
    written = []
    try:
        paths = [check_figure_path(p) for p in paths]
        for path in paths:
            written.append(write_file(path, lambda tmp, p=path: fig.savefig(
                tmp, format=figure_format(p), dpi=100)))
    finally:
        plt.close(fig)
    return written


def save_probability_curves(curves: Sequence[tuple[str, Sequence[float], Sequence[float],
                                                    Sequence[float]]],
                            title: str, xlabel: str, ylabel: str, path: str | Path) -> Path:
    """Mean curves with SEM error bars, ``(label, x, mean, sem)`` each, on fixed 0-1 axes."""
    import numpy as np

    fig, axis = plt.subplots(figsize=(6.4, 4.4))
    for index, (label, x, mean, sem) in enumerate(curves):
        x, mean, sem = np.asarray(x), np.asarray(mean), np.asarray(sem)
        axis.errorbar(x, mean, yerr=sem, color=f"C{index % 10}", marker=".", capsize=2,
                      label=label)
    axis.set_ylim(0, 1)
    axis.set_xlim(0, 1)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    fig.suptitle(fit_title(title, fig.get_figwidth()), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


@dataclass(frozen=True)
class BeforeAfter:
    """One removal variant in a before/after figure: (mean, SEM) of the spurious score and
    clean accuracy of its source runs (before) and of the removal runs (after)."""

    panel: str  # e.g. "mnist v20 (R3), n = 3": one panel per dataset, pattern and n
    label: str  # the variant
    runs: int
    score: tuple[tuple[float, float], tuple[float, float]]  # (before, after)
    clean: tuple[tuple[float, float], tuple[float, float]]


def build_before_after(points: Sequence[BeforeAfter], title: str):
    """All removal variants in one figure: a column per panel, the spurious score on a fixed
    0-1 axis above the clean accuracy on a zoomed axis (labelled so); per variant, the source
    runs (open grey marker) joined to the removal runs (filled marker), SEM error bars."""
    panels = list(dict.fromkeys(p.panel for p in points))
    width = max(6.4, 1.2 + sum(1.0 + 1.15 * sum(p.panel == name for p in points)
                               for name in panels))
    fig, axes = plt.subplots(2, len(panels), figsize=(width, 7.4), squeeze=False)
    for column, name in enumerate(panels):
        mine = [p for p in points if p.panel == name]
        for row, (key, ylabel) in enumerate((("score", "spurious score"),
                                             ("clean", "clean test accuracy"))):
            _draw_before_after(axes[row][column], mine, key)
            if row == 0:
                axes[row][column].set_ylim(0, 1)
                axes[row][column].set_title(fit_title(name, width / len(panels)), fontsize=10)
                axes[row][column].set_ylabel(ylabel)
            else:
                low, high = zoom_limits([pair for p in mine for pair in p.clean])
                axes[row][column].set_ylim(low, high)
                axes[row][column].set_ylabel(f"{ylabel} (zoomed)")
                axes[row][column].set_title("zoomed (the y axis does not start at 0)",
                                            fontsize=9)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(fit_title(title, width), fontsize=10)
    fig.tight_layout()
    return fig


def _draw_before_after(axis, points: Sequence[BeforeAfter], key: str) -> None:
    for index, point in enumerate(points):
        (before, before_sem), (after, after_sem) = getattr(point, key)
        bars = [0.0 if s is None or s != s else s for s in (before_sem, after_sem)]
        axis.plot([index - 0.15, index + 0.15], [before, after], color="grey", linewidth=0.8)
        axis.errorbar([index - 0.15], [before], yerr=[bars[0]], marker="o", capsize=3,
                      color="grey", markerfacecolor="white", linestyle="none",
                      label="before: the source runs" if index == 0 else None)
        axis.errorbar([index + 0.15], [after], yerr=[bars[1]], marker="o", capsize=3,
                      color="C0", linestyle="none",
                      label="after the removal" if index == 0 else None)
    axis.set_xticks(range(len(points)), [textwrap.fill(p.label, 16, break_long_words=False)
                                         for p in points], fontsize=7)
    axis.set_xlim(-0.6, len(points) - 0.4)
    axis.grid(alpha=0.3, axis="y")


def save_before_after(points: Sequence[BeforeAfter], title: str,
                      paths: Sequence[str | Path]) -> list[Path]:
    """``build_before_after`` written to every path in ``paths``."""
    return save_to_all(build_before_after(points, title), paths)
