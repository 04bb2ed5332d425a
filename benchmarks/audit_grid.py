"""Audit rsc's planted benchmarks and measure what the auditors find (issue 23; the table and
figure in docs/results.md, "Auditing for rare spurious correlations").

For every FINISHED run (its folder has metrics.json) in ``--runs-dir`` whose spec matches one
of ``--spec`` (brace patterns, as ``rsc train`` takes them) and whose recipe is ``--recipe``:
audit it with ``--auditor`` (each run once: an existing complete audit folder under ``--out``
is reused, so the script resumes where it stopped and skips runs still training), then
evaluate the ranking against the run's planted indices, which the auditors never see:
recall of the planted examples in the top 10 and top 100, AUROC, per auditor and for their
rank average; for Neural Cleanse whether the target class is flagged and the IoU of its
recovered mask with the pattern's support; and each auditor's time. A clean run (n = 0) is
the false-alarm baseline: Neural Cleanse's flags there, and per auditor the mean score of its
top 10, which a planted run's should exceed.

Writes ``--out/results.json`` (one row per audited run) and prints the summary tables as
markdown; ``--figure`` draws AUROC and recall@100 against n per auditor (mean and SEM over the
dataset seeds, fixed 0-1 axes). One thread: run it with OMP_NUM_THREADS=1.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE RSC_DATA_DIR=/work/shared/data \\
      python benchmarks/audit_grid.py --runs-dir /work/rsc-runs/runs --out /work/audit-out \\
      --references /work/rsc-runs/mia-runs --figure docs/img/audit-grid.png
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rsc_core.storage.atomic import write_json
from rsc_core.audit.runner import (COMBINED, audit_run, create_auditors, is_audit_folder,
    read_ranking)
from rsc_core.audit.metrics import mask_iou, pattern_support, ranking_metrics
from rsc_core.runs.folder import Run
from rsc_core.data.spec import expand_names, parse_spec

#: The issue's grid, in the order the background training produces it.
DEFAULT_SPECS = ("mnist", "fashion", "mnist{v20,v8}-{1,3,10,100}-0-{0..2}",
                 "fashion{v20,v8}-{1,3,10,100}-0-{0..2}",
                 "mnist{v1,v3,v18,v19,v30}-{1,3,10,100}-0-{0..2}")
DEFAULT_RECIPE = "ce-tor-LargeMLP_adam-lr0.01-b128-e70-s0"
AUDITORS = ("self-influence", "memorisation:references={references}", "saliency",
            "neural-cleanse")
NC = "neural-cleanse"


def find_runs(runs_dir: Path, specs: list[str], recipe: str) -> list[Run]:
    """The finished runs of ``specs`` trained with ``recipe``, in the order of ``specs``."""
    wanted = [name for text in specs for name in expand_names(text)]
    by_name: dict[str, Run] = {}
    for folder in sorted(runs_dir.iterdir()):
        spec_name, _, rest = folder.name.partition("_")
        if rest.startswith(recipe + "-") and (folder / "metrics.json").is_file():
            by_name[spec_name] = Run(folder)
    return [by_name[name] for name in wanted if name in by_name and by_name[name].finished]


def audit_folder(out: Path, run: Run) -> Path:
    return out / run.name


def evaluate(run: Run, folder: Path) -> dict[str, Any]:
    """One row of results.json: the run's facts and what the audit found."""
    summary = json.loads((folder / "audit.json").read_text())
    spec = run.spec
    planted = np.asarray(run.metrics.get("spurious_indices") or [], dtype=np.int64)
    ranking = read_ranking(folder / "ranking.csv")
    row: dict[str, Any] = {
        "run": run.name, "dataset": spec.dataset, "pattern": spec.pattern or "clean",
        "n": spec.n, "seed": spec.seed, "planted": planted.size,
        "spurious_score": (run.metrics.get("score") or {}).get("score"),
        "metrics": ranking_metrics(ranking, planted),
        "top10_mean": {name: float(np.sort(column)[-10:].mean())
                       for name, column in ranking.scores.items()},
        "seconds": {a["name"]: a["seconds"] for a in summary["auditors"]}}
    nc = next((a for a in summary["auditors"] if a["name"] == NC), None)
    if nc is not None:
        row["nc_flagged"] = nc["facts"]["flagged"]
        if planted.size:
            target = spec.target
            proposal = next(p for p in nc["proposals"] if p["target"] == target)
            from rsc_core.data.pattern_files import read_pattern_png

            mask = read_pattern_png(folder / proposal["file"]).mask.numpy()
            support = pattern_support(spec.pattern, tuple(summary_shape(run)), spec.seed)
            row["nc_target_flagged"] = target in nc["facts"]["flagged"]
            row["nc_target_index"] = nc["facts"]["anomaly_index"][target]
            row["nc_iou"] = mask_iou(mask, support)
    return row


