"""``rsc train``, ``rsc score``, ``rsc compare`` and ``rsc quickstart``."""
from __future__ import annotations

import glob
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from rsc_core.runs.checkpoints import build_model_from_checkpoint, read_checkpoint
from rsc_core.analysis.compare import Comparison, compare_runs, runs_from_index
from rsc_core.data.datasets import load_dataset
from rsc_core.errors import RscError
from rsc_core.runs.groups import (DEFAULT_GROUP_SIZE, RunRequest, RunResult, check_group_size,
    train_runs)
from rsc_core.training.memory_format import AUTO, CHANNELS_LAST, MEMORY_FORMATS
from rsc_core.data.pattern_files import BlendPattern, read_pattern_png
from rsc_core.runs.index import WHERE_HELP
from rsc_core.runs.folder import Run, resolve_device
from rsc_core.runs.scores import score_run
from rsc_core.runs.training import TrainOutcome, train_run
from rsc_core.evaluation.spurious_score import (DEFAULT_THRESHOLD, ScoreResult, resolve_target,
    score_model)
from rsc_core.data.spec import SpuriousSpec, parse_int_list
from rsc_core.data.planting import build_spurious_dataset
from rsc_core.data.subsets import TrainSubset, read_index_list
from rsc_core.training.trainer import MAX_TRAIN_SEED

from .options import data_options, run_path, spec_options
from .output import echo_json, print_table, table_console
from .train_options import build_train_config, split_train_kwargs, train_options

runs_dir_option = click.option(
    "--runs-dir", type=click.Path(file_okay=False), default=None,
    help="Runs root (default: RSC_RUNS_DIR, else ./runs).")
device_option = click.option(
    "--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ... or auto.")


@click.command("train")
@spec_options(many=True)
@train_options
@data_options
@runs_dir_option
@device_option
@click.option("--force", is_flag=True, help="Retrain even if this exact run has finished.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--memory-format", type=click.Choice(MEMORY_FORMATS), default=AUTO,
              show_default=True,
              help="Layout of images and weights: auto = channels-last for convolutional "
                   "models (faster on CPU and GPU, equal up to rounding), contiguous (NCHW) "
                   "for MLPs. Not part of the run's identity. A group of runs trains "
                   "contiguous; channels-last trains every run alone.")
@click.option("--channels-last", is_flag=True,
              help="Same as --memory-format channels-last (kept for older scripts).")
@click.option("--json", "as_json", is_flag=True, help="Print the run's metrics as JSON.")
@click.option("--train-seed-equals-dataset-seed", "paired_seeds", is_flag=True,
              help="Use the spec's dataset seed as the training seed (the paired protocol of "
                   "rsc's earlier tables). The study instead varies only the dataset seed and "
                   "trains every model with training seed 0, rsc's default.")
@click.option("--group-size", type=int, default=DEFAULT_GROUP_SIZE, show_default=True,
              help="With several runs: how many compatible runs train at once, in lockstep, "
                   "as one batched computation (1: one after another).")
@click.option("--exclude", default=None, metavar="spurious|FILE|i,j,k",
              help="Train without these training examples (original indices): the spec's own "
                   "spurious examples, a file of indices, or an inline list. Part of the run's "
                   "identity (its folder ends _minus<count>-<digest>); the exact-retraining "
                   "baseline of `rsc remove -m retrain`.")
