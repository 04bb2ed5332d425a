"""``rsc quickstart``: the study's central experiment end to end on MNIST, small enough for a
laptop: a clean baseline and S3 (v8) with n = 3 at target 0, seed 0, LargeMLP with the default
recipe; prints the score table and writes a PNG of score and accuracy against n."""
from __future__ import annotations

import click
from rich.console import Console

from rsc_core import registry
from rsc_core.compare import compare_runs
from rsc_core.plots import check_figure_path, save_comparison_plot
from rsc_core.runs import resolve_device, train_run
from rsc_core.spec import SpuriousSpec
from rsc_core.training import TrainConfig

from .options import data_options
from .train_commands import print_comparison

PAPER_EPOCHS = 70


@click.command("quickstart")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True,
              help=f"Epochs per run (the paper trains {PAPER_EPOCHS}).")
@click.option("--pattern", default="s3", show_default=True, help="Pattern to plant.")
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
              help="Executor that runs the training jobs.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@data_options
def quickstart_command(epochs, pattern, ns, target, seed, runs_dir, output, executor, device,
                       quiet, data_dir, download) -> None:
    """Run the central experiment on MNIST: clean baseline vs S3 with n = 3 (target 0).

    Finished runs are reused, so a second call only prints the table again.
    """
    # Minutes of training must not end in an error a glance at the options could find.
    check_figure_path(output)
    resolve_device(device)
    console = Console()
    if epochs < PAPER_EPOCHS:
        console.print(f"[yellow]note:[/yellow] {epochs} epochs per run to finish in minutes on "
                      f"a CPU; the paper trains {PAPER_EPOCHS} (use --epochs {PAPER_EPOCHS}).")
    config = TrainConfig(arch="LargeMLP", optimizer="adam", lr=0.01, batch_size=128,
                         epochs=epochs, seed=0)
    specs = [SpuriousSpec.build("mnist")] + [
        SpuriousSpec.build("mnist", pattern, n, (target,), seed) for n in (ns or (3,))]
    runner = registry("executors").create(executor)

    def job(spec: SpuriousSpec):
        console.print(f"training {spec.name} ({config.model_spec.name}, {epochs} epochs)")
        return train_run(spec, config, runs_dir=runs_dir, data_dir=data_dir, download=download,
                         progress=not quiet, device=device).run

    runs = runner.map(job, specs)
    comparison = compare_runs(runs[1:], runs[:1], data_dir=data_dir, device=device)
    print_comparison(comparison, console)
    title = f"MNIST, LargeMLP, {comparison.pattern}, target {target}, {epochs} epochs"
    path = save_comparison_plot([r.as_dict() for r in comparison.rows], title, output)
    console.print(f"wrote {path}; runs are in {runs[0].path.parent}")


COMMANDS = [quickstart_command]
