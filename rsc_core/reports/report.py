"""The study's tables from the results index: score-vs-n curves, clean accuracy, p-values
against the clean baseline and mitigation tables (``rsc report``).

All statistics come from ``compare.compare_runs`` (mean and SEM per n, the one-sided Welch
t-test of the pooled per-image indicators against the clean baseline), and only runs that it
would pool are pooled: runs are grouped by dataset, pattern, target(s) and ``recipe_id`` (the
hash of ``pooling.recipe_identity``: the recipe, the training subset relative to the spec and
the removal; everything but the seeds), so runs that do not pool are separate groups, each
with its own label.
Within a group the runs must follow one seed protocol; a group that mixes them (e.g. some runs
with training seed 0, some with training seed = dataset seed) is split into one group per
protocol, and the report says so. A group's baseline is the clean runs of its dataset whose
``recipe_id`` is the group's ``baseline_id`` (trained with the same recipe on the same rows);
without one, its rows have no p-values and the report says that too.

A *mitigation table* compares groups that differ only in their regularisers (PROTOCOL.md
section 6): per regulariser setting, the spurious score and clean accuracy averaged over the n
values present (the reference averages over n and seeds), with the SEM of that average
(sqrt(sum SEM_n^2) / k, the per-n means being independent)."""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rsc_core.analysis.compare import Comparison, compare_runs, seed_protocol
from rsc_core.errors import RscError
from rsc_core.json_output import WHY_NULL, to_json
from rsc_core.runs.pooling import identity_hash, recipe_identity, variant_label
from rsc_core.runs.index import recipe_label
from rsc_core.runs.folder import Run
from rsc_core.evaluation.spurious_score import DEFAULT_THRESHOLD

#: A file rsc writes into every report folder; a folder with it may be replaced by a new one.
MARKER = ".rsc-report"


@dataclass(frozen=True)
class CurveGroup:
    """Runs pooled into one curve: one dataset, pattern, target(s), recipe, seed protocol."""

    dataset: str
    pattern: str
    targets: str
    recipe: str
    recipe_id: str
    epochs: int
    comparison: Comparison
    runs: tuple[str, ...]
    baseline: tuple[str, ...]
    regularisers: str = ""  # the -r label; empty: none
    base_recipe: str = ""  # the recipe without seed and regularisers, with subset, removal
    base_id: str = ""  # the hash of the pool identity without the regularisers
    removal: str = ""  # for removal runs (rsc remove), the method and tag; empty: trained

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.pattern} target {self.targets}, {self.recipe}"


@dataclass(frozen=True)
class MitigationRow:
    dataset: str
    pattern: str
    targets: str
    base_recipe: str
    mitigation: str
    runs: int
    ns: tuple[int, ...]
    score_mean: float
    score_sem: float
    clean_accuracy_mean: float
    clean_accuracy_sem: float


@dataclass(frozen=True)
class RemovalPoint:
    """One removal variant at one n: the spurious score and clean accuracy (mean, SEM over
    seeds) of its source runs (before) and of the removal runs (after), scored alike."""

    dataset: str
    pattern: str
    targets: str
    n: int
    variant: str  # the removal's method and tag, e.g. group-influence-lissa-reference
    recipe_id: str  # tells apart two variants of one method and tag (other options)
    source_recipe: str  # how the source runs were trained, e.g. ce-tor-LargeMLP adam ... e70
    runs: int
    score_before: tuple[float, float]
    score_after: tuple[float, float]
    clean_before: tuple[float, float]
    clean_after: tuple[float, float]


@dataclass
class Report:
    groups: list[CurveGroup]
    mitigations: list[MitigationRow]
    threshold: float = DEFAULT_THRESHOLD
    exclude_target: bool = False
    notes: list[str] = field(default_factory=list)
    removals: list[RemovalPoint] = field(default_factory=list)