def train_command(specs: list[SpuriousSpec], data_dir, download, runs_dir, device, force, quiet,
                  memory_format, channels_last, as_json, paired_seeds, group_size, exclude,
                  **kwargs) -> None:
    """Train networks on (spurious) datasets and record each run.

    The run folder (under --runs-dir) is named by the spec, the recipe and a hash of the full
    configuration. An identical finished run is reused; an interrupted one resumes; a run
    being trained by another process is waited for, then reused.

    Seeds follow the study: the dataset seed (last number of the spec) picks the spurious
    images and the noise pattern; --train-seed (default 0) the initialisation and batch order.

    Several runs in one call: repeat --spec, use braces ('mnistv20-3-0-{0..4}') or give
    several training seeds (--train-seed 0-4). Compatible runs (same architecture and recipe)
    train --group-size at a time in one process, each written exactly as a single run.

    Example: rsc train --spec mnistv8-3-0-0 --model ce-tor-LargeMLP --epochs 70
    """
    train_kwargs, _ = split_train_kwargs(kwargs)
    check_group_size(group_size)
    memory_format = _memory_format(memory_format, channels_last)
    requests = _requests(specs, train_kwargs, paired_seeds)
    if exclude is not None:
        requests = [replace(r, subset=_excluded(exclude, r.spec, data_dir, download))
                    for r in requests]
    on_wait = lambda line: click.echo(line, err=True)  # noqa: E731
    if len(requests) == 1:
        request = requests[0]
        outcome = train_run(request.spec, request.config, runs_dir=runs_dir,
                            data_dir=data_dir, download=download, force=force,
                            progress=not quiet, device=device, memory_format=memory_format,
                            on_wait=on_wait, subset=request.subset)
        _print_outcome(outcome, as_json)
        return
    results = train_runs(requests, group_size=group_size, runs_dir=runs_dir,
                         data_dir=data_dir, download=download, force=force,
                         progress=not quiet, device=device, memory_format=memory_format,
                         on_wait=on_wait)
    _print_results(results, as_json)
    failed = [r for r in results if r.error is not None]
    if failed:
        raise RscError(f"{len(failed)} of {len(results)} runs failed: " + "; ".join(
            f"{r.request.spec.name} (train seed {r.request.config.seed}): {r.error}"
            for r in failed))


def _memory_format(memory_format: str, channels_last: bool) -> str:
    """``--channels-last`` is ``--memory-format channels-last``; the two must not disagree."""
    if not channels_last:
        return memory_format
    source = click.get_current_context().get_parameter_source("memory_format")
    if source is not click.core.ParameterSource.DEFAULT and memory_format != CHANNELS_LAST:
        raise RscError(f"--channels-last contradicts --memory-format {memory_format}; give "
                       f"one of them")
    return CHANNELS_LAST


def _excluded(text: str, spec: SpuriousSpec, data_dir, download) -> TrainSubset:
    """``--exclude``: the spec's planted examples (``spurious``), a file or an inline list."""
    if text.strip() == "spurious":
        if spec.is_clean:
            raise RscError(f"--exclude spurious: {spec.name} has no spurious examples; give "
                           f"training indices or a file instead")
        indices = build_spurious_dataset(spec, data_dir, download).spurious_indices.tolist()
    else:
        indices = read_index_list(text, "--exclude")
    return TrainSubset.excluding(indices)


def _requests(specs: list[SpuriousSpec], train_kwargs: dict,
              paired_seeds: bool) -> list[RunRequest]:
    """One request per (spec, training seed); the paired protocol takes each spec's seed."""
    seeds_text = train_kwargs.pop("train_seed")
    if paired_seeds:
        source = click.get_current_context().get_parameter_source("train_seed")
        if source is not click.core.ParameterSource.DEFAULT:
            raise RscError("give either --train-seed or --train-seed-equals-dataset-seed, "
                           "not both")
    seeds = parse_int_list(seeds_text, "training seeds", MAX_TRAIN_SEED)
    requests = []
    for spec in specs:
        for seed in ([spec.seed] if paired_seeds else seeds):
            requests.append(RunRequest(spec, build_train_config(train_seed=seed,
                                                                **train_kwargs)))
    return requests


def _print_outcome(outcome: TrainOutcome, as_json: bool) -> None:
    metrics = outcome.run.metrics or {}
    if as_json:
        echo_json({"run": str(outcome.run.path), "reused": outcome.reused, **metrics})
        return
    click.echo(f"{_state(outcome)}: {outcome.run.path}")
    click.echo(f"clean test accuracy {metrics.get('clean_accuracy'):.4f}")
    if metrics.get("score"):
        score = metrics["score"]
        click.echo(f"spurious score ({score['pattern']}, target {score['target']}, seed "
                   f"{score['seed']}): {score['score']:.4f}")


def _state(outcome: TrainOutcome) -> str:
    return ("reused finished run" if outcome.reused else
            f"resumed from epoch {outcome.resumed_from}" if outcome.resumed_from else "trained")


