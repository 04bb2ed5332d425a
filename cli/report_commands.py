"""``rsc report`` (the study's figures and tables from the results index) and ``rsc
sensitivity`` (the input-sensitivity curve of PROTOCOL.md section 9)."""
from __future__ import annotations

import re
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from rsc_core.storage.atomic import write_text
from rsc_core.errors import ConfigError
from rsc_core.plots import (N_AXIS_CAPTION, check_figure_path, runs_text, save_before_after,
    save_n_curves, save_probability_curves)
from rsc_core.reports.report import (MITIGATION_COLUMNS, SCORE_COLUMNS, Report,
    before_after_points, build_report, by_recipe, check_output_folder, curve_panels, display_rows,
    dumps, mitigation_records, report_json, score_records, to_csv, to_latex, to_markdown,
    write_folder)
from rsc_core.runs.index import WHERE_HELP, list_runs
from rsc_core.runs.folder import Run, resolve_device
from rsc_core.evaluation.spurious_score import DEFAULT_THRESHOLD
from rsc_core.analysis.sensitivity import DEFAULT_IMAGES, DEFAULT_STEPS, sensitivity_curve

from .options import data_options, old_spelling
from .output import echo_json, table_console
from .train_commands import device_option, print_comparison, runs_dir_option


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", text).strip("-")


def curve_groups(report: Report) -> list:
    """The groups drawn against n: trained runs. Removal runs are drawn before and after,
    all variants in one figure (``removals.png``), not as one-point curves of their own."""
    return [g for g in report.groups if not g.removal]


def figure_stems(report: Report) -> dict[str, str]:
    """File stem per recipe: ``score-vs-n`` alone, or with the recipe when several."""
    recipes = list(by_recipe(curve_groups(report)))
    if len(recipes) == 1:
        return {recipes[0]: ""}
    return {recipe: "_" + _slug(recipe) for recipe in recipes}


TABLE_FORMATS = ("csv", "md", "tex")


def _write_table(folder: Path, stem: str, records, columns, caption: str) -> str:
    """One table as CSV, Markdown and LaTeX files; returns the Markdown for the report."""
    headers, cells = display_rows(records, columns)
    markdown = to_markdown(headers, cells)
    write_text(folder / f"{stem}.csv", to_csv(records, columns))
    write_text(folder / f"{stem}.md", markdown)
    write_text(folder / f"{stem}.tex", to_latex(headers, cells, caption))
    return markdown


def write_report(report: Report, folder: Path, title: str) -> list[str]:
    """Every figure and table of ``report`` into ``folder``; returns the files written."""
    files: list[str] = []
    markdown = [f"# {title}", ""]
    stems = figure_stems(report)
    for recipe, groups in by_recipe(curve_groups(report)).items():
        epochs = sorted({g.epochs for g in groups})
        what = f"{recipe}, {'/'.join(map(str, epochs))} epochs"
        for quantity, name, label in (("score", "score-vs-n", "Spurious score"),
                                      ("clean_accuracy", "clean-accuracy-vs-n",
                                       "Clean test accuracy")):
            panels = curve_panels(groups, quantity)
            stem = f"{name}{stems[recipe]}"
            save_n_curves(panels, f"{label} vs n: {what}",
                          [folder / f"{stem}.png", folder / f"{stem}.pdf"])
            files += [f"{stem}.png", f"{stem}.pdf"]
            counts = [r for p in panels for c in p.curves for r in c.runs]
            markdown += [f"![{label} vs n]({stem}.png)", "",
                         f"*{label} against n, {what}; one panel per dataset, one curve per "
                         f"pattern{ZOOM_CAPTION if quantity != 'score' else ''}; "
                         f"{runs_text(counts)} run(s) per point. {N_AXIS_CAPTION}.* "
                         f"([PDF]({stem}.pdf))", ""]
    if report.removals:
        files += _write_removal_figure(report, folder, markdown)
    caption = (f"Spurious score (threshold {report.threshold:g}"
               f"{', test images with y != target' if report.exclude_target else ''}), clean "
               f"and patterned accuracy (y != target): mean ± SEM over runs; p: one-sided "
               f"Welch t-test of the pooled per-image indicators against the clean baseline "
               f"(n = 0) of the same recipe; seeds: the seed protocol pooled.")
    table = _write_table(folder, "scores", score_records(report), SCORE_COLUMNS, caption)
    files += [f"scores.{ext}" for ext in TABLE_FORMATS]
    markdown += ["## Scores", "", caption, "", table]
    if report.mitigations:
        m_caption = ("Mitigations: spurious score and clean accuracy averaged over the n "
                     "values listed (including the clean n = 0 runs of that recipe where "
                     "present), ± the SEM of that average.")
        table = _write_table(folder, "mitigations", mitigation_records(report),
                             MITIGATION_COLUMNS, m_caption)
        files += [f"mitigations.{ext}" for ext in TABLE_FORMATS]
        markdown += ["## Mitigations", "", m_caption, "", table]
    if report.notes:
        markdown += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    markdown += ["## Runs", ""]
    for group in report.groups:
        seeds = group.comparison.seeds.description if group.comparison.seeds else ""
        markdown.append(f"- {group.label}: {len(group.runs)} run(s), baseline "
                        f"{len(group.baseline)} clean run(s); seeds: {seeds}")
    write_text(folder / "report.md", "\n".join(markdown) + "\n")
    write_text(folder / "report.json", dumps(report_json(report)))
    return files + ["report.md", "report.json"]


