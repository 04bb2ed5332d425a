"""Membership inference: the metrics against hand-computed ROC points, LiRA's Gaussian fit on a
hand example, every attack on constructed problems (members detectable by construction, and
members exchangeable with non-members), and ``rsc mia`` end to end on a tiny dataset,
including bad input that must give one line and write nothing."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from scipy.stats import norm

import rsc_core
from rsc_cli.main import cli
from rsc_core.attacks import (CLEAN_HALVES, SHADOW_POOL, TARGET_HALVES, AttackOutput,
                              Observations)
from rsc_core.errors import ConfigError, RscError, UnknownNameError
from rsc_core.membership import membership_split, parse_membership_spec
from rsc_core.membership_metrics import (membership_metrics, roc_points, threshold_at_fpr,
                                         tpr_at_fpr)
from rsc_core.membership_summary import summarise
from rsc_core.mia import create_attacks, plan_models
from rsc_core.training import TrainConfig
from rsc_plugins.attacks.lira import fit_gaussian, logit_confidence
from rsc_plugins.attacks.loss_threshold import best_threshold

# -- metrics ------------------------------------------------------------------------------------
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
MEMBER = np.array([1, 1, 0, 1, 0, 0], dtype=bool)


def test_roc_points_match_a_hand_computation():
    fpr, tpr, thresholds = roc_points(MEMBER, SCORES)
    # lowering the threshold past each score in turn: 1, 1, 0, 1, 0, 0
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert thresholds[1:].tolist() == SCORES.tolist()
    assert tpr_at_fpr(MEMBER, SCORES, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(MEMBER, SCORES, 0.34) == pytest.approx(1.0)
    assert threshold_at_fpr(MEMBER, SCORES, 0.01) == 0.8


def test_membership_metrics_by_hand():
    decisions = SCORES >= 0.65  # TPR 2/3, TNR 2/3
    spurious = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    same_class = np.array([0, 1, 0, 0, 0, 0], dtype=bool)
    m = membership_metrics(MEMBER, SCORES, decisions, spurious, same_class)
    assert m["auc"] == pytest.approx(8 / 9)  # 8 of 9 member/non-member pairs ordered right
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["tpr_at_0.1%_fpr"] == m["tpr_at_1%_fpr"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == pytest.approx(1 / 3)
    assert m["members"] == m["non_members"] == 3
    # threshold 0.8 at FPR <= 1%: of the spurious members (0.9, 0.6) only 0.9 passes
    assert m["spurious"] == {"count": 2, "member_rate": 0.5, "tpr_at_0.1%_fpr": 0.5,
                             "tpr_at_1%_fpr": 0.5}
    assert m["same_class_members"]["member_rate"] == 1.0
    empty = membership_metrics(MEMBER, SCORES, decisions, np.zeros(6, bool), None)
    assert empty["spurious"]["count"] == 0 and empty["spurious"]["member_rate"] is None


def test_metrics_refuse_one_sided_or_non_finite_input():
    with pytest.raises(RscError, match="both members and non-members"):
        membership_metrics(np.ones(3, bool), np.zeros(3), np.ones(3, bool))
    with pytest.raises(RscError, match="NaN"):
        membership_metrics(MEMBER, np.array([0.1, np.nan, 0, 0, 0, 0]), MEMBER)


# -- LiRA's pieces by hand ----------------------------------------------------------------------
def test_logit_confidence_is_log_odds_of_the_true_class():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 50.0, -50.0]])
    obs = Observations(logits, np.array([0, 2]), np.array([True, False]))
    p = math.exp(2) / (math.exp(2) + 2)
    assert logit_confidence(obs)[0] == pytest.approx(math.log(p / (1 - p)))
    assert logit_confidence(obs)[1] == pytest.approx(-100.0, abs=1e-9)  # p ~ e^-100, stable


def test_gaussian_fit_on_a_hand_example():
    phi = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [5.0, 40.0]])
    use = np.array([[1, 1], [1, 0], [1, 1], [0, 0]], dtype=bool)
    per = fit_gaussian(phi, use, pooled=False)
    assert per.mean.tolist() == pytest.approx([2.0, 20.0])  # (1+2+3)/3, (10+30)/2
    assert per.std.tolist() == pytest.approx([math.sqrt(2 / 3), 10.0])  # ddof 0
    pooled = fit_gaussian(phi, use, pooled=True)
    # deviations 1, 0, 1 and 10, 10 -> sqrt(202 / 5) for every example
    assert pooled.std.tolist() == pytest.approx([math.sqrt(202 / 5)] * 2)
    assert pooled.mean.tolist() == pytest.approx([2.0, 20.0])
    with pytest.raises(ConfigError, match="no shadow model"):
        fit_gaussian(phi, np.zeros_like(use), pooled=True)
    with pytest.raises(ConfigError, match="at least 2"):
        fit_gaussian(phi, np.eye(4, 2, dtype=bool), pooled=False)


def test_lira_online_score_is_the_gaussian_likelihood_ratio():
    # 4 shadows on 1 example; IN phi 3 and 5 (mean 4, sd 1), OUT phi 0 and 2 (mean 1, sd 1)
    shadows = [observe([phi], [member]) for phi, member in ((3, 1), (0, 0), (5, 1), (2, 0))]
    target = observe([3.5], [True])
    lira = rsc_core.create("attacks", "lira", shadows=4, variance="per-example")
    out = lira.attack(target, shadows)
    expected = norm.logpdf(3.5, 4, 1) - norm.logpdf(3.5, 1, 1)
    assert out.scores[0] == pytest.approx(expected) and out.decisions[0]
    offline = rsc_core.create("attacks", "lira-offline", shadows=4, variance="per-example")
    assert offline.attack(target, shadows).scores[0] == pytest.approx(norm.logcdf(3.5, 1, 1))


def test_loss_threshold_picks_the_best_separating_threshold():
    member = np.array([1, 1, 0, 1, 1, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # TPR - FPR by threshold: 0.9: 1/4, 0.8: 1/2, 0.7: 1/4, 0.6: 1/2, 0.5: 3/4 (best), 0.4: 1/2
    assert best_threshold(member, scores) == 0.5


# -- attacks on constructed problems ------------------------------------------------------------
CLASSES = 4


def observe(phi, member, labels=None) -> Observations:
    """Logits whose true-class log-odds are exactly ``phi`` (others 0, true log(C-1) + phi)."""
    phi = np.asarray(phi, dtype=np.float64)
    labels = np.zeros(phi.size, dtype=np.int64) if labels is None else labels
    logits = np.zeros((phi.size, CLASSES))
    logits[np.arange(phi.size), labels] = phi + math.log(CLASSES - 1)
    return Observations(logits, labels, np.asarray(member, dtype=bool))


def constructed(memorises: bool, shadows: int = 8, n: int = 300, seed: int = 0):
    """A world of examples with a per-example difficulty; a model's log-odds on an example is
    difficulty + noise, plus 8 when it trained on it and ``memorises``. Returns, per shadow
    design, the target's observations and the shadows'."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 2, size=2 * n)
    labels = rng.integers(0, CLASSES, size=2 * n)

    def model(member: np.ndarray, rows: np.ndarray) -> Observations:
        phi = difficulty[rows] + rng.normal(0, 0.5, rows.size) + 8.0 * memorises * member
        return observe(phi, member, labels[rows])

    target_rows, shadow_rows = np.arange(n), np.arange(n, 2 * n)  # two disjoint pools
    half = np.arange(n) < n // 2
    target = model(rng.permutation(half), target_rows)
    pool_shadow = model(rng.permutation(half), shadow_rows)
    halves = []
    for _ in range(shadows // 2):
        first = rng.permutation(half)
        halves += [model(first, target_rows), model(~first, target_rows)]
    return target, {SHADOW_POOL: [pool_shadow], TARGET_HALVES: halves, CLEAN_HALVES: halves}


ATTACKS = ["shadow-lr", "loss-threshold", "lira", "lira-offline"]


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_detects_a_model_that_memorises_its_members(name):
    attack = rsc_core.create("attacks", name, shadows=8)
    target, shadows = constructed(memorises=True)
    out = attack.attack(target, shadows[attack.shadow_design][:attack.num_shadows])
    metrics = membership_metrics(target.member, out.scores, out.decisions)
    assert metrics["auc"] > 0.97
    assert metrics["balanced_accuracy"] > 0.85
    assert isinstance(out, AttackOutput) and out.scores.shape == (len(target),)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_is_at_chance_when_members_are_exchangeable(name):
    attack = rsc_core.create("attacks", name, shadows=8)
    aucs = []
    for seed in range(3):
        target, shadows = constructed(memorises=False, seed=seed)
        out = attack.attack(target, shadows[attack.shadow_design][:attack.num_shadows])
        aucs.append(membership_metrics(target.member, out.scores, out.decisions)["auc"])
    assert abs(np.mean(aucs) - 0.5) < 0.05, aucs


def test_attacks_are_registered_and_mia_is_a_command():
    assert {"shadow-lr", "loss-threshold", "lira", "lira-offline"} <= set(
        rsc_core.list_names("attacks"))
    assert rsc_core.get("attacks", "loss").name == "loss-threshold"
    assert rsc_core.get("attacks", "lira-online").name == "lira"
    assert "mia" in rsc("--help").output


def test_attack_names_and_shadow_counts_are_checked():
    with pytest.raises(UnknownNameError, match="lira"):
        create_attacks(["lirra"], 16)
    with pytest.raises(ConfigError, match="at least 4"):
        create_attacks(["lira"], 2)
    with pytest.raises(ConfigError, match="even"):
        create_attacks(["lira-offline"], 5)
    with pytest.raises(ConfigError, match="twice"):
        create_attacks(["lira", "lira-online"], 16)
    assert [a.num_shadows for a in create_attacks(["shadow-lr", "lira"], 6)] == [1, 6]


def test_plan_trains_equal_sized_runs_and_shares_shadows_across_n():
    labels = np.random.RandomState(0).permutation(np.repeat(np.arange(10), 120))
    attacks = create_attacks(["shadow-lr", "lira", "lira-offline"], 4)
    config = TrainConfig(arch="MLP", epochs=1)
    plans = {n: plan_models(membership_split(parse_membership_spec(f"memmnistv20-{n}-0-0"),
                                             labels), config, attacks) for n in (1, 3)}
    sizes = {len(r.subset.indices) for plan in plans.values() for s in plan.values()
             for r in s.requests}
    assert len(sizes) == 1  # every model trains on as many rows: one multi-model group
    assert [len(plans[1][k].requests) for k in ("target", SHADOW_POOL, TARGET_HALVES,
                                                CLEAN_HALVES)] == [1, 1, 4, 4]
    for design in (SHADOW_POOL, CLEAN_HALVES):  # no planted image: the same runs for every n
        assert plans[1][design].requests == plans[3][design].requests
    assert plans[1][TARGET_HALVES].requests != plans[3][TARGET_HALVES].requests
    assert plans[1][SHADOW_POOL].requests[0].spec.is_clean
    assert len({r.config.seed for r in plans[1][TARGET_HALVES].requests}) == 4


# -- rsc mia end to end on a tiny dataset ---------------------------------------------------------
@pytest.fixture
def mem_data(tmp_path: Path, dataset_writers) -> Path:
    """An MNIST-format data root with 24 training images per class (240) and 40 test images.
    The split reserves half of class 0 (12) for the spurious draw, so every part holds 3
    images of class 0 and 6 of every other class: 57."""
    rng = np.random.RandomState(3)
    root = tmp_path / "data"
    for prefix, per_class in (("train", 24), ("t10k", 4)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = rng.randint(0, 256, size=(labels.size, 28, 28)).astype(np.uint8)
        dataset_writers.idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images)
        dataset_writers.idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def rsc(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, prog_name="rsc")


def base_args(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["mia", "--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"), "--quiet",
            *extra]


def mia_args(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    """A tiny recipe: an MLP, one epoch, batch 16."""
    return base_args(data, tmp_path, "--arch", "MLP", "--epochs", "1", "--batch-size", "16",
                     *extra)


def run_folders(tmp_path: Path) -> list[str]:
    runs = tmp_path / "runs"
    return sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) \
        if runs.is_dir() else []


def test_rsc_mia_trains_attacks_writes_and_reuses(mem_data, tmp_path):
    out = tmp_path / "result"
    args = mia_args(mem_data, tmp_path, "--spec", "memmnistv20-1-0-0", "--attack", "shadow-lr",
                    "--attack", "lira", "--attack", "lira-offline", "--shadows", "4",
                    "--out", str(out))
    result = rsc(*args, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "roc.png", "scores.csv",
                                                     "split.json"]
    assert json.loads((out / "metrics.json").read_text())["attacks"] == metrics["attacks"]
    assert set(metrics["attacks"]) == {"shadow-lr", "lira", "lira-offline"}
    for row in metrics["attacks"].values():
        assert 0 <= row["auc"] <= 1 and row["spurious"]["count"] == 1
    assert metrics["split"]["part_size"] == 57
    lines = (out / "scores.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 57 and lines[0].startswith("index,label,member,spurious")
    assert sum(int(line.split(",")[3]) for line in lines[1:]) == 1
    runs = run_folders(tmp_path)
    assert len(runs) == 1 + 1 + 4 + 4  # target, pool shadow, online and offline halves
    assert runs == sorted(sum(metrics["runs"].values(), []))
    # a second n reuses every shadow that holds no planted image
    again = rsc(*mia_args(mem_data, tmp_path, "--spec", "memmnistv20-2-0-0", "--attack",
                          "shadow-lr", "--attack", "lira-offline", "--shadows", "4",
                          "--out", str(tmp_path / "n2")))
    assert again.exit_code == 0, again.output
    assert "shadow-lr" in again.output and "results:" in again.output
    assert len(run_folders(tmp_path)) == len(runs) + 1  # only the new target
    # the same call again reuses everything and replaces the result in one piece
    assert rsc(*args).exit_code == 0
    assert len(run_folders(tmp_path)) == len(runs) + 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".result")]


