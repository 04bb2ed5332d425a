"""``rsc mia``: membership inference against a model trained on a membership dataset
(PROTOCOL.md section 8; docs/privacy.md)."""
from __future__ import annotations

from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table

from rsc_core.privacy.attacks import DEFAULT_SHADOWS
from rsc_core.errors import ConfigError
from rsc_core.runs.groups import DEFAULT_GROUP_SIZE, check_group_size
from rsc_core.storage.atomic import write_json
from rsc_core.data.membership import parse_membership_spec
from rsc_core.privacy.summary import summarise
from rsc_core.privacy.metrics import DIFFERENCE, LOW_FPRS, SLICES, fpr_key
from rsc_core.privacy.experiment import MiaResult, create_attacks, result_name, run_mia_many
from rsc_core.runs.folder import Run, resolve_device
from rsc_core.data.spec import expand_names, parse_int_list
from rsc_core.training.trainer import MAX_TRAIN_SEED

from .options import PluginNamesOption, data_options, old_spelling
from .output import echo_json, table_console
from .train_commands import device_option, runs_dir_option
from .train_options import build_train_config, split_train_kwargs, train_options


@click.command("mia")
@click.option("--spec", "spec_names", required=True, multiple=True, metavar="NAME",
              help="Membership dataset mem{dataset}{pattern}-{n}-{label}-{seed}, e.g. "
                   "memmnistv20-3-0-0 (the split is described in docs/privacy.md). "
                   "Repeatable, with braces ('memmnistv20-{1,3,10}-0-{0..2}'): every model "
                   "of every spec then trains in one multi-model call.")
@click.option("--attack", "attack_names", multiple=True, required=True,
              metavar="NAME[:k=v,...]", cls=PluginNamesOption, kind="attacks",
              help="Attack to run, with its options as NAME:key=value,...; repeat for "
                   "several. Installed: {names}. The built-in ones' options: shadow-lr "
                   "(compat=corrected|reference: the reference's evaluation), lira and "
                   "lira-offline (variance=per-example|fixed|pooled, center=median|mean; "
                   "offline also test=two-sided|one-sided, alpha), rmia (a, gamma, alpha, "
                   "population); e.g. --attack lira-offline:variance=fixed,alpha=0.01. "
                   "Defaults follow each attack's authors (docs/privacy.md).")
@click.option("--shadows", type=int, default=DEFAULT_SHADOWS, show_default=True,
              help="Shadow models of LiRA and RMIA (even; LiRA with a per-example variance "
                   "needs 4, otherwise 2). The study's attack and loss-threshold use one "
                   "shadow model on the disjoint shadow pool.")
@click.option("--control-size", type=int, default=None, metavar="N",
              help="Control images: the pattern drawn on N images of the target class that "
                   "no model trained on, scored like the target's examples [default: 500, or "
                   "as many as the split reserves if fewer; 0: no control].")
@train_options
@data_options
@runs_dir_option
@device_option
@click.option("--group-size", type=int, default=DEFAULT_GROUP_SIZE, show_default=True,
              help="How many compatible models train at once in the multi-model trainer.")
@click.option("--target-run", type=click.Path(file_okay=False), default=None,
              help="Attack this finished run (it must have trained on the spec's target "
                   "training set; its recipe is then used for the shadows) instead of "
                   "training or reusing the target from the recipe flags.")
@click.option("--output", "-o", "out", type=click.Path(), default=None,
              help="Result folder (default: mia/<spec>_<recipe>-<hash> in the current "
                   "folder); with several specs, the folder that holds one such result "
                   "folder per spec. An older result is replaced once the new one is "
                   "complete.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or stage lines.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json instead of a table.")
@old_spelling("--out", "--output", "out")
def mia_command(spec_names, attack_names, shadows, control_size, data_dir, download, runs_dir,
                device, group_size, target_run, out, quiet, as_json, **kwargs) -> None:
    """Membership inference on rare spurious examples.

    Splits the dataset into a target pool and a disjoint shadow pool (members = a model's
    training set, non-members = held-out images of the same pool; the spurious images only
    in the target's training set), trains or reuses the target and the shadow models each
    attack needs as ordinary runs (listed and reused like any `rsc train` run), attacks the
    target and reports balanced accuracy, ROC AUC, TPR at 0.1% and 1% FPR, and how often the
    planted images are called members against unpatterned members of their class and against
    the control: the same pattern drawn on images of the class that no model trained on. Only
    the control tells membership from the learned pattern.

    Writes metrics.json, scores.csv (one row per target example and control image),
    split.json and roc.png.

    Example: rsc mia --spec memmnistv20-3-0-0 --attack shadow-lr --attack lira-offline
    --attack rmia --shadows 16
    """
    mems = list({m.name: m for m in (parse_membership_spec(name) for text in spec_names
                                     for name in expand_names(text))}.values())
    attacks = create_attacks(attack_names, shadows)
    check_group_size(group_size)
    train_kwargs, _ = split_train_kwargs(kwargs)
    run = None
    if target_run is not None:
        if len(mems) != 1:
            raise ConfigError("--target-run attacks one target; give one --spec with it")
        _refuse_recipe_flags(train_kwargs)
        run = Run.open(target_run)
        config = run.train_config
    else:
        seeds = parse_int_list(train_kwargs.pop("train_seed"), "training seeds", MAX_TRAIN_SEED)
        if len(seeds) != 1:
            raise ConfigError(f"rsc mia attacks one target model; give one --train-seed, got "
                              f"{len(seeds)}")
        config = build_train_config(train_seed=seeds[0], **train_kwargs)
    resolve_device(device)
    root = Path(out) if out else Path("mia")
    if out and len(mems) == 1:
        jobs = [(mems[0], root)]
    else:
        jobs = [(mem, root / result_name(mem, config, attacks, control_size))
                for mem in mems]
    stage = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    results = run_mia_many(jobs, config, attacks, runs_dir=runs_dir, data_dir=data_dir,
                           download=download, device=device, progress=not quiet,
                           group_size=group_size, target_run=run, control=control_size,
                           on_stage=stage)
    rows = [{"folder": str(r.folder), **r.metrics} for r in results]
    summary = None
    if len(results) > 1:  # over seeds, beside the study's numbers; kept with the results
        summary = summarise([r.metrics for r in results])
        write_json(root / "summary.json", summary)
    if as_json:
        echo_json(rows[0] if summary is None else {"results": rows, "summary": summary})
        return
    console = table_console()
    for result in results:
        print_result(result, console)
    if summary is not None:
        print_summary(summary, console)
        console.print(f"summary: {root / 'summary.json'}", soft_wrap=True, highlight=False,
                      markup=False)


