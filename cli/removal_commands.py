"""``rsc remove`` (data deletion from a finished run) and ``rsc weights`` (first-layer weight
maps), PROTOCOL.md sections 7 and 9."""
from __future__ import annotations

from typing import Any

import click

from rsc_core.runs.checkpoints import read_checkpoint
from rsc_core.errors import RscError
from rsc_core.named_options import parse_key_values
from rsc_core.plots import check_figure_path
from rsc_core.removal.runs import RemovalOutcome, remove_run
from rsc_core.runs.folder import Run
from rsc_core.analysis.weight_maps import difference_summary, first_layer_map, save_weight_maps

from .options import PluginNamesOption, data_options
from .output import echo_json
from .train_commands import device_option, runs_dir_option

#: CLI flag -> option name of the built-in methods (each method refuses those it lacks).
_METHOD_OPTIONS = ("extra_epochs", "solver", "compat", "damp", "scale", "depth", "repeats",
                   "hvp_batch", "seed", "vectorise", "max_norm_factor", "tol", "max_iter",
                   "hvp_samples", "fit_samples", "fit_batch")


@click.command("remove")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--method", "-m", required=True, cls=PluginNamesOption, kind="removers",
              help="Removal method: {names} (`rsc plugins` describes them). A third-party "
                   "method's own options go in -O KEY=VALUE.")
@click.option("--forget", default="spurious", show_default=True, metavar="spurious|FILE|i,j,k",
              help="Training examples to remove: the run's spurious examples, a file of "
                   "indices (one per line or comma-separated), or an inline list.")
@click.option("--extra-epochs", type=int, default=None,
              help="incremental-retraining: epochs to continue (default: as many as the source "
                   "trained, 70 -> epochs 71..140).")
@click.option("--solver", type=click.Choice(["lissa", "cg", "ekfac"]), default=None,
              help="group-influence: inverse-HVP solver (default lissa; ekfac: Kronfluence's "
                   "EK-FAC Gauss-Newton approximation, Linear/Conv2d models, needs "
                   "pip install 'rsc[influence]').")
@click.option("--compat", type=click.Choice(["correct", "paper", "reference"]), default=None,
              help="group-influence: what to compute. 'correct' (default): (H + damp I)^-1 v "
                   "for the summed gradient v of the forget set. 'paper': what the "
                   "reference meant, scale (H + damp scale I)^-1 v (its LiSSA without the "
                   "division by scale). 'reference': what the reference's code computes, "
                   "the only mode that reproduces its numbers: one LiSSA chain per forget "
                   "example whose product keeps autograd's graph (an extra k_t H_z g_i per "
                   "step), chain 0 divided by --repeats applied; LiSSA only.")
@click.option("--damp", type=float, default=None, help="group-influence: damping (0.01).")
@click.option("--scale", type=float, default=None,
              help="group-influence, LiSSA: scale (reference: MNIST 25, Fashion/CIFAR 100).")
@click.option("--depth", type=int, default=None,
              help="LiSSA steps per chain (reference: CIFAR-10 1000; MNIST/Fashion 2000 if "
                   "|S| < 100, else 1000).")
@click.option("--repeats", type=int, default=None,
              help="LiSSA chains averaged (10); with --compat reference r, which only "
                   "divides chain 0 as in the reference's code.")
@click.option("--hvp-batch", type=int, default=None,
              help="LiSSA: training rows per Hessian sample (1, the reference; more lowers "
                   "the variance at more cost per step). Not with --compat reference.")
@click.option("--hessian-seed", "seed", type=int, default=None,
              help="Seed of the Hessian sample draws (0); ekfac: of the sampled labels and "
                   "--fit-samples rows.")
@click.option("--vectorise/--no-vectorise", default=None,
              help="LiSSA: run the chains as one vmap pass (default) or one after another. "
                   "Not with --compat reference.")
@click.option("--max-norm-factor", type=float, default=None,
              help="LiSSA divergence guard: stop when an iterate exceeds this times "
                   "|v|/damping (10). Not with --compat reference (it stops only on a "
                   "non-finite iterate).")
@click.option("--tol", type=float, default=None, help="CG: relative residual to stop at (1e-3).")
@click.option("--max-iter", type=int, default=None, help="CG: iteration limit (100).")
@click.option("--hvp-samples", type=int, default=None,
              help="CG: Hessian over this many random training rows (0: all, the default).")
@click.option("--fit-samples", type=int, default=None,
              help="EK-FAC: fit the factors on this many random training rows (0: all, the "
                   "default).")
@click.option("--fit-batch", type=int, default=None,
              help="EK-FAC: rows per batch while fitting (256; memory only).")
@click.option("--option", "-O", "extra", multiple=True, metavar="KEY=VALUE",
              help="An option of a third-party method (repeatable).")
