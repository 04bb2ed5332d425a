"""Reports from the results index (rsc_core.report, `rsc report`), the input-sensitivity curve
(rsc_core.sensitivity, `rsc sensitivity`) and the figures they draw. A small grid of real runs
is trained once on a tiny MNIST copy (1 epoch, LargeMLP): a clean run, v8 and v20 at n = 1
and 2 with dataset seeds 0 and 1, and a weight-decay recipe beside it."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_idx_dataset
import strict_json

from rsc_cli.main import cli
from rsc_core.analysis.compare import compare_runs
from rsc_core.errors import RscError
from rsc_core.plots import Curve, Panel, build_n_figure, fit_title
from rsc_core.reports.report import (build_report, check_output_folder, curve_panels,
    mitigation_rows, _split_protocols, latex_escape, score_records)
from rsc_core.runs.index import list_runs
from rsc_core.runs.folder import Run
from rsc_core.runs.training import train_run
from rsc_core.analysis.sensitivity import erased, erasure_order, sensitivity_curve
from rsc_core.data.spec import SpuriousSpec
from rsc_core.training.trainer import TrainConfig

PNG = b"\x89PNG\r\n\x1a\n"
WD = ({"name": "weight-decay", "params": {"value": 0.01}},)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """(runs root, data root): 13 finished tiny runs."""
    base = tmp_path_factory.mktemp("report-grid")
    data = base / "data"
    dataset = write_idx_dataset(data, "MNIST", seed=3, n_train=60, n_test=40)
    target = int(np.bincount(dataset.train.labels).argmax())  # has >= 2 training images
    runs = base / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RSC_CACHE_DIR", str(base / "cache"))
        for regularisers in ((), WD):
            config = TrainConfig(epochs=1, batch_size=16, regularisers=regularisers)
            specs = [SpuriousSpec.build("mnist")]
            if not regularisers:
                specs += [SpuriousSpec.build("mnist", p, n, (target,), s)
                          for p in ("v8", "v20") for n in (1, 2) for s in (0, 1)]
            else:
                specs += [SpuriousSpec.build("mnist", "v8", n, (target,), s)
                          for n in (1, 2) for s in (0, 1)]
            for spec in specs:
                train_run(spec, config, runs_dir=runs, data_dir=data, progress=False,
                          device="cpu")
    return runs, data, target


def test_report_pools_per_recipe_with_compare_statistics(grid):
    runs, data, target = grid
    report = build_report(list_runs(None, runs), data_dir=data, device="cpu")
    keys = [(g.pattern, g.regularisers) for g in report.groups]
    assert sorted(keys) == [("v20", ""), ("v8", ""), ("v8", "weight-decay:value=0.01")]
    for group in report.groups:
        # every pooled run has the group's recipe; the numbers are compare_runs' own
        members = [Run(runs / name) for name in group.runs]
        assert {m.config["train"]["regularisers"] != [] for m in members} == {
            group.regularisers != ""}
        assert len(group.runs) == 4 and len(group.baseline) == 1
        expected = compare_runs(members, [Run(runs / b) for b in group.baseline],
                                data_dir=data, device="cpu")
        assert repr(group.comparison) == repr(expected)  # (NaN SEMs of single runs)
        assert [r.n for r in group.comparison.rows] == [0, 1, 2]
        assert group.comparison.seeds.name == "dataset-seeds"
    records = score_records(report)
    assert len(records) == 9 and {r["p_value"] for r in records if r["n"] == 0} == {"baseline"}
    assert all(isinstance(r["p_value"], float) for r in records if r["n"] > 0)


def test_mitigation_table_averages_over_n(grid):
    runs, data, _ = grid
    report = build_report(list_runs("pattern=v8 or pattern=null", runs), data_dir=data,
                          device="cpu")
    rows = report.mitigations
    assert [r.mitigation for r in rows] == ["none", "weight-decay:value=0.01"]
    for row in rows:
        group = next(g for g in report.groups
                     if (g.regularisers or "none") == row.mitigation)
        means = [p.score_mean for p in group.comparison.rows]
        sems = [p.score_sem for p in group.comparison.rows]
        assert row.score_mean == pytest.approx(sum(means) / len(means))
        assert math.isnan(row.score_sem) if any(map(math.isnan, sems)) else \
            row.score_sem == pytest.approx(math.sqrt(sum(s * s for s in sems)) / len(sems))
        assert row.ns == (0, 1, 2) and row.runs == 5
    assert mitigation_rows([g for g in report.groups if not g.regularisers]) == []


def test_groups_without_baseline_and_unfinished_runs_are_noted(grid):
    runs, data, _ = grid
    rows = list_runs("pattern=v20", runs)
    rows.append({**rows[0], "status": "interrupted", "name": "x"})
    report = build_report(rows, data_dir=data, device="cpu")
    assert any("1 unfinished" in n for n in report.notes)
    assert any("no clean run with this recipe" in n for n in report.notes)
    assert [r.p_value for r in report.groups[0].comparison.rows] == [None, None]
    with pytest.raises(RscError, match="no finished spurious runs"):
        build_report(list_runs("pattern=null", runs), data_dir=data, device="cpu")


def test_mixed_seed_protocols_are_split_not_pooled():
    rows = [{"dataset_seed": d, "train_seed": t} for d, t in
            [(0, 0), (1, 0), (2, 0), (1, 1), (2, 2), (3, 3)]]
    subsets = _split_protocols(rows)
    pairs = [sorted((r["dataset_seed"], r["train_seed"]) for r in s) for s in subsets]
    assert pairs == [[(0, 0), (1, 0), (2, 0)], [(1, 1), (2, 2), (3, 3)]]
    assert _split_protocols(rows[:3]) == [rows[:3]]


def rsc(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_cli_report_writes_figures_and_tables(grid, tmp_path):
    runs, data, _ = grid
    out = tmp_path / "report"
    result = rsc("report", "--runs-dir", str(runs), "--data-dir", str(data), "--device", "cpu",
                 "-o", str(out), "--where", "regularisers=''")
    assert result.exit_code == 0, result.output
    assert "pattern v8" in result.output and "pattern v20" in result.output
    for name in ("score-vs-n", "clean-accuracy-vs-n"):
        assert (out / f"{name}.png").read_bytes().startswith(PNG)
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    rows = list(csv.DictReader(io.StringIO((out / "scores.csv").read_text())))
    assert len(rows) == 6 and {r["pattern"] for r in rows} == {"v8", "v20"}
    assert all(0 <= float(r["score"]) <= 1 for r in rows)
    tex = (out / "scores.tex").read_text()
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "ce-tor-LargeMLP" in tex
    markdown = (out / "report.md").read_text()
    assert "![Spurious score vs n](score-vs-n.png)" in markdown and "symmetric-log" in markdown
    assert json.loads((out / "report.json").read_text())["groups"]
    assert not (out / "mitigations.csv").exists()
    # a second report replaces the first; with two recipes each gets its own figures
    again = rsc("report", "--runs-dir", str(runs), "--data-dir", str(data), "--device", "cpu",
                "-o", str(out))
    assert again.exit_code == 0, again.output
    assert not (out / "score-vs-n.png").exists()
    figures = sorted(p.name for p in out.glob("score-vs-n_*.png"))
    assert len(figures) == 2 and "## Mitigations" in (out / "report.md").read_text()
    assert (out / "mitigations.tex").is_file()


def test_cli_report_refuses_a_folder_of_other_files(grid, tmp_path):
    runs, data, _ = grid
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = rsc("report", "--runs-dir", str(runs), "--data-dir", str(data), "-o", str(out))
    assert result.exit_code == 2 and "not an rsc report" in result.output
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    bad = rsc("report", "--runs-dir", str(runs), "--where", "n>>3", "-o", str(tmp_path / "x"))
    assert bad.exit_code == 2 and bad.output.startswith("Error: cannot read --where")
    with pytest.raises(RscError, match="it is a file"):
        check_output_folder(out / "thesis.tex")


def test_n_figure_axes():
    curves = [Curve("v8 (S3)", [0, 1, 10, 100], [0.0, 0.1, 0.5, 0.9], [float("nan"), 0.01,
                                                                       0.02, 0.03],
                    [1, 3, 3, 3])]
    fig = build_n_figure([Panel("mnist", "spurious score", curves)], "Score vs n, 70 epochs")
    axis = fig.axes[0]
    assert axis.get_ylim() == (0.0, 1.0) and axis.get_xscale() == "symlog"
    assert axis.get_xlim()[0] < 0 < axis.get_xlim()[1]  # n = 0 is on the axis
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0", "1", "10", "100"]
    assert axis.containers and axis.containers[0].has_yerr  # error bars
    title = fig._suptitle.get_text()
    assert "70 epochs" in title and "1-3 run(s) per point" in title and "SEM" in title
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_latex_escaping():
    assert latex_escape("a_b & 50% #1 {x}") == "a\\_b \\& 50\\% \\#1 \\{x\\}"


def test_erasure_zeroes_round_p_k_nonzero_positions():
    rng = np.random.RandomState(0)
    images = np.zeros((3, 2, 4, 4), dtype=np.float32)
    images[0, 0, :2, :] = 1.0  # 8 non-zero positions
    images[1, 1, 3, 3] = 0.5   # 1 non-zero position (second channel only)
    ranks, counts = erasure_order(images, rng)
    assert counts.tolist() == [8, 1, 0]
    tensor = torch.from_numpy(images)
    for p in (0.0, 0.25, 0.5, 1.0):
        out = erased(tensor, torch.from_numpy(ranks), torch.from_numpy(counts), p)
        nonzero = (out != 0).any(dim=1).flatten(1).sum(dim=1).tolist()
        assert nonzero == [8 - round(p * 8), 1 - round(p * 1), 0]
    half = erased(tensor, torch.from_numpy(ranks), torch.from_numpy(counts), 0.5)
    more = erased(tensor, torch.from_numpy(ranks), torch.from_numpy(counts), 0.75)
    assert ((half == 0) <= (more == 0)).all()  # the erased set only grows
    assert torch.equal(tensor, torch.from_numpy(images))  # input untouched


def test_sensitivity_curve_is_seeded_and_measures_true_class_probability(grid):
    runs, data, _ = grid
    run = Run(next(runs.glob("mnistv8-1-*-0_*-s0-*")))
    curve = sensitivity_curve(run, images=20, seed=5, data_dir=data, device="cpu")
    assert len(curve.fractions) == 51 and curve.fractions[1] == pytest.approx(0.02)
    assert curve.indices.tolist() == np.random.RandomState(5).choice(60, 20, False).tolist()
    from rsc_core.data.planting import build_spurious_dataset
    train = build_spurious_dataset(run.spec, data).train
    idx = torch.from_numpy(curve.indices)
    model = run.load_model().eval()
    with torch.no_grad():
        probs = torch.softmax(model(train.images[idx]), 1)[torch.arange(20), train.labels[idx]]
        blank = torch.softmax(model(torch.zeros_like(train.images[idx])), 1)
    assert curve.mean_probability[0] == pytest.approx(probs.mean().item(), abs=1e-6)
    # p = 1 erases every non-zero pixel: each image becomes the blank image
    expected = blank[torch.arange(20), train.labels[idx]].mean().item()
    assert curve.mean_probability[-1] == pytest.approx(expected, abs=1e-6)
    again = sensitivity_curve(run, images=20, seed=5, data_dir=data, device="cpu")
    assert np.array_equal(again.mean_probability, curve.mean_probability)


def test_cli_sensitivity(grid, tmp_path):
    runs, data, _ = grid
    folders = sorted(str(p) for p in runs.glob("mnist*-s0-*"))[:2]
    out = tmp_path / "s.png"
    result = rsc("sensitivity", *folders, "--images", "10", "--data-dir", str(data),
                 "--device", "cpu", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert len(report["curves"]) == 2 and len(report["curves"][0]["indices"]) == 10
    assert out.read_bytes().startswith(PNG)
    bad = rsc("sensitivity", folders[0], "--images", "0", "-o", str(out))
    assert bad.exit_code == 2 and "--images must be at least 1" in bad.output


def test_sensitivity_of_a_subset_run_uses_the_rows_it_trained_on(grid, tmp_path):
    from rsc_core.data.subsets import TrainSubset

    runs, data, target = grid
    spec = SpuriousSpec.build("mnist", "v8", 1, (target,), 0)
    subset = TrainSubset("exclude", tuple(range(20)))
    outcome = train_run(spec, TrainConfig(epochs=1, batch_size=16), runs_dir=tmp_path,
                        data_dir=data, progress=False, device="cpu", subset=subset)
    curve = sensitivity_curve(outcome.run, images=100, data_dir=data, device="cpu")
    assert len(curve.indices) == 40  # all 40 rows it trained on, of the 60


@pytest.mark.parametrize("panels", [1, 2])
def test_a_long_figure_title_is_wrapped_inside_the_figure(panels):
    """A recipe in the title once ran past both edges of a one-panel PNG (seen in a real
    report): every line of the drawn title must lie inside the figure."""
    curve = Curve("v8 (S3)", [0, 3], [0.0, 0.5], [0.0, 0.1], [1, 3])
    long = ("Spurious score vs n: ce-tor-LargeMLP adam lr0.01 b128 e70 wd0.0001 noise0.1 "
            "clip1.0, 70 epochs, dataset seeds 0-2")
    fig = build_n_figure([Panel(f"d{i}", "spurious score", [curve]) for i in range(panels)],
                         long)
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1
    assert "dataset seeds 0-2" in fig._suptitle.get_text().replace("\n", " ")


# --- issue 26: only seeds of one experiment pool ---------------------------------------------

@pytest.fixture(scope="module")
def variants(grid, tmp_path_factory):
    """Runs that share spec and recipe but not training rows or removal: v8 n = 1, seeds 0
    and 1, trained on all rows, without their planted rows, without rows 1-3; a weight-decay
    run; a clean run on kept rows (an ``rsc mia`` shadow); removals of the whole-set runs."""
    from rsc_core.removal.runs import remove_run
    from rsc_core.data.subsets import TrainSubset

    _, data, target = grid
    runs = tmp_path_factory.mktemp("variants") / "runs"
    config = TrainConfig(epochs=1, batch_size=16)
    made = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RSC_CACHE_DIR", str(runs.parent / "cache"))

        def train(key, spec, subset=None, train_config=config):
            made[key] = train_run(spec, train_config, runs_dir=runs, data_dir=data,
                                  progress=False, device="cpu", subset=subset).run

        for seed in (0, 1):
            spec = SpuriousSpec.build("mnist", "v8", 1, (target,), seed)
            train(f"full{seed}", spec)
            planted = made[f"full{seed}"].metrics["spurious_indices"]
            train(f"spurious{seed}", spec, TrainSubset.excluding(planted))
            train(f"rows{seed}", spec, TrainSubset.excluding([1, 2, 3]))
            train(f"wd{seed}", spec, train_config=TrainConfig(epochs=1, batch_size=16,
                                                              regularisers=WD))
        train("clean", SpuriousSpec.build("mnist"))
        train("shadow", SpuriousSpec.build("mnist"), TrainSubset.keeping(range(0, 60, 2)))
        for seed in (0, 1):
            for method, options in (("retrain", {}), ("incremental-retraining",
                                                      {"extra_epochs": 1}),
                                    ("group-influence", {"compat": "reference", "scale": 500.0,
                                                         "depth": 3, "repeats": 1})):
                made[f"{method}{seed}"] = remove_run(
                    made[f"full{seed}"].path, method, "spurious", options, runs_dir=runs,
                    data_dir=data, device="cpu").run
    return runs, data, made


@pytest.mark.parametrize("first, second, field", [
    ("incremental-retraining0", "group-influence1", "removal.method"),
    ("full0", "retrain1", "removal.method"),
    ("full0", "spurious1", "subset"),
    ("spurious0", "rows1", "subset"),
])
def test_compare_refuses_runs_that_are_not_seeds_of_one_experiment(variants, first, second,
                                                                   field):
    _, data, made = variants
    with pytest.raises(RscError, match=f"differs from .* in {field} "):
        compare_runs([made[first], made[second]], [made["clean"]], data_dir=data,
                     device="cpu")


def test_compare_pools_seeds_of_one_removal_and_of_one_subset(variants):
    _, data, made = variants
    for key in ("group-influence", "retrain", "spurious"):
        comparison = compare_runs([made[f"{key}0"], made[f"{key}1"]], [made["clean"]],
                                  data_dir=data, device="cpu")
        assert [r.runs for r in comparison.rows] == [1, 2]


def test_compare_refuses_a_baseline_trained_on_other_rows(variants):
    """An ``rsc mia`` shadow (clean, on kept rows) is no baseline for whole-set runs."""
    _, data, made = variants
    runs = [made["full0"], made["full1"]]
    with pytest.raises(RscError, match=r"baseline .* on other rows than the runs: subset "
                                       r"\(None vs 'keep30-.*--allow-mixed"):
        compare_runs(runs, [made["shadow"]], data_dir=data, device="cpu")
    with pytest.warns(UserWarning, match="on other rows than the runs"):
        compare_runs(runs, [made["shadow"]], data_dir=data, device="cpu",
                     allow_mixed_baseline=True)


def test_report_keeps_experiments_apart_and_labels_them(variants):
    runs, data, made = variants
    report = build_report(list_runs(None, runs), data_dir=data, device="cpu")
    groups = {frozenset(g.runs): g for g in report.groups}
    for key in ("full", "spurious", "rows", "wd", "retrain", "incremental-retraining",
                "group-influence"):
        names = frozenset(made[f"{key}{seed}"].name for seed in (0, 1))
        assert names in groups, key  # exactly the two seeds, nothing else
    assert len(report.groups) == 7
    assert len({g.recipe for g in report.groups}) == 7  # no two groups labelled alike
    baseline = {g.recipe: g.baseline for g in report.groups}
    full = groups[frozenset(made[f"full{s}"].name for s in (0, 1))]
    assert full.baseline == (made["clean"].name,)  # never the shadow on kept rows
    # the mitigation table compares regularisers of one experiment, never a removal's "none"
    labels = [(m.base_recipe, m.mitigation) for m in report.mitigations]
    assert len(labels) == len(set(labels)) == 2
    assert [m.mitigation for m in report.mitigations] == ["none", "weight-decay:value=0.01"]
    assert all("rm-" not in m.base_recipe for m in report.mitigations)
    assert baseline


def test_removal_folders_written_before_the_rule_pool_with_new_ones(variants):
    """A removal folder from before issue 26 records no pool identity: it reads as a removal
    of a whole-set source, forgetting ``spurious`` when no planted row remains."""
    from rsc_core.runs.pooling import pool_identity, pool_mismatch

    _, _, made = variants
    for key in ("retrain0", "group-influence1"):
        run = made[key]
        legacy = json.loads(json.dumps(run.metrics))
        del legacy["removal"]["pool"]
        config = {k: v for k, v in run.config.items() if k != "subset"}  # dropped then
        assert pool_mismatch(pool_identity(run.config, run.metrics),
                             pool_identity(config, legacy)) is None
        assert pool_identity(config, legacy)["removal.forget"] == "spurious"


def test_sensitivity_of_a_removal_uses_the_rows_it_stands_for(variants):
    """A removal folder records its rows (the source's without the forget set); before issue
    26 it dropped its source's subset and drew images from the whole training set."""
    _, data, made = variants
    removal = made["retrain0"]
    curve = sensitivity_curve(removal, images=1000, steps=2, data_dir=data, device="cpu")
    assert len(curve.indices) == 60 - 1  # every row but the one forgotten planted image
    subset = sensitivity_curve(made["spurious0"], images=1000, steps=2, data_dir=data,
                               device="cpu")
    assert len(subset.indices) == 60 - 1


def test_cli_compare_refusal_is_one_line_naming_the_field(variants):
    _, data, made = variants
    result = rsc("compare", str(made["incremental-retraining0"].path),
                 str(made["group-influence1"].path), "--data-dir", str(data), "--device", "cpu")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "in removal.method ('incremental-retraining' vs 'group-influence')" in result.output


# --- issue 25: figures that say something ------------------------------------------------

def test_a_zoom_panel_is_drawn_twice_once_zoomed_and_labelled_so():
    """Clean accuracy near 0.98 is a flat line on a 0-1 axis: its panel is drawn again beside
    itself with the y axis fitted to the data, and says it is zoomed."""
    import matplotlib.pyplot as plt

    curve = Curve("v8 (S3)", [0, 3, 10], [0.981, 0.979, 0.975], [0.001, 0.002, 0.001],
                  [3, 3, 3])
    fig = build_n_figure([Panel("mnist", "clean test accuracy", [curve], zoom=True)],
                         "Clean test accuracy vs n, 70 epochs")
    fixed, zoomed = fig.axes
    assert fixed.get_ylim() == (0.0, 1.0) and "zoomed" not in fixed.get_ylabel()
    low, high = zoomed.get_ylim()
    assert 0.9 < low < 0.974 and 0.983 < high < 1.0  # every bar inside, 0 not on it
    assert "zoomed" in zoomed.get_ylabel() and "zoomed" in zoomed.get_title()
    plt.close(fig)
    panels = curve_panels([], "clean_accuracy")
    assert panels == []  # (no groups, no panels; the report's own test checks zoom=True)


def test_the_report_zooms_clean_accuracy_but_not_the_score(grid):
    runs, data, _ = grid
    report = build_report(list_runs("regularisers=''", runs), data_dir=data, device="cpu")
    assert all(p.zoom for p in curve_panels(report.groups, "clean_accuracy"))
    assert not any(p.zoom for p in curve_panels(report.groups, "score"))


@pytest.mark.parametrize("width", [6.4, 9.2, 13.8])
def test_titles_wrap_between_words_never_inside_one(width):
    """A hyphenated recipe (ce-tor-LargeMLP, rm-group-influence-cg-correct) or a run folder
    longer than a line used to be cut at a hyphen or mid-word."""
    title = ("Spurious score vs n: ce-tor-LargeMLP adam lr0.01 b128 e70 "
             "rm-group-influence-cg-correct, 70 epochs; removal of "
             "mnistv20-3-0-0_ce-tor-LargeMLP_adam-lr0.01-b128-e70-s0-cb785be470_rm-group-"
             "influence-lissa-reference-a01fa5d796 over dataset seeds 0-2\n3 run(s) per point")
    wrapped = fit_title(title, width)
    assert wrapped.split() == title.split()  # the same words, none broken
    assert len(wrapped.splitlines()) > len(title.splitlines())  # and it did wrap


def test_weight_map_colour_bars_say_what_the_colour_means():
    import matplotlib.pyplot as plt
    from rsc_core.analysis.weight_maps import (DIFFERENCE_LABEL, MAP_LABEL, WeightMap,
        build_weight_maps)

    rng = np.random.default_rng(0)
    maps = [WeightMap(name, rng.normal(size=(28, 28))) for name in ("before", "after")]
    fig = build_weight_maps(maps, "first-layer weight maps and their difference")
    labels = [axis.get_ylabel() for axis in fig.axes if axis.get_label() == "<colorbar>"]
    assert labels == [MAP_LABEL, MAP_LABEL, DIFFERENCE_LABEL]
    plt.close(fig)


def test_removal_variants_share_one_before_after_figure(variants, tmp_path):
    """Each removal variant once got its own one-point score-vs-n figure; now every variant
    is one point pair (its source runs before, the removal runs after) in one figure."""
    import matplotlib.pyplot as plt
    from rsc_core.plots import build_before_after
    from rsc_core.reports.report import before_after_points

    runs, data, made = variants
    out = tmp_path / "report"
    result = rsc("report", "--runs-dir", str(runs), "--data-dir", str(data), "--device", "cpu",
                 "-o", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "removals.png").read_bytes().startswith(PNG)
    assert not [p.name for p in out.glob("*rm-*")]  # no figure per variant
    removals = strict_json.loads((out / "report.json").read_text())["removals"]
    assert sorted(r["variant"] for r in removals) == [
        "group-influence-lissa-reference", "incremental-retraining-e1", "retrain"]
    report = build_report(list_runs("removal != null", runs), data_dir=data, device="cpu")
    sources = compare_runs([made["full0"], made["full1"]], [], data_dir=data, device="cpu")
    for point in report.removals:  # before: the sources, scored as the removals are
        assert point.n == 1 and point.runs == 2
        assert point.score_before[0] == pytest.approx(sources.rows[0].score_mean)
        assert point.clean_before[0] == pytest.approx(sources.rows[0].clean_accuracy_mean)
    retrain = next(p for p in report.removals if p.variant == "retrain")
    after = compare_runs([made["retrain0"], made["retrain1"]], [], data_dir=data,
                         device="cpu").rows[0]
    assert retrain.score_after[0] == pytest.approx(after.score_mean)
    fig = build_before_after(before_after_points(report), "Before and after removal")
    score_axis, clean_axis = fig.axes
    assert len(score_axis.get_xticks()) == 3 and score_axis.get_ylim() == (0.0, 1.0)
    assert "zoomed" in clean_axis.get_ylabel()
    plt.close(fig)