def summary_shape(run: Run) -> tuple[int, int, int]:
    from rsc_core.runs.checkpoints import read_checkpoint

    return tuple(read_checkpoint(run.path / "model.pt")["meta"]["input_shape"])


def mean_sem(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    sem = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(np.mean(values)), sem


def cell(values: list[float], digits: int = 2, style: str = "f") -> str:
    """``mean ± SEM`` (just the mean for one value; "–" for none)."""
    mean, sem = mean_sem(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}{style}}" + ("" if math.isnan(sem) else f" ± {sem:.{digits}{style}}")


def auditor_order(names: Iterable[str]) -> list[str]:
    """The auditors by name, then the combinations: the tables' columns and the figures'
    colours, the same in audit_grid.py and audit_control.py."""
    return sorted(set(names), key=lambda n: (n.startswith(COMBINED), n))


def seed_list(members: list[dict[str, Any]]) -> str:
    """The dataset seeds among ``members``, each once: "0,1,2"."""
    return ",".join(str(seed) for seed in sorted({r["seed"] for r in members}))


def panel_title(dataset: str, pattern: str, members: list[dict[str, Any]]) -> str:
    """A figure panel's title: what it pools, runs and seeds."""
    plural = "s" if len({r["seed"] for r in members}) > 1 else ""
    return f"{dataset} {pattern}: {len(members)} runs (seed{plural} {seed_list(members)})"


def metric_table(groups: dict[tuple, list], names: list[str], metric: str,
                 digits: int) -> list[str]:
    """One markdown table of ``metric``: a row per (dataset, pattern, n), a column per auditor
    (mean ± SEM over the seeds of that cell)."""
    short = [name.split(":")[0] for name in names]
    lines = [f"**{metric}**", "",
             "| dataset | pattern | n | runs (seeds) | " + " | ".join(short) + " |",
             "|---|---|---:|---|" + "---:|" * len(names)]
    for (dataset, pattern, n), members in sorted(groups.items()):
        if pattern == "clean":
            continue
        cells = [cell([r["metrics"][name][metric] for r in members if name in r["metrics"]],
                      digits) for name in names]
        lines.append(f"| {dataset} | {pattern} | {n} | {len(members)} ({seed_list(members)}) | "
                     + " | ".join(cells) + " |")
    return lines