def test_rsc_mia_attacks_a_given_target_run(mem_data, tmp_path):
    first = rsc(*mia_args(mem_data, tmp_path, "--spec", "memmnistv20-1-0-0", "--attack",
                          "loss-threshold", "--out", str(tmp_path / "a"), "--json"))
    target = json.loads(first.output)["runs"]["target"][0]
    before = run_folders(tmp_path)
    second = rsc(*base_args(mem_data, tmp_path, "--spec", "memmnistv20-1-0-0", "--attack",
                            "loss-threshold", "--out", str(tmp_path / "b"), "--target-run",
                            str(tmp_path / "runs" / target), "--json"))
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["runs"]["target"] == [target]
    assert run_folders(tmp_path) == before  # the shadow, of the run's recipe, is reused


def test_rsc_mia_several_specs_train_in_one_group(mem_data, tmp_path):
    result = rsc(*mia_args(mem_data, tmp_path, "--spec", "memmnistv20-{1,2}-0-0", "--attack",
                           "shadow-lr", "--out", str(tmp_path / "grid"), "--json"))
    assert result.exit_code == 0, result.output
    output = json.loads(result.output)
    rows = output["results"]
    assert [row["spec"]["name"] for row in rows] == ["memmnistv20-1-0-0", "memmnistv20-2-0-0"]
    for row in rows:
        assert (Path(row["folder"]) / "metrics.json").is_file()
        assert Path(row["folder"]).parent == tmp_path / "grid"
    assert [(r["n"], r["seeds"]) for r in output["summary"]] == [(1, [0]), (2, [0])]
    assert json.loads((tmp_path / "grid" / "summary.json").read_text()) == output["summary"]
    runs = run_folders(tmp_path)
    assert len(runs) == 3  # two targets and the one shadow both share
    for name in runs:  # all three trained together in the multi-model trainer
        assert "in a group of 3" in (tmp_path / "runs" / name / "log.txt").read_text()
    table = rsc(*mia_args(mem_data, tmp_path, "--spec", "memmnistv20-{1,2}-0-0", "--attack",
                          "shadow-lr", "--out", str(tmp_path / "grid")))
    assert "over seeds" in table.output and "mnistv20-2-0-0 " in table.output  # names whole