ZOOM_CAPTION = (", each beside the same panel zoomed to the data (its y axis does not start "
                "at 0)")


def _write_removal_figure(report: Report, folder: Path, markdown: list[str]) -> list[str]:
    """Every removal variant before and after, in one figure (``removals.png``, ``.pdf``)."""
    points = before_after_points(report)
    epochs = "/".join(str(e) for e in sorted({g.epochs for g in report.groups if g.removal}))
    recipes = "; ".join(sorted({r.source_recipe for r in report.removals}))
    what = (f"{len({p.label for p in points})} removal variant(s) of runs trained with "
            f"{recipes}, {epochs} epochs; {runs_text([p.runs for p in points])} run(s) per "
            f"point")
    save_before_after(points, f"Before and after removal: {what}, error bars: SEM",
                      [folder / "removals.png", folder / "removals.pdf"])
    markdown += ["![Before and after removal](removals.png)", "",
                 f"*Spurious score (fixed 0-1 axis) and clean test accuracy (zoomed axis) of "
                 f"each removal's source runs (open grey markers) and of the removal runs "
                 f"(filled), per variant, scored alike; {what}; error bars: SEM over "
                 f"seeds.* ([PDF](removals.pdf))", ""]
    return ["removals.png", "removals.pdf"]


def print_report(report: Report, console: Console) -> None:
    """One table per pooled group (the same table as ``rsc compare``), then the mitigations
    and the notes."""
    for group in report.groups:
        console.print(f"[bold]{group.dataset}[/bold], {group.recipe}", soft_wrap=True,
                      highlight=False)
        print_comparison(group.comparison, console)
    if report.mitigations:
        m_headers, m_cells = display_rows(mitigation_records(report), MITIGATION_COLUMNS)
        table = Table(*m_headers, title="mitigations (averaged over n)")
        for row in m_cells:
            table.add_row(*row)
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", soft_wrap=True, highlight=False, markup=False)


@click.command("report")
@click.option("--where", "where", default=None, metavar="EXPR",
              help=f"Only runs matching EXPR ({WHERE_HELP}).")
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Folder for the figures (PNG, PDF) and tables (Markdown, CSV, LaTeX); "
                   "an earlier report there is replaced.")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="Probability rise that counts as spurious.")