def _refuse_recipe_flags(train_kwargs: dict) -> None:
    context = click.get_current_context()
    given = [name for name in train_kwargs
             if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"--target-run brings its own recipe; drop {flags}")


def _rate(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_result(result: MiaResult, console: Console | None = None) -> None:
    """One row per attack; short headers so the table fits 80 columns (the caption spells
    them out)."""
    metrics = result.metrics
    split = metrics["split"]
    low = LOW_FPRS[-1]
    table = Table(box=box.SIMPLE_HEAD,
                  title=f"{metrics['spec']['name']}: {split['part_size']} members, "
                        f"{split['part_size']} non-members, {len(split['spurious'])} planted, "
                        f"{metrics['control']['count']} control",
                  caption=f"acc: balanced accuracy; K: shadow models; @x: TPR at x FPR; "
                          f"plant/class/ctrl @{low * 100:g}%: share of the planted members / "
                          f"unpatterned same-class members / control images (the pattern on "
                          f"images no model saw) above the {low * 100:g}%-FPR threshold; "
                          f"diff: planted - control, 95% interval; -: none or unscored")
    table.add_column("attack", no_wrap=True)
    for header in ("K", "acc", "AUC", *(f"@{f * 100:g}%" for f in LOW_FPRS), "plant",
                   "class", "ctrl", "diff"):
        table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    key = fpr_key(low)
    for name, row in metrics["attacks"].items():
        difference = row[DIFFERENCE][key]
        table.add_row(name, str(row["shadows"]), f"{row['balanced_accuracy']:.3f}",
                      f"{row['auc']:.3f}", *(f"{row[fpr_key(f)]:.4f}" for f in LOW_FPRS),
                      *(_rate(row[s][key]) for s in SLICES),
                      "-" if difference is None else
                      f"{difference['difference']:+.2f} [{difference['low']:+.2f},"
                      f"{difference['high']:+.2f}]")
    console = console or table_console()
    console.print(table)
    console.print(f"results: {result.folder}", soft_wrap=True, highlight=False, markup=False)


def _mean_sem(row: dict, name: str) -> str:
    mean, error = row[f"{name}_mean"], row[f"{name}_sem"]
    if mean is None:
        return "-"
    return f"{mean:.3f}" + ("" if error is None else f"±{error:.3f}")


def _seeds(seeds: list[int]) -> str:
    """[0, 1, 2] -> {0..2}; [0, 2] -> {0,2}; [4] -> 4."""
    if len(seeds) == 1:
        return str(seeds[0])
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{{{seeds[0]}..{seeds[-1]}}}"
    return "{" + ",".join(map(str, seeds)) + "}"


def print_summary(rows: list[dict], console: Console) -> None:
    """Mean ± SEM over seeds per setting and attack, and the study's stored numbers."""
    table = Table(box=box.SIMPLE_HEAD, title="over seeds: mean ± SEM",
                  caption="plant/class/ctrl@1%: share of planted / same-class members / "
                          "control images above the 1%-FPR threshold; ref: the study's "
                          "stored accuracy / spurious member rate (PROTOCOL.md 8; its "
                          "non-members reused the members' logits)")
    names = [f"{row['dataset']}{row['pattern']}-{row['n']}-{row['target']}-"
             f"{_seeds(row['seeds'])}" for row in rows]
    table.add_column("specs", no_wrap=True, min_width=max(map(len, names)))
    table.add_column("attack", no_wrap=True, min_width=max(len(r["attack"]) for r in rows))
    for header in ("acc", "@1%", "plant", "ctrl", "plant@1%", "ctrl@1%"):  # more: summary.json
        table.add_column(header, justify="right", no_wrap=True, min_width=max(5, len(header)))
    table.add_column("ref", justify="right", no_wrap=True, min_width=10)
    for name, row in zip(names, rows):
        reference = row["reference"]
        table.add_row(
            name, row["attack"],
            _mean_sem(row, "balanced_accuracy"), _mean_sem(row, "tpr_at_1%_fpr"),
            _mean_sem(row, "planted_member_rate"), _mean_sem(row, "control_member_rate"),
            _mean_sem(row, "planted_tpr_at_1%_fpr"), _mean_sem(row, "control_tpr_at_1%_fpr"),
            "-" if reference is None else
            f"{reference['accuracy']:.3f}/{reference['spurious_member_rate']:.2f}")
    console.print(table)


COMMANDS = [mia_command]