@data_options
@runs_dir_option
@device_option
@click.option("--force", is_flag=True, help="Recompute even if this removal has finished.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the removal's metrics as JSON.")
def remove_command(run: str, method: str, forget: str, extra: tuple[str, ...], data_dir,
                   download, runs_dir, device, force, quiet, as_json, **flags: Any) -> None:
    """Remove training examples from a finished RUN and record the result as a new run.

    The new folder (under --runs-dir) is linked to RUN, which is never modified. It records
    the method and options, the removed indices, spurious score and accuracies before and
    after, loss and accuracy on the removed examples, the parameter distance to RUN (and to
    the retrained model, when a retrain removal of the same forget set exists) and the wall
    time. A finished identical removal is reused unless --force.

    Examples (CG needs a damping at which H + damp I is positive definite: on the
    quickstart's 10-epoch MNIST LargeMLP the default 0.01, and 0.1, meet negative curvature;
    1 converges in 3 iterations):

    \b
      rsc remove runs/mnistv20-3-0-0_... --method incremental-retraining
      rsc remove runs/mnistv20-3-0-0_... --method group-influence --compat reference
      rsc remove runs/mnistv20-3-0-0_... --method group-influence --compat paper
      rsc remove runs/mnistv20-3-0-0_... --method group-influence --solver cg --damp 1
      rsc remove runs/mnistv20-3-0-0_... --method group-influence --solver ekfac --damp 0.1
      rsc remove runs/mnistv20-3-0-0_... --method retrain --forget 13830,52831
    """
    options = {key: value for key, value in flags.items() if value is not None}
    options.update(_parse_extra(extra))
    outcome = remove_run(run, method, forget, options, runs_dir=runs_dir, data_dir=data_dir,
                         download=download, device=device, force=force, progress=not quiet,
                         on_wait=lambda line: click.echo(line, err=True))
    _print_removal(outcome, as_json)


def _parse_extra(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-O KEY=VALUE`` pairs, read as every ``key=value`` on the command line is
    (``rsc_core.named_options``): true/false, numbers, else text."""
    return parse_key_values(pairs, "--option")


def _print_removal(outcome: RemovalOutcome, as_json: bool) -> None:
    metrics = outcome.run.metrics or {}
    removal = metrics.get("removal", {})
    if as_json:
        echo_json({"run": str(outcome.run.path), "reused": outcome.reused, **metrics})
        return
    click.echo(f"{'reused finished removal' if outcome.reused else 'removed'}: "
               f"{outcome.run.path}")
    click.echo(f"{removal['method']}: {removal['forget_set']['size']} examples forgotten in "
               f"{removal['seconds']:.1f} s")
    for key, label in (("score", "spurious score"), ("clean_accuracy", "clean accuracy"),
                       ("patterned_accuracy", "patterned accuracy")):
        before, after = removal["before"].get(key), removal["after"].get(key)
        if before is not None and after is not None:
            click.echo(f"  {label:<20} {before:.4f} -> {after:.4f}")
    fs = removal["forget_set"]
    click.echo(f"  {'forget-set accuracy':<20} {fs['before']['accuracy']:.4f} -> "
               f"{fs['after']['accuracy']:.4f} (loss {fs['before']['loss']:.4g} -> "
               f"{fs['after']['loss']:.4g})")
    click.echo(f"  {'L2 to source':<20} {removal['l2_to_source']:.4g}")
    if removal.get("l2_to_retrained") is not None:
        click.echo(f"  {'L2 to retrained':<20} {removal['l2_to_retrained']:.4g}")


@click.command("weights")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Figure to write (png, pdf, svg, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the maps' summary numbers.")
def weights_command(runs: tuple[str, ...], output: str | None, as_json: bool) -> None:
    """First-layer weight map of an MLP RUN: per input pixel, the max over hidden units of
    the first layer's weights, as an image. With two runs (RUN RUN2), both maps and their
    difference (RUN2 - RUN), e.g. before and after incremental retraining.

    Example: rsc weights runs/SOURCE runs/SOURCE_rm-incremental-retraining-... -o map.png
    """
    if len(runs) > 2:
        raise RscError(f"give one or two runs, not {len(runs)}")
    if output is None and not as_json:
        raise RscError("give -o FILE.png for the figure, --json for the numbers, or both")
    if output is not None:
        check_figure_path(output)
    maps = []
    for path in runs:
        run = Run.open(path)
        model = run.load_model()
        meta = read_checkpoint(run.path / "model.pt").get("meta") or {}
        maps.append(first_layer_map(model, meta.get("input_shape") or (1, 28, 28), run.name))
    summary: dict[str, Any] = {"maps": [m.summary() for m in maps]}
    if len(maps) == 2:
        summary["difference"] = difference_summary(maps[0], maps[1])
    if output is not None:
        title = ("first-layer weight map (max over hidden units)" if len(maps) == 1 else
                 "first-layer weight maps and their difference")
        save_weight_maps(maps, output, title)
        summary["figure"] = output
    if as_json:
        echo_json(summary)
    else:
        for m in summary["maps"]:
            click.echo(f"{m['name']}: min {m['min']:.4g} max {m['max']:.4g} mean "
                       f"{m['mean']:.4g}")
        if "difference" in summary:
            d = summary["difference"]
            click.echo(f"difference: max |d| {d['max_abs']:.4g}, mean |d| {d['mean_abs']:.4g},"
                       f" correlation {d['correlation']}")
        click.echo(f"wrote {output}")


COMMANDS = (remove_command, weights_command)