@click.option("--exclude-target", is_flag=True, help="Score only test images with y != target.")
@click.option("--title", default="rsc report", show_default=True, help="Heading of report.md.")
@runs_dir_option
@data_options
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report_command(where, output, threshold, exclude_target, title, runs_dir, data_dir,
                   download, device, as_json) -> None:
    """The study's figures and tables from the results index: score-vs-n and clean-accuracy
    curves (one panel per dataset, one curve per pattern, SEM error bars), the p-values
    against the clean baseline, and mitigation tables.

    Only runs that differ in nothing but their seeds are pooled: a recipe is reported on its
    own (its own figures when there are several), runs that mix seed protocols are split,
    and the notes say so. Scores not yet cached are computed (and cached), which needs the
    data."""
    folder = check_output_folder(output)
    resolve_device(device)
    report = build_report(list_runs(where, runs_dir), threshold=threshold,
                          exclude_target=exclude_target, data_dir=data_dir, device=device,
                          download=download)
    written: list[str] = []
    write_folder(folder, lambda tmp: written.extend(write_report(report, tmp, title)))
    if as_json:
        click.echo(dumps(report_json(report)), nl=False)
        return
    console = table_console()
    print_report(report, console)
    console.print(f"wrote {', '.join(written)} to {folder}", soft_wrap=True, highlight=False)


@click.command("sensitivity")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="sensitivity.png",
              show_default=True, help="Figure; its extension picks the format.")
@click.option("--images", type=int, default=DEFAULT_IMAGES, show_default=True,
              help="Training images to erase (drawn with --image-seed).")
@click.option("--steps", type=int, default=DEFAULT_STEPS, show_default=True,
              help="Fractions p evenly spaced from 0 to 1 (51: p = 0, 0.02, ..., 1).")
@click.option("--image-seed", "seed", type=int, default=0, show_default=True,
              help="Seed that draws the images and the order their pixels are erased in.")
@data_options
@device_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the curves (and the image indices used) as JSON.")
@old_spelling("--seed", "--image-seed", "seed")
def sensitivity_command(runs, output, images, steps, seed, data_dir, download, device,
                        as_json) -> None:
    """Input sensitivity of finished RUNS (PROTOCOL.md section 9): on --images training
    images, zero a fraction p of the non-zero pixels and plot the mean softmax probability
    of the true class against p (error bars: SEM over images).

    Images: RandomState(image seed).choice(N, images, replace=False) over the run's training set
    as trained; pixels: the same RandomState then permutes each image's non-zero positions,
    and the first round(p k) of them are zeroed (all channels). docs/reports.md has the
    details."""
    check_figure_path(output)
    resolve_device(device)
    if images < 1 or steps < 2:
        raise ConfigError("--images must be at least 1 and --steps at least 2")
    curves = [sensitivity_curve(Run.open(path), images=images, seed=seed, steps=steps,
                                data_dir=data_dir, download=download, device=device)
              for path in runs]
    count = len(curves[0].indices)
    epochs = "/".join(str(e) for e in sorted({c.epochs for c in curves}))
    title = (f"Input sensitivity: {len(curves)} run(s), {epochs} epochs\n{count} training "
             f"images (seed {seed}), error bars: SEM over images")
    path = save_probability_curves(
        [(c.run, c.fractions, c.mean_probability, c.sem) for c in curves], title,
        "fraction p of non-zero pixels set to 0", "mean softmax probability of the true class",
        output)
    if as_json:
        echo_json({"figure": str(path), "curves": [c.as_dict() for c in curves]})
        return
    table = Table("run", *[f"p={p:g}" for p in (0, 0.2, 0.4, 0.6, 0.8, 1)],
                  title=f"mean probability of the true class ({count} images)")
    for curve in curves:
        picks = [min(range(len(curve.fractions)), key=lambda i: abs(curve.fractions[i] - p))
                 for p in (0, 0.2, 0.4, 0.6, 0.8, 1)]
        table.add_row(curve.run, *[f"{curve.mean_probability[i]:.3f}" for i in picks])
    console = table_console()
    console.print(table)
    console.print(f"wrote {path}", soft_wrap=True, highlight=False)


COMMANDS = [report_command, sensitivity_command]