def test_summary_over_seeds_by_hand():
    def result(seed: int, accuracy: float, rate: float | None) -> dict:
        spurious = {"count": 3, "member_rate": rate, "tpr_at_1%_fpr": 0.0}
        attack = {"balanced_accuracy": accuracy, "auc": 0.5, "tpr_at_0.1%_fpr": 0.0,
                  "tpr_at_1%_fpr": 0.01, "spurious": spurious,
                  "same_class_members": {"member_rate": 0.5}}
        spec = {"dataset": "mnist", "pattern": "v20", "n": 3, "targets": [0], "seed": seed}
        return {"spec": {"spurious": spec}, "attacks": {"shadow-lr": attack, "lira": attack}}

    rows = summarise([result(0, 0.50, 1.0), result(1, 0.54, 0.0), result(2, 0.52, None)])
    study = rows[0]
    assert (study["attack"], study["seeds"]) == ("shadow-lr", [0, 1, 2])
    assert study["balanced_accuracy_mean"] == pytest.approx(0.52)
    assert study["balanced_accuracy_sem"] == pytest.approx(0.02 / math.sqrt(3))
    assert study["spurious_member_rate_mean"] == 0.5  # the seed without a rate is left out
    assert study["spurious_member_rate_sem"] == pytest.approx(0.5)
    assert study["reference"] == {"accuracy": 0.514, "spurious_member_rate": 0.77}
    assert rows[1]["attack"] == "lira" and rows[1]["reference"] is None
    one = summarise([result(0, 0.5, 1.0)])[0]
    assert one["balanced_accuracy_sem"] is None


