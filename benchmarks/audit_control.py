"""The control of the audit grid (issue 23, docs/results.md): do the auditors find the planted
images because the model LEARNED a shortcut from them, or because they are odd in pixel
space (a white corner no digit has, noise on a black background)?

For every finished planted run matching ``--spec``, the auditors score that run's training
set (planted images included) with the CLEAN model's weights (``--clean``, a run that never
saw any planted image) instead of the run's own, and the ranking is evaluated against the
planted indices as in ``audit_grid.py``. Where an auditor finds the planted images as well
with the clean model, its success on the planted model is pixel-space oddity, not evidence of
what the model learned. One JSON file per run under ``--out`` (reused when present, so the
script resumes); prints a markdown table of the control beside the planted model's own audit
(``--grid``: the ``results.json`` of ``audit_grid.py``). One thread: OMP_NUM_THREADS=1.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE RSC_DATA_DIR=/work/shared/data \\
      python benchmarks/audit_control.py --runs-dir /work/rsc-runs/runs \\
      --clean /work/rsc-runs/runs/mnist_ce-tor-LargeMLP_adam-lr0.01-b128-e70-s0-031e237558 \\
      --spec 'mnist{v20,v8}-{1,3,100}-0-{0..2}' --references /work/rsc-runs/mia-runs \\
      --out /work/audit-out/control --grid /work/audit-out/grid/results.json \\
      --figure docs/img/audit-control.png
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsc_core.storage.atomic import write_json
from rsc_core.audit.runner import (COMBINED, Ranking, create_auditors, run_auditors,
                                   training_set)
from rsc_core.audit.metrics import ranking_metrics
from rsc_core.runs.folder import Run, resolve_device
from rsc_core.data.subsets import training_rows


@functools.cache
def _grid_module() -> Any:
    """audit_grid.py beside this file (its run finder and table cells), loaded once."""
    path = Path(__file__).with_name("audit_grid.py")
    spec = importlib.util.spec_from_file_location("audit_grid_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def control(run: Run, clean: Run, texts: list[str], data_dir: str | None) -> dict[str, Any]:
    """The auditors on ``run``'s training set with ``clean``'s model, evaluated."""
    data = training_set(run, data_dir)
    indices = training_rows(data)
    reports = run_auditors(create_auditors(texts), clean.load_model(), data, indices,
                           resolve_device("cpu"), clean, progress=True)
    ranking = Ranking(indices, data.train.labels.numpy(),
                      {auditor.label: result.scores for auditor, result, _ in reports})
    planted = np.asarray(run.metrics["spurious_indices"], dtype=np.int64)
    spec = run.spec
    return {"run": run.name, "clean": clean.name, "pattern": spec.pattern, "n": spec.n,
            "seed": spec.seed, "dataset": spec.dataset,
            "metrics": ranking_metrics(ranking, planted)}


def table(rows: list[dict[str, Any]], grid: dict[str, dict[str, Any]]) -> str:
    """Markdown: for recall@100 and AUROC, a row per (dataset, pattern, n) and a column per
    auditor, each cell "own model / clean model (control)", mean ± SEM over seeds."""
    grid_module = _grid_module()
    cell = grid_module.cell
    groups: dict[tuple, list] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["pattern"], row["n"])].append(row)
    names = grid_module.auditor_order(name for row in rows for name in row["metrics"])
    lines: list[str] = []
    for measure, digits in (("recall@100", 2), ("auroc", 3)):
        lines += [f"**{measure}: own model / clean model (control)**", "",
                  "| dataset | pattern | n | seeds | "
                  + " | ".join(name.split(":")[0] for name in names) + " |",
                  "|---|---|---:|---|" + "---:|" * len(names)]
        for (dataset, pattern, n), members in sorted(groups.items()):
            cells = []
            for name in names:
                own = [grid[r["run"]]["metrics"][name][measure] for r in members
                       if r["run"] in grid and name in grid[r["run"]]["metrics"]]
                ctrl = [r["metrics"][name][measure] for r in members if name in r["metrics"]]
                cells.append(f"{cell(own, digits)} / {cell(ctrl, digits)}")
            lines.append(f"| {dataset} | {pattern} | {n} | {grid_module.seed_list(members)} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], grid: dict[str, dict[str, Any]], path: Path,
           measure: str = "recall@100") -> None:
    """One panel per (dataset, pattern): ``measure`` against n per auditor, the run's own model
    (solid) beside the clean model on the same training set (dashed, the control)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid_module = _grid_module()
    groups: dict[tuple, list] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["pattern"])].append(row)
    columns = min(len(groups), 4)  # wrapped into rows of four panels
    rows_of_panels = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows_of_panels, columns,
                             figsize=(4.4 * columns, 3.8 * rows_of_panels + 1.4), squeeze=False)
    for axis in axes.flat[len(groups):]:
        axis.set_visible(False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, ((dataset, pattern), members) in zip(axes.flat, sorted(groups.items())):
        ns = sorted({r["n"] for r in members})
        # audit_grid.py's colours: each auditor's place in the full order; the rank average
        # keeps its colour slot but is drawn in the tables only
        for colour, name in zip(colours, grid_module.auditor_order(members[0]["metrics"])):
            if name == COMBINED:
                continue
            for source, style in (("own", "-"), ("control", "--")):
                stats = []
                for n in ns:
                    at_n = [r for r in members if r["n"] == n]
                    if source == "own":
                        values = [grid[r["run"]]["metrics"][name][measure] for r in at_n
                                  if r["run"] in grid]
                    else:
                        values = [r["metrics"][name][measure] for r in at_n]
                    stats.append(grid_module.mean_sem(values))
                axis.errorbar(ns, [s[0] for s in stats], linestyle=style, color=colour,
                              yerr=[0 if math.isnan(s[1]) else s[1] for s in stats],
                              marker="o" if source == "own" else "x", capsize=3,
                              label=f"{name.split(':')[0]} ({source})")
        axis.set(xscale="log", xlim=(0.7, 150), ylim=(0, 1.02), xticks=ns,
                 xticklabels=[str(n) for n in ns], xlabel="n (planted of 60,000)",
                 ylabel=measure, title=grid_module.panel_title(dataset, pattern, members))
        axis.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7)
    fig.suptitle(f"The control: {measure} with the run's own model (solid) and with the clean "
                 "model on the same training set (dashed)\nLargeMLP, 70 epochs; mean ± SEM "
                 "over dataset seeds", fontsize=9)
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0.8 / height, 1, 1 - 0.6 / height))  # legend below, title above
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    grid = _grid_module()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--clean", type=Path, required=True, help="the clean run's folder")
    parser.add_argument("--spec", action="append", required=True)
    parser.add_argument("--recipe", default=grid.DEFAULT_RECIPE)
    parser.add_argument("--references", default="")
    parser.add_argument("--auditor", action="append", default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grid", type=Path, default=None, help="audit_grid.py's results.json")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--figure", type=Path, default=None,
                        help="write recall@100, own model vs control, as this PNG (needs --grid)")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="compute at most this many new controls (0: tabulate the done ones)")
    args = parser.parse_args(argv)
    texts = args.auditor or [a.format(references=args.references) for a in grid.AUDITORS
                             if args.references or not a.startswith("memorisation")]
    clean = Run.open(args.clean)
    rows, computed, pending = [], 0, 0
    for run in grid.find_runs(args.runs_dir, args.spec, args.recipe):
        path = args.out / f"{run.name}.json"
        if not path.is_file():
            if args.max_runs is not None and computed >= args.max_runs:
                pending += 1
                continue
            print(f"control for {run.name}", file=sys.stderr, flush=True)
            write_json(path, control(run, clean, texts, args.data_dir))
            computed += 1
        rows.append(json.loads(path.read_text()))
    print(f"controls tabulated: {len(rows)}; finished runs still without one: {pending}",
          file=sys.stderr)
    own = {}
    if args.grid is not None and args.grid.is_file():
        own = {r["run"]: r for r in json.loads(args.grid.read_text())["rows"]}
    print(table(rows, own))
    if args.figure is not None and rows and own:
        figure(rows, own, args.figure)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