def _print_results(results: list[RunResult], as_json: bool) -> None:
    if as_json:
        rows = []
        for r in results:
            row = {"spec": r.request.spec.as_dict(), "train_seed": r.request.config.seed,
                   "group_size": r.group_size}
            if r.outcome is not None:
                metrics = dict(r.outcome.run.metrics or {})
                metrics.pop("spec", None)  # the same as the request's
                row.update({"run": str(r.outcome.run.path), "reused": r.outcome.reused,
                            **metrics})
            else:
                row["error"] = str(r.error)
            rows.append(row)
        echo_json(rows)
        return
    table = Table("spec", "train seed", "state", "group", "clean acc", "spurious score", "run",
                  title=f"{len(results)} runs")
    for r in results:
        if r.outcome is None:
            table.add_row(r.request.spec.name, str(r.request.config.seed), "FAILED",
                          str(r.group_size), "", "", str(r.error))
            continue
        metrics = r.outcome.run.metrics or {}
        score = (metrics.get("score") or {}).get("score")
        table.add_row(r.request.spec.name, str(r.request.config.seed), _state(r.outcome),
                      str(r.group_size), f"{metrics.get('clean_accuracy', float('nan')):.4f}",
                      "" if score is None else f"{score:.4f}", r.outcome.run.name)
    print_table(table)


def _print_score(result: ScoreResult, source: str, as_json: bool) -> None:
    if as_json:
        echo_json({"source": source, **result.as_dict()})
        return
    table = Table("measure", "value", title=f"spurious score of {source}")
    table.add_row("pattern / target / seed", f"{result.pattern} / {result.target} / {result.seed}")
    table.add_row("threshold", f"{result.threshold:g}")
    table.add_row("images scored", f"{result.num_images}"
                  + (" (y != target)" if result.exclude_target else " (all)"))
    table.add_row("spurious score", f"{result.score:.4f}")
    table.add_row("clean test accuracy", f"{result.clean_accuracy:.4f}")
    table.add_row("patterned accuracy (y != target)", f"{result.patterned_accuracy:.4f}")
    print_table(table)


@click.command("score")
@click.argument("source")
@click.option("--pattern", default=None, help="Pattern (default: the run's own).")
@click.option("--pattern-file", type=click.Path(dir_okay=False), default=None,
              help="Score a pattern stored as a PNG instead (x' = (1 - alpha) x + alpha "
                   "colour; e.g. one rsc audit proposed); --target defaults to the class the "
                   "file records.")
@click.option("--target", type=int, default=None, help="Target class (default: the run's).")
@click.option("--seed", type=int, default=None,
              help="Dataset seed whose pattern is added (it draws a noise pattern; default: "
                   "the run's own, 0 for clean runs).")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="Probability rise that counts as spurious.")
@click.option("--exclude-target", is_flag=True, help="Score only test images with y != target.")
@click.option("--arch", default=None, help="Architecture of a reference checkpoint.")
@click.option("--dataset", default=None, help="Dataset of a reference checkpoint.")
@runs_dir_option
@data_options
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def score_command(source, pattern, pattern_file, target, seed, threshold, exclude_target, arch,
                  dataset, runs_dir, data_dir, download, device, as_json) -> None:
    """Spurious score of SOURCE: a run folder, a run's name (or a unique start of one) under
    --runs-dir, or a checkpoint file (rsc's or the reference's).

    score = fraction of test images whose target-class probability rises by more than the
    threshold when the pattern is added (PROTOCOL.md section 5).

    \b
    Examples:
      rsc score runs/mnistv20-3-0-0_ce-tor-LargeMLP_adam-lr0.01-b128-e10-s0-1a2b3c4d5e
      rsc score mnistv20-3-0-0_ce-tor-LargeMLP_adam-lr0.01-b128-e10
      rsc score model.pt --arch LargeMLP --dataset mnist --pattern v8 --target 0
    """
    resolve_device(device)  # a bad --device fails before any work, even for a cached score
    path = run_path(source, runs_dir)
    if pattern_file is not None:
        if pattern is not None:
            raise RscError("give either --pattern or --pattern-file, not both")
        pattern = read_pattern_png(pattern_file)
        target = pattern.target if target is None else target
    if path.is_dir():
        run = Run.open(path)
        if not isinstance(pattern, BlendPattern):
            result = score_run(run, pattern, target, seed, threshold, exclude_target,
                               data_dir, download, device)
            _print_score(result, path.name, as_json)
            return
        run.model_sha256()  # a pattern file is not cached: score the verified weights
    checkpoint = read_checkpoint(path / "model.pt" if path.is_dir() else path)
    meta_spec = (checkpoint.get("meta") or {}).get("spec")
    spec = SpuriousSpec.from_dict(meta_spec) if meta_spec else None
    dataset = dataset or (spec.dataset if spec else None)
    if not dataset:
        raise RscError("this checkpoint does not record its dataset; pass --dataset (and --arch)")
    bundle = load_dataset(dataset, data_dir, download)
    model = build_model_from_checkpoint(checkpoint, arch, bundle.input_shape, bundle.num_classes)
    if isinstance(pattern, BlendPattern):  # a pattern file: no seed, the file's own name
        target = resolve_target(spec, "file", target, 0)[1]
        seed = 0
    else:
        pattern, target, seed = resolve_target(spec, pattern, target, seed)
    result = score_model(model, bundle.test, pattern, target, seed, threshold, exclude_target,
                         resolve_device(device))
    _print_score(result, path.name, as_json)