def assert_error_and_nothing_written(result: Result, tmp_path: Path, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], \
        result.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("extra, fragment", [
    (("--spec", "mnistv20-1-0-0", "--attack", "shadow-lr"), "not a membership spec"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "lira", "--shadows", "2"), "at least 4"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "lira-offline", "--shadows", "3"), "even"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "shadow-lr", "--attack", "nope"), "nope"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "shadow-lr", "--train-seed", "0-1"),
     "one --train-seed"),
    (("--spec", "memmnistv20-50-0-0", "--attack", "shadow-lr"), "too large"),
    (("--spec", "memmnistv20-{1,2}-0-0", "--attack", "shadow-lr", "--target-run", "."),
     "one --spec"),
])
def test_rsc_mia_bad_input_is_one_line_and_writes_nothing(mem_data, tmp_path, extra, fragment):
    result = rsc(*mia_args(mem_data, tmp_path, *extra, "--out", str(tmp_path / "out")))
    assert_error_and_nothing_written(result, tmp_path, fragment)
    assert run_folders(tmp_path) == []


def test_rsc_mia_never_replaces_a_folder_that_is_not_a_result(mem_data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = rsc(*mia_args(mem_data, tmp_path, "--spec", "memmnistv20-1-0-0", "--attack",
                           "shadow-lr", "--out", str(mine)))
    assert result.exit_code == 2 and "not an earlier rsc mia result" in result.output
    assert (mine / "notes.txt").read_text() == "keep me"
    assert run_folders(tmp_path) == []


def test_rsc_mia_refuses_a_target_run_trained_on_other_data(mem_data, tmp_path):
    trained = rsc("train", "--spec", "mnistv20-1-0-0", "--data-dir", str(mem_data), "--runs-dir",
                  str(tmp_path / "runs"), "--arch", "MLP", "--epochs", "1", "--quiet", "--json")
    assert trained.exit_code == 0, trained.output
    run = json.loads(trained.output)["run"]
    before = run_folders(tmp_path)
    base = base_args(mem_data, tmp_path, "--spec", "memmnistv20-1-0-0", "--attack", "shadow-lr",
                     "--out", str(tmp_path / "out"))
    result = rsc(*base, "--target-run", run)
    assert_error_and_nothing_written(result, tmp_path, "not on the target training set")
    assert run_folders(tmp_path) == before
    flags = rsc(*base, "--target-run", run, "--epochs", "3")
    assert_error_and_nothing_written(flags, tmp_path, "drop --epochs")
