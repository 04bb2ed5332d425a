"""``rsc quickstart``: the study's headline end to end on MNIST, small enough for a laptop: a
clean baseline, S3 (a 5x5 white corner square) and R3 (a fixed noise image) each planted in
n = 3 training images of class 0, LargeMLP with the default recipe. S3 is barely learned from
three images; R3 is learned almost perfectly, the study's striking result. Prints the score
tables and writes a figure of score and clean accuracy against n for both patterns.

With the default ``local`` executor the runs train together through the multi-model trainer
(``group_runs.train_runs``: one data load, the runs in lockstep, each written exactly as a
single run), which is faster than one after another; any other executor gets one training job
per run."""
from __future__ import annotations

import click
from rich.console import Console

from rsc_core import registry
from rsc_core.analysis.compare import Comparison, compare_runs
from rsc_core.errors import RscError
from rsc_core.runs.groups import RunRequest, train_runs
from rsc_core.plots import check_figure_path, save_n_curves
from rsc_core.reports.report import pattern_label
from rsc_core.runs.folder import Run, resolve_device
from rsc_core.runs.training import train_run
from rsc_core.data.spec import SpuriousSpec
from rsc_core.training.trainer import TrainConfig

from .options import data_options
from .output import echo_json, table_console
from .train_commands import print_comparison

PAPER_EPOCHS = 70
DEFAULT_PATTERNS = ("s3", "r3")


def headline(comparisons: list[Comparison]) -> str:
    """One line per pattern: its score at each n against the clean model's."""
    parts = []
    for comparison in comparisons:
        base = next((r for r in comparison.rows if r.n == 0), None)
        for row in (r for r in comparison.rows if r.n > 0):
            p = "" if row.p_value is None else (
                ", p < 1e-300" if row.p_value == 0 else f", p = {row.p_value:.2g}")
            clean = f" vs {base.score_mean:.3f} for the clean model" if base else ""
            parts.append(f"{pattern_label(comparison.pattern)} at n = {row.n}: spurious score "
                         f"{row.score_mean:.3f}{clean}{p}")
    return "; ".join(parts)


def _train(specs: list[SpuriousSpec], config: TrainConfig, executor: str, console: Console,
           quiet: bool, **where) -> list[Run]:
    """Train (or reuse) one run per spec: grouped on ``local``, else through the executor."""
    if executor in ("local", "sequential"):
        registry("executors").get(executor)  # still a clear error if it were unregistered
        console.print(f"training {', '.join(s.name for s in specs)} together "
                      f"({config.model_spec.name}, {config.epochs} epochs)")
        results = train_runs([RunRequest(spec, config) for spec in specs],
                             group_size=len(specs), progress=not quiet, **where)
        failed = [r for r in results if r.error is not None]
        if failed:
            raise RscError("; ".join(f"{r.request.spec.name}: {r.error}" for r in failed))
        return [r.outcome.run for r in results]
    runner = registry("executors").create(executor)

    def job(spec: SpuriousSpec) -> Run:
        console.print(f"training {spec.name} ({config.model_spec.name}, {config.epochs} "
                      f"epochs)")
        return train_run(spec, config, progress=not quiet, **where).run

    return list(runner.map(job, specs))


@click.command("quickstart")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True,
              help=f"Epochs per run (the paper trains {PAPER_EPOCHS}).")
@click.option("--pattern", "patterns", multiple=True,
              help="Pattern to plant (repeatable; default: s3 and r3).")
@click.option("-n", "--n-spurious", "ns", type=click.IntRange(1), multiple=True,
              help="Numbers of spurious examples (repeatable; default 3).")
@click.option("--target", type=int, default=0, show_default=True, help="Target class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Dataset seed.")
@click.option("--runs-dir", type=click.Path(file_okay=False), default=None,
              help="Runs root (default: RSC_RUNS_DIR, else ./runs).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="quickstart.png",
              show_default=True,
              help="Figure of score and accuracy against n; its extension picks the format.")
@click.option("--executor", default="local", show_default=True,
              help="Executor that runs the training jobs (local: all runs together in this "
                   "process).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the runs, the comparisons and the headline as JSON (the other "
                   "lines go to stderr).")
@data_options
def quickstart_command(epochs, patterns, ns, target, seed, runs_dir, output, executor, device,
                       quiet, as_json, data_dir, download) -> None:
    """The study's headline on MNIST: a clean model vs S3 and R3 with n = 3 (target 0).

    S3 (a white corner square) in three training images is barely learned; R3 (a fixed
    noise image) in three images is learned almost perfectly. Finished runs are reused, so a
    second call only prints the tables again.
    """
    # Minutes of training must not end in an error a glance at the options could find.
    check_figure_path(output)
    resolve_device(device)
    patterns = [registry("patterns").get(p).name for p in (patterns or DEFAULT_PATTERNS)]
    console = Console(stderr=True) if as_json else table_console()
    if epochs < PAPER_EPOCHS:
        console.print(f"[yellow]note:[/yellow] {epochs} epochs per run to finish in minutes on "
                      f"a CPU; the paper trains {PAPER_EPOCHS} (use --epochs {PAPER_EPOCHS}).")
    config = TrainConfig(arch="LargeMLP", optimizer="adam", lr=0.01, batch_size=128,
                         epochs=epochs, seed=0)
    ns = sorted(set(ns or (3,)))
    specs = [SpuriousSpec.build("mnist")] + [
        SpuriousSpec.build("mnist", pattern, n, (target,), seed)
        for pattern in patterns for n in ns]
    runs = _train(specs, config, executor, console, quiet, runs_dir=runs_dir,
                  data_dir=data_dir, download=download, device=device)
    clean, spurious = runs[0], runs[1:]
    comparisons = []
    for index, pattern in enumerate(patterns):
        mine = spurious[index * len(ns):(index + 1) * len(ns)]
        comparisons.append(compare_runs(mine, [clean], data_dir=data_dir, device=device))
        if not as_json:
            print_comparison(comparisons[-1], console)
    path = _figure(comparisons, target, seed, epochs, output)
    if as_json:
        echo_json({"epochs": epochs, "paper_epochs": PAPER_EPOCHS,
                   "runs": [str(run.path) for run in runs],
                   "comparisons": [c.as_dict() for c in comparisons],
                   "headline": headline(comparisons), "figure": str(path)})
        return
    console.print(headline(comparisons), soft_wrap=True, highlight=False)
    console.print(f"wrote {path}; runs are in {clean.path.parent}")


def _figure(comparisons: list[Comparison], target: int, seed: int, epochs: int, output):
    from rsc_core.plots import Curve, Panel

    panels = []
    for quantity, ylabel, legend in (("score", "spurious score", "best"),
                                     ("clean_accuracy", "clean test accuracy", "lower right")):
        curves = [Curve(pattern_label(c.pattern), [r.n for r in c.rows],
                        [getattr(r, f"{quantity}_mean") for r in c.rows],
                        [getattr(r, f"{quantity}_sem") for r in c.rows],
                        [r.runs for r in c.rows]) for c in comparisons]
        panels.append(Panel(ylabel, ylabel, curves, legend, zoom=quantity != "score"))
    title = (f"MNIST, LargeMLP, target {target}, dataset seed {seed}, {epochs} epochs: "
             f"clean model (n = 0) vs patterned")
    return save_n_curves(panels, title, [output])[0]


COMMANDS = [quickstart_command]