def _split_protocols(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs of one recipe split into subsets that each follow one seed protocol: while the
    runs left mix protocols, the largest subset with one training seed (the study's protocol;
    training seed 0 first on ties) is taken out; the rest (e.g. training seed = dataset seed)
    is what remains."""
    remaining = list(rows)
    subsets = []
    while remaining:
        pairs = [(r["dataset_seed"], r["train_seed"]) for r in remaining]
        if seed_protocol(pairs) != "mixed":
            subsets.append(remaining)
            break
        candidates = [[r for r in remaining if r["train_seed"] == t]
                      for t in sorted({r["train_seed"] for r in remaining})]
        best = max(candidates, key=len)  # max keeps the first of equals: training seed 0
        subsets.append(best)
        chosen = {id(r) for r in best}
        remaining = [r for r in remaining if id(r) not in chosen]
    return subsets


def _base_recipe(run: Run) -> tuple[str, str]:
    """What mitigation rows share, readable and as a hash: the pool identity without the
    regularisers (so a removal or a subset run is its own family, labelled as such)."""
    config, metrics = run.config, run.metrics
    variant = variant_label(config, metrics)
    label = recipe_label({**config["train"], "regularisers": []})
    identity = {k: v for k, v in recipe_identity(config, metrics).items()
                if k != "train.regularisers"}
    return label + (f" {variant}" if variant else ""), identity_hash(identity)


def build_report(rows: Sequence[dict[str, Any]], *, threshold: float = DEFAULT_THRESHOLD,
                 exclude_target: bool = False, data_dir: str | Path | None = None,
                 device: str = "auto", download: bool | None = None) -> Report:
    """Pool and compare the finished runs among ``rows`` (results-index rows)."""
    report = Report([], [], threshold, exclude_target)
    finished = [r for r in rows if r["status"] == "finished"]
    if len(finished) < len(rows):
        report.notes.append(f"{len(rows) - len(finished)} unfinished or unreadable run(s) "
                            f"left out (`rsc runs list --where \"status!=finished\"`)")
    spurious: dict[tuple, list[dict]] = defaultdict(list)
    clean: dict[tuple, list[dict]] = defaultdict(list)
    for row in finished:
        if row["pattern"] is None:
            clean[(row["dataset"], row["recipe_id"])].append(row)  # matched by baseline_id
        else:
            spurious[(row["dataset"], row["pattern"], row["targets"], row["recipe_id"])
                     ].append(row)
    if not spurious:
        raise RscError("no finished spurious runs match; nothing to report (check --where "
                       "with `rsc runs list`)")
    errors = []
    for (dataset, pattern, targets, _), group_rows in sorted(
            spurious.items(), key=lambda item: (*item[0][:3], item[1][0]["recipe"])):
        baseline_rows = clean.get((dataset, group_rows[0]["baseline_id"]), [])
        subsets = _split_protocols(group_rows)
        recipe = group_rows[0]["recipe"]
        if len(subsets) > 1:
            report.notes.append(
                f"{dataset} {pattern} ({recipe}): runs mix seed protocols, so they are "
                f"reported as {len(subsets)} separate groups, never pooled")
        if not baseline_rows:
            report.notes.append(f"{dataset} {pattern} ({recipe}): no clean run with this "
                                f"recipe and these training rows, so no baseline row and no "
                                f"p-values")
        for subset in subsets:
            try:
                report.groups.append(_compare_group(subset, baseline_rows, report, data_dir,
                                                    device, download))
                if subset[0].get("removal"):
                    report.removals += _removal_points(subset, report.groups[-1], report,
                                                       data_dir, device, download)
            except RscError as exc:
                errors.append(exc)
                report.notes.append(f"{dataset} {pattern} ({recipe}) left out: {exc}")
    if not report.groups:
        raise errors[0]
    report.mitigations = mitigation_rows(report.groups)
    return report


def _compare_group(rows: list[dict], baseline_rows: list[dict], report: Report, data_dir,
                   device: str, download) -> CurveGroup:
    runs = [Run(r["path"]) for r in rows]
    baseline = [Run(r["path"]) for r in baseline_rows]
    comparison = compare_runs(runs, baseline, report.threshold, report.exclude_target,
                              data_dir, device, download)
    first = rows[0]
    base_label, base_id = _base_recipe(runs[0])
    return CurveGroup(first["dataset"], first["pattern"], first["targets"], first["recipe"],
                      first["recipe_id"], int(first["epochs"]), comparison,
                      tuple(r["name"] for r in rows), tuple(r["name"] for r in baseline_rows),
                      regularisers=first["regularisers"] or "",
                      base_recipe=base_label, base_id=base_id,
                      removal=first.get("removal") or "")


def _removal_points(rows: list[dict], group: CurveGroup, report: Report, data_dir,
                    device: str, download) -> list[RemovalPoint]:
    """Before and after for a group of removal runs, per n: the runs' own sources compared
    exactly as the removals are (same threshold, same test images)."""
    points = []
    for summary in (r for r in group.comparison.rows if r.n > 0):
        sources = [_source_run(Run(r["path"])) for r in rows if r["n"] == summary.n]
        before = compare_runs(sources, (), report.threshold, report.exclude_target, data_dir,
                              device, download).rows[0]
        points.append(RemovalPoint(
            group.dataset, group.pattern, group.targets, summary.n, group.removal,
            group.recipe_id, recipe_label(sources[0].config["train"]), summary.runs,
            (before.score_mean, before.score_sem),
            (summary.score_mean, summary.score_sem),
            (before.clean_accuracy_mean, before.clean_accuracy_sem),
            (summary.clean_accuracy_mean, summary.clean_accuracy_sem)))
    return points


def _source_run(removal: Run) -> Run:
    """The run a removal started from: where it was, else beside the removal (a copied or
    moved runs root)."""
    source = (removal.config.get("removal") or {}).get("source") or {}
    for candidate in (source.get("path"), removal.path.parent / str(source.get("name"))):
        if candidate and (Path(candidate) / "metrics.json").is_file():
            return Run(candidate)
    raise RscError(f"the source of removal {removal.path.name}, {source.get('name')}, is "
                   f"neither at {source.get('path')} nor beside it; its before and after "
                   f"cannot be drawn")


def _combined_sem(sems: Sequence[float]) -> float:
    if not sems or any(math.isnan(s) for s in sems):
        return float("nan")
    return math.sqrt(sum(s * s for s in sems)) / len(sems)


def mitigation_rows(groups: Sequence[CurveGroup]) -> list[MitigationRow]:
    """One row per regulariser setting, for families (dataset, pattern, target, recipe
    without regularisers) that hold more than one setting."""
    families: dict[tuple, list[CurveGroup]] = defaultdict(list)
    for group in groups:
        families[(group.dataset, group.pattern, group.targets, group.base_recipe,
                  group.base_id)].append(group)
    rows = []
    for (dataset, pattern, targets, base, _), members in sorted(families.items()):
        if len({m.regularisers for m in members}) < 2:
            continue
        for member in sorted(members, key=lambda m: (m.regularisers != "", m.regularisers)):
            points = member.comparison.rows
            rows.append(MitigationRow(
                dataset, pattern, targets, base, member.regularisers or "none",
                sum(p.runs for p in points), tuple(p.n for p in points),
                sum(p.score_mean for p in points) / len(points),
                _combined_sem([p.score_sem for p in points]),
                sum(p.clean_accuracy_mean for p in points) / len(points),
                _combined_sem([p.clean_accuracy_sem for p in points])))
    return rows


# --- tables ---------------------------------------------------------------------------------

SCORE_COLUMNS = ["dataset", "pattern", "target", "recipe", "seeds", "n", "runs", "score",
                 "score_sem", "clean_accuracy", "clean_accuracy_sem", "patterned_accuracy",
                 "patterned_accuracy_sem", "p_value"]
MITIGATION_COLUMNS = ["dataset", "pattern", "target", "recipe", "mitigation", "runs", "n",
                      "score", "score_sem", "clean_accuracy", "clean_accuracy_sem"]


def score_records(report: Report) -> list[dict[str, Any]]:
    """One record per group and n, numbers unformatted (the CSV's rows)."""
    records = []
    for group in report.groups:
        seeds = group.comparison.seeds.name if group.comparison.seeds else ""
        for row in group.comparison.rows:
            records.append({
                "dataset": group.dataset, "pattern": group.pattern, "target": group.targets,
                "recipe": group.recipe, "seeds": seeds, "n": row.n, "runs": row.runs,
                "score": row.score_mean, "score_sem": row.score_sem,
                "clean_accuracy": row.clean_accuracy_mean,
                "clean_accuracy_sem": row.clean_accuracy_sem,
                "patterned_accuracy": row.patterned_accuracy_mean,
                "patterned_accuracy_sem": row.patterned_accuracy_sem,
                "p_value": ("baseline" if row.n == 0 else row.p_value)})
    return records


def mitigation_records(report: Report) -> list[dict[str, Any]]:
    return [{"dataset": m.dataset, "pattern": m.pattern, "target": m.targets,
             "recipe": m.base_recipe, "mitigation": m.mitigation, "runs": m.runs,
             "n": ",".join(map(str, m.ns)), "score": m.score_mean, "score_sem": m.score_sem,
             "clean_accuracy": m.clean_accuracy_mean,
             "clean_accuracy_sem": m.clean_accuracy_sem} for m in report.mitigations]


def _mean_sem(mean: float, sem: float, pm: str = "±") -> str:
    return f"{mean:.4f}" + ("" if sem is None or math.isnan(sem) else f" {pm} {sem:.4f}")


def _p_text(value: Any) -> str:
    if value is None:
        return "no baseline"
    if isinstance(value, str):
        return value
    return "< 1e-300" if value == 0 else f"{value:.3g}"  # 0.0: below float64's range


def display_rows(records: list[dict[str, Any]], columns: list[str],
                 pm: str = "±") -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells: mean ± SEM merged into one cell, p-values in 3 digits."""
    headers, cells = [], []
    shown = [c for c in columns if not c.endswith("_sem")]
    for column in shown:
        headers.append(column.replace("_", " "))
    for record in records:
        line = []
        for column in shown:
            value = record[column]
            if f"{column}_sem" in columns:
                line.append(_mean_sem(value, record[f"{column}_sem"], pm))
            elif column == "p_value":
                line.append(_p_text(value))
            else:
                line.append(str(value))
        cells.append(line)
    return headers, cells


def to_csv(records: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v))
                             else repr(v) if isinstance(v, float) else v)
                         for k, v in record.items()})
    return out.getvalue()


def to_markdown(headers: list[str], cells: list[list[str]]) -> str:
    def clean(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(map(clean, headers)) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(map(clean, row)) + " |" for row in cells]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def to_latex(headers: list[str], cells: list[list[str]], caption: str) -> str:
    """A booktabs table; ``±`` becomes ``$\\pm$``."""
    def cell(text: str) -> str:
        text = latex_escape(text).replace("±", "$\\pm$")
        return text.replace("< 1e-300", "$<10^{-300}$").replace("!=", "$\\neq$")

    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{" + "l" * len(headers) + "}", r"\toprule",
             " & ".join(cell(h) for h in headers) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in cells]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + cell(caption) + "}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


# --- the report folder ----------------------------------------------------------------------

def check_output_folder(path: str | Path) -> Path:
    """A report goes to a new folder or replaces an earlier report; never over other files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RscError(f"cannot write the report to {path}: it is a file; give a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).exists():
        raise RscError(f"{path} holds files that are not an rsc report; give a new or empty "
                       f"folder with -o")
    parent = next(p for p in path.absolute().parents if p.exists())
    if not os.access(parent if not path.exists() else path, os.W_OK | os.X_OK):
        raise RscError(f"cannot write the report to {path}: not writable by this user; "
                       f"choose another folder with -o")
    return path


def write_folder(path: Path, fill) -> Path:
    """Call ``fill(tmp)`` on a temporary folder beside ``path``, then put it in place of
    ``path`` (an earlier report is replaced only once the new one is complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; a report is an ordinary folder
    old = None
    try:
        fill(tmp)
        (tmp / MARKER).write_text("written by rsc report\n", encoding="utf-8")
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old",
                                        dir=path.parent))
            old.rmdir()
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            old.rename(path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def report_json(report: Report) -> dict[str, Any]:
    return {"threshold": report.threshold, "exclude_target": report.exclude_target,
            "notes": report.notes,
            "groups": [{"dataset": g.dataset, "pattern": g.pattern, "targets": g.targets,
                        "recipe": g.recipe, "recipe_id": g.recipe_id, "epochs": g.epochs,
                        "runs": list(g.runs), "baseline": list(g.baseline),
                        "comparison": g.comparison.as_dict()} for g in report.groups],
            "mitigations": [_with_reasons(record) for record in mitigation_records(report)],
            "removals": [asdict(point) for point in report.removals]}


def _with_reasons(record: dict[str, Any]) -> dict[str, Any]:
    """A mitigation record with ``why_null`` for an SEM that cannot be given."""
    reasons = {key: "an n with a single run: its standard error, and so this one, is "
                    "undefined" for key in ("score_sem", "clean_accuracy_sem")
               if record[key] is None or math.isnan(record[key])}
    return {**record, **({WHY_NULL: reasons} if reasons else {})}


def dumps(data: Any) -> str:
    """``report.json`` and ``rsc report --json``: strict JSON (``rsc_core.json_output``)."""
    return to_json(data) + "\n"


# --- figures --------------------------------------------------------------------------------

def curve_panels(groups: Sequence[CurveGroup], quantity: str) -> list[Any]:
    """One panel per dataset, one curve per pattern (and target / seed protocol where these
    differ within the panel); ``quantity`` is ``score`` or ``clean_accuracy``."""
    from rsc_core.plots import Curve, Panel

    by_dataset: dict[str, list[CurveGroup]] = defaultdict(list)
    for group in groups:
        by_dataset[group.dataset].append(group)
    panels = []
    for dataset, members in by_dataset.items():
        targets = len({m.targets for m in members}) > 1
        protocols = len({(m.pattern, m.targets) for m in members}) < len(members)
        curves = []
        for m in members:
            label = pattern_label(m.pattern)
            if targets:
                label += f", target {m.targets}"
            if protocols and m.comparison.seeds is not None:
                label += f" ({m.comparison.seeds.name})"
            rows = m.comparison.rows
            curves.append(Curve(label, [r.n for r in rows],
                                [getattr(r, f"{quantity}_mean") for r in rows],
                                [getattr(r, f"{quantity}_sem") for r in rows],
                                [r.runs for r in rows]))
        ylabel = "spurious score" if quantity == "score" else "clean test accuracy"
        panels.append(Panel(dataset, ylabel, curves,
                            "best" if quantity == "score" else "lower right",
                            zoom=quantity != "score"))
    return panels


def before_after_points(report: Report) -> list[Any]:
    """The report's removals as ``plots.BeforeAfter`` points: a panel per dataset, pattern,
    target and n, a point per variant (its options' hash added where two share a name)."""
    from rsc_core.plots import BeforeAfter

    points = []
    for r in sorted(report.removals, key=lambda r: (r.dataset, r.pattern, r.targets, r.n,
                                                    r.variant, r.recipe_id)):
        panel = f"{r.dataset} {pattern_label(r.pattern)}, target {r.targets}, n = {r.n}"
        twins = [o for o in report.removals if (o.dataset, o.pattern, o.targets, o.n,
                                                o.variant) == (r.dataset, r.pattern,
                                                               r.targets, r.n, r.variant)]
        label = r.variant + (f" ({r.recipe_id[:6]})" if len(twins) > 1 else "")
        points.append(BeforeAfter(panel, label, r.runs, (r.score_before, r.score_after),
                                  (r.clean_before, r.clean_after)))
    return points


def pattern_label(pattern: str) -> str:
    """``v8 (S3)``: the reference's name with the paper's, where the plugin has one."""
    from rsc_core import registry

    try:
        aliases = registry("patterns").get(pattern).aliases
    except RscError:
        return pattern
    paper = next((a for a in aliases if len(a) == 2 and a[0] in "sr" and a[1].isdigit()), None)
    return f"{pattern} ({paper.upper()})" if paper else pattern


def by_recipe(groups: Sequence[CurveGroup]) -> dict[str, list[CurveGroup]]:
    """Groups per recipe, in report order: each recipe gets its own figures."""
    recipes: dict[str, list[CurveGroup]] = {}
    for group in groups:
        recipes.setdefault(group.recipe, []).append(group)
    return recipes