def _expand(paths: tuple[str, ...]) -> list[Run]:
    runs: list[Run] = []
    for text in paths:
        matches = sorted(glob.glob(text)) if any(c in text for c in "*?[") else [text]
        if not matches:
            raise RscError(f"no run folders match {text!r}")
        runs.extend(Run.open(m) for m in matches)
    return runs


def print_comparison(comparison: Comparison, console: Console | None = None) -> None:
    table = Table("n", "runs", "spurious score", "clean acc", "patterned acc (y≠c)",
                  "p (Welch, > baseline)",
                  title=f"pattern {comparison.pattern}, target {comparison.target}, "
                        f"threshold {comparison.threshold:g}")

    def cell(mean: float, sem: float) -> str:
        return f"{mean:.4f}" + ("" if sem != sem else f" ± {sem:.4f}")

    for row in comparison.rows:
        p = ("baseline" if row.n == 0 else "no baseline" if row.p_value is None
             else f"{row.p_value:.3g}")
        table.add_row(str(row.n), str(row.runs), cell(row.score_mean, row.score_sem),
                      cell(row.clean_accuracy_mean, row.clean_accuracy_sem),
                      cell(row.patterned_accuracy_mean, row.patterned_accuracy_sem), p)
    console = console or table_console()
    console.print(table)
    if comparison.seeds is not None:  # one unwrapped line, so it can be grepped
        console.print(f"seeds: {comparison.seeds.description}", soft_wrap=True,
                      highlight=False, markup=False)


@click.command("compare")
@click.argument("runs", nargs=-1)
@click.option("--where", default=None, metavar="EXPR",
              help=f"Compare the finished runs of the results index that match EXPR "
                   f"({WHERE_HELP}); the baseline is then every finished clean run trained "
                   f"like them, unless --baseline is given.")
@click.option("--baseline", "baselines", multiple=True,
              help="Clean baseline run folder or glob (repeatable).")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="Probability rise that counts as spurious.")
@click.option("--exclude-target", is_flag=True, help="Score only test images with y != target.")
@click.option("--allow-mixed-baseline", is_flag=True,
              help="Accept a baseline trained with another recipe or on other training rows "
                   "than the runs (warns).")
@click.option("--allow-mixed-seeds", is_flag=True,
              help="Pool runs that follow different seed protocols (e.g. some with training "
                   "seed = dataset seed, some with a fixed training seed).")
@runs_dir_option
@data_options
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare_command(runs, where, baselines, threshold, exclude_target, allow_mixed_baseline,
                    allow_mixed_seeds, runs_dir, data_dir, download, device, as_json) -> None:
    """Aggregate runs that differ only in seed: mean ± SEM per n and the one-sided Welch
    t-test against the clean baseline. RUNS may be folders or globs (quote them); or select
    them from the results index with --where (as `rsc runs list --where` does).

    The runs must share everything but their seeds: recipe, training subset and removal
    (docs/reports.md, "What pools as seeds"; the differing field is named otherwise), a run
    given twice counts once, and the seed protocol is printed: the study varies the dataset
    seed (the last number of the spec) with training seed 0.

    \b
    Examples:
      rsc compare --where "pattern=r3 and epochs=10"
      rsc compare 'runs/mnistv20-3-0-*' --baseline 'runs/mnist_*'
    """
    resolve_device(device)
    if not runs and where is None:
        raise RscError("give the runs to compare: folders or globs (RUNS), or --where EXPR "
                       "to select them from the results index")
    selected = _expand(runs) if runs else []
    baseline = _expand(baselines) if baselines else []
    if where is not None:
        matched, index_baseline = runs_from_index(where, runs_dir)
        selected += matched
        baseline = baseline or index_baseline
    comparison = compare_runs(selected, baseline, threshold, exclude_target, data_dir, device,
                              download, allow_mixed_baseline=allow_mixed_baseline,
                              allow_mixed_seeds=allow_mixed_seeds)
    if as_json:
        echo_json(comparison.as_dict())
    else:
        print_comparison(comparison)


COMMANDS = [train_command, score_command, compare_command]