def tables(rows: list[dict[str, Any]]) -> str:
    """Markdown: per (dataset, pattern, n) and auditor, recall@10, recall@100 and AUROC over
    seeds; Neural Cleanse's flags and IoU; the clean runs' baseline; times."""
    groups: dict[tuple, list] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["pattern"], row["n"])].append(row)
    names = auditor_order(name for row in rows for name in row["metrics"])
    lines: list[str] = []
    for metric, digits in (("recall@10", 2), ("recall@100", 2), ("auroc", 3)):
        lines += metric_table(groups, names, metric, digits) + [""]
    lines += ["| dataset | pattern | n | runs | NC target flagged | NC target anomaly index | "
              "NC mask IoU | classes NC flagged |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for (dataset, pattern, n), members in sorted(groups.items()):
        if "nc_flagged" not in members[0]:
            continue
        flagged = ("–" if pattern == "clean" else
                   f"{sum(r['nc_target_flagged'] for r in members)}/{len(members)}")
        lines.append(f"| {dataset} | {pattern} | {n} | {len(members)} | {flagged} | "
                     f"{cell([r.get('nc_target_index') for r in members])} | "
                     f"{cell([r.get('nc_iou') for r in members])} | "
                     f"{'; '.join(str(r['nc_flagged']) for r in members)} |")
    lines += ["", "| dataset | pattern | n | auditor | mean of top-10 scores | runs above the "
              "clean run's |", "|---|---|---:|---|---:|---:|"]
    clean = {r["dataset"]: r for r in rows if r["pattern"] == "clean"}
    for (dataset, pattern, n), members in sorted(groups.items()):
        for name in members[0]["top10_mean"]:
            values = [r["top10_mean"][name] for r in members]
            base = clean.get(dataset, {}).get("top10_mean", {}).get(name)
            above = "–" if base is None or pattern == "clean" else \
                f"{sum(v > base for v in values)}/{len(values)}"
            lines.append(f"| {dataset} | {pattern} | {n} | {name.split(':')[0]} | "
                         f"{cell(values, 3, 'g')} | {above} |")
    times: dict[str, list] = defaultdict(list)
    for row in rows:
        for name, seconds in row["seconds"].items():
            times[name].append(seconds)
    lines += ["", "| auditor | audits | seconds per audit (mean ± SEM) | max |",
              "|---|---:|---:|---:|"]
    for name, values in sorted(times.items()):
        lines.append(f"| {name} | {len(values)} | {cell(values, 0)} | {max(values):.0f} |")
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """AUROC and recall@100 against n, per pattern (columns) and auditor (lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planted = [r for r in rows if r["pattern"] != "clean"]
    keys = sorted({(r["dataset"], r["pattern"]) for r in planted})
    names = auditor_order(name for r in planted for name in r["metrics"])
    columns = min(len(keys), 4)  # a pattern's two panels one above the other, wrapped
    blocks = -(-len(keys) // columns)
    fig, axes = plt.subplots(2 * blocks, columns, figsize=(3.6 * columns, 3.1 * 2 * blocks),
                             squeeze=False)
    for index in range(len(keys), blocks * columns):  # the last block's empty places
        block, column = divmod(index, columns)
        axes[2 * block, column].set_visible(False)
        axes[2 * block + 1, column].set_visible(False)
    for index, (dataset, pattern) in enumerate(keys):
        members = [r for r in planted if (r["dataset"], r["pattern"]) == (dataset, pattern)]
        ns = sorted({r["n"] for r in members})
        block, column = divmod(index, columns)
        for row_index, measure in enumerate(("auroc", "recall@100")):
            axis = axes[2 * block + row_index, column]
            for name in names:
                stats = [mean_sem([r["metrics"][name][measure] for r in members
                                   if r["n"] == n and name in r["metrics"]]) for n in ns]
                axis.errorbar(ns, [s[0] for s in stats],
                              yerr=[0 if math.isnan(s[1]) else s[1] for s in stats],
                              marker="o", capsize=3, label=name.split(":")[0])
            axis.set(xscale="log", xlim=(0.7, 150), ylim=(0, 1.02), xticks=[1, 3, 10, 100],
                     xticklabels=["1", "3", "10", "100"], xlabel="n (planted of 60,000)",
                     ylabel=measure, title=panel_title(dataset, pattern, members))
            axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Auditors on planted runs (LargeMLP, 70 epochs):\nmean ± SEM over dataset "
                 "seeds; AUROC 0.5 = chance", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # room for the title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="one audit folder per run")
    parser.add_argument("--spec", action="append", default=None,
                        help=f"brace pattern of specs (repeatable; default: {DEFAULT_SPECS})")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE)
    parser.add_argument("--references", default="",
                        help="reference runs for the memorisation auditor (a folder)")
    parser.add_argument("--auditor", action="append", default=None,
                        help="NAME[:k=v] (repeatable; default: the four built-ins)")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="audit at most this many new runs, then stop")
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    texts = args.auditor or [a.format(references=args.references) for a in AUDITORS
                             if args.references or not a.startswith("memorisation")]
    runs = find_runs(args.runs_dir, args.spec or list(DEFAULT_SPECS), args.recipe)
    audited = 0
    for run in runs:
        folder = audit_folder(args.out, run)
        if is_audit_folder(folder):
            continue
        if args.max_runs is not None and audited >= args.max_runs:
            break
        started = time.perf_counter()
        print(f"auditing {run.name}", file=sys.stderr, flush=True)
        audit_run(run.path, create_auditors(texts), folder, data_dir=args.data_dir,
                  progress=True)
        audited += 1
        print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    rows = [evaluate(run, audit_folder(args.out, run)) for run in runs
            if is_audit_folder(audit_folder(args.out, run))]
    write_json(args.out / "results.json", {"auditors": texts, "rows": rows})
    print(tables(rows))
    if args.figure is not None and any(r["pattern"] != "clean" for r in rows):
        figure(rows, args.figure)
    pending = [name for text in (args.spec or DEFAULT_SPECS) for name in expand_names(text)
               if name not in {parse_spec(r["run"].partition("_")[0]).name for r in rows}]
    print(f"\naudited {len(rows)} runs; pending (not finished or not audited): "
          f"{len(pending)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
