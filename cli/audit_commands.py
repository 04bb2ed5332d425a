"""``rsc audit``: find training examples that taught a model a rare shortcut (docs/audit.md)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import click
from rich.table import Table

from rsc_core.audit.runner import DEFAULT_TOP_K, audit_run, create_auditors

from .options import data_options
from .output import echo_json, print_table, table_console
from .train_commands import device_option


def default_out(run: str, labels: list[str]) -> Path:
    """``audits/<run folder>-<hash of the auditors>`` in the current folder."""
    digest = hashlib.sha256("\n".join(labels).encode()).hexdigest()[:8]
    return Path("audits") / f"{Path(run).resolve().name}-{digest}"


@click.command("audit")
@click.argument("run", type=click.Path(exists=True))
@click.option("--auditor", "-a", "auditor_names", multiple=True, required=True,
              metavar="NAME[:k=v,...]",
              help="Auditor to run, with options; repeat for several, which are then also "
                   "combined by rank average (`rsc plugins` lists them): self-influence "
                   "(solver=ekfac|arnoldi|cg|lissa, damp, ...), memorisation "
                   "(references=FOLDER_OR_GLOB, statistic=lira|loss-gap), saliency (window, "
                   "top), neural-cleanse (steps, images, ...). Options: docs/audit.md.")
@click.option("--output", "-o", "out", type=click.Path(), default=None,
              help="Result folder (default: audits/<run>-<hash of the auditors>). An earlier "
                   "audit there is replaced once the new one is complete.")
@click.option("--combine", type=click.Choice(["rank-average", "max-rank"]),
              default="rank-average", show_default=True,
              help="How several auditors rank together: the mean of their ranks (suspicious "
                   "to all) or the best of them (suspicious to any one).")
@click.option("--top-k", "-k", type=int, default=DEFAULT_TOP_K, show_default=True,
              help="How many of the most suspicious images the figure and audit.json show.")
@data_options
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No stage lines on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print audit.json instead of a table.")
def audit_command(run, auditor_names, out, combine, top_k, data_dir, download, device, quiet,
                  as_json) -> None:
    """Rank every training example of a finished RUN folder by how likely it is to carry a
    rare shortcut, and propose the shortcut.

    Writes ranking.csv (rank, index, label, a score per auditor, and their rank average),
    patterns/*.png (proposed patterns: score one with `rsc score RUN --pattern-file FILE`),
    top-k.png (the most suspicious images with their saliency) and audit.json. The auditors
    are told nothing about what was planted.
    """
    auditors = create_auditors(auditor_names)
    folder = Path(out) if out else default_out(run, [a.label for a in auditors])
    outcome = audit_run(run, auditors, folder, top_k=top_k, device=device, data_dir=data_dir,
                        download=download, progress=not quiet, combine=combine)
    if as_json:
        echo_json(outcome.summary)
        return
    names = list(outcome.ranking.scores)
    table = Table("rank", "index", "label", *names,
                  title=f"{outcome.summary['run']}: top {min(top_k, 10)} of "
                        f"{outcome.summary['num_train']} by {outcome.summary['ranked_by']}")
    for row in outcome.summary["top"][:10]:
        table.add_row(str(row["rank"]), str(row["index"]), str(row["label"]),
                      *(f"{row[name]:.4g}" for name in names))
    console = table_console()
    print_table(table, console)
    console.print(f"written to {outcome.folder}", soft_wrap=True, highlight=False, markup=False)


COMMANDS = [audit_command]
