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
import strict_json
from rsc_cli.main import cli
from rsc_core.privacy.attacks import (CLEAN_HALVES, SHADOW_POOL, TARGET_HALVES, AttackOutput,
    Observations, Population)
from rsc_core.errors import ConfigError, RscError, UnknownNameError
from rsc_core.data.membership import membership_split, parse_membership_spec
from rsc_core.privacy.metrics import (clopper_pearson, membership_metrics, rate_difference,
    roc_points, threshold_at_fpr, tpr_at_fpr)
from rsc_core.privacy.summary import summarise
from rsc_core.privacy.experiment import create_attacks, plan_models
from rsc_core.training.trainer import TrainConfig
from rsc_plugins.attacks.lira import fit_side, logit_confidence
from rsc_plugins.attacks.loss_threshold import best_threshold
from rsc_plugins.attacks.rmia import pairwise_share
from rsc_plugins.attacks.shadow_lr import features, reference_logits

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
    planted = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    same_class = np.array([0, 1, 0, 0, 0, 0], dtype=bool)
    control = np.array([0.95, 0.7, 0.1, 0.85])  # scored like the pool, outside it
    m = membership_metrics(MEMBER, SCORES, decisions, planted, same_class, control,
                           control >= 0.65)
    assert m["auc"] == pytest.approx(8 / 9)  # 8 of 9 member/non-member pairs ordered right
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["tpr_at_0.1%_fpr"] == m["tpr_at_1%_fpr"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == pytest.approx(1 / 3)  # the control is not in it
    assert m["members"] == m["non_members"] == 3
    # threshold 0.8 at FPR <= 1%: of the planted members (0.9, 0.6) only 0.9 passes
    assert m["planted"] == {"count": 2, "member_rate": 0.5, "tpr_at_0.1%_fpr": 0.5,
                            "tpr_at_1%_fpr": 0.5}
    assert m["same_class_members"]["member_rate"] == 1.0
    # the control at the same threshold 0.8: 0.95 and 0.85 pass; decisions 0.95, 0.7, 0.85
    assert m["patterned_nonmembers"] == {"count": 4, "member_rate": 0.75,
                                         "tpr_at_0.1%_fpr": 0.5, "tpr_at_1%_fpr": 0.5}
    difference = m["planted_minus_patterned_nonmembers"]["tpr_at_1%_fpr"]
    assert difference["difference"] == 0.0
    (l1, h1), (l2, h2) = clopper_pearson(1, 2), clopper_pearson(2, 4)
    assert difference["low"] == pytest.approx(-math.hypot(0.5 - l1, h2 - 0.5))
    assert difference["high"] == pytest.approx(math.hypot(h1 - 0.5, 0.5 - l2))
    empty = membership_metrics(MEMBER, SCORES, decisions, np.zeros(6, bool), None)
    assert empty["planted"]["count"] == 0 and empty["planted"]["member_rate"] is None
    assert empty["patterned_nonmembers"]["count"] == 0
    assert empty["planted_minus_patterned_nonmembers"]["member_rate"] is None


def test_clopper_pearson_and_the_difference_interval_by_hand():
    # 0 of 3: upper bound 1 - 0.025^(1/3); 3 of 3: lower bound 0.025^(1/3)
    assert clopper_pearson(0, 3) == pytest.approx((0.0, 1 - 0.025 ** (1 / 3)))
    assert clopper_pearson(3, 3) == pytest.approx((0.025 ** (1 / 3), 1.0))
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.187086, abs=1e-6) and high == pytest.approx(0.812914,
                                                                                abs=1e-6)
    # 3 of 3 planted against 1 of 1000 controls: clearly above zero
    d = rate_difference({"count": 3, "member_rate": 1.0, "tpr_at_0.1%_fpr": None,
                         "tpr_at_1%_fpr": 1.0},
                        {"count": 1000, "member_rate": 0.001, "tpr_at_0.1%_fpr": 0.0,
                         "tpr_at_1%_fpr": 0.001})
    assert d["tpr_at_0.1%_fpr"] is None
    assert d["tpr_at_1%_fpr"]["difference"] == pytest.approx(0.999)
    assert 0.25 < d["tpr_at_1%_fpr"]["low"] < 0.3  # 1 - 0.292 (the 3/3 bound) - ~0.005
    # the upper end: 3/3 has no room above; 1/1000's lower bound is 2.5e-5 below 0.001
    assert d["tpr_at_1%_fpr"]["high"] == pytest.approx(0.999 + 0.001 - clopper_pearson(
        1, 1000)[0], abs=1e-12)


def test_an_unscored_control_is_reported_as_such():
    m = membership_metrics(MEMBER, SCORES, SCORES >= 0.65, None, None,
                           np.array([np.nan, np.nan]), np.array([False, False]))
    control = m["patterned_nonmembers"]
    assert control["count"] == 2 and control["member_rate"] is None
    assert "cannot score" in control["unscored"]


def test_metrics_refuse_one_sided_or_non_finite_input():
    with pytest.raises(RscError, match="both members and non-members"):
        membership_metrics(np.ones(3, bool), np.zeros(3), np.ones(3, bool))
    with pytest.raises(RscError, match="NaN"):
        membership_metrics(MEMBER, np.array([0.1, np.nan, 0, 0, 0, 0]), MEMBER)


# -- exact per-example statistics --------------------------------------------------------------
def test_losses_and_log_odds_do_not_round_to_zero():
    # other classes' probabilities ~ e^-40 each: 1 + 2e^-40 rounds to 1, the old loss to 0
    obs = Observations(np.array([[40.0, 0.0, 0.0], [0.0, 50.0, -50.0], [45.0, 0.0, 1.0]]),
                       np.array([0, 2, 0]), np.array([True, False, True]))
    losses = obs.losses()
    assert losses[0] == pytest.approx(2 * math.exp(-40), rel=1e-12)
    assert losses[2] == pytest.approx(math.exp(-45) + math.exp(-44), rel=1e-12)
    assert losses[0] != losses[2] and (losses > 0).all()  # no ties at exactly 0
    assert losses[1] == pytest.approx(100.0 + math.log1p(math.exp(-50)), rel=1e-12)


def test_logit_confidence_is_log_odds_of_the_true_class():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 50.0, -50.0]])
    obs = Observations(logits, np.array([0, 2]), np.array([True, False]))
    p = math.exp(2) / (math.exp(2) + 2)
    assert logit_confidence(obs)[0] == pytest.approx(math.log(p / (1 - p)))
    assert logit_confidence(obs)[1] == pytest.approx(-100.0, abs=1e-9)  # p ~ e^-100, stable


# -- LiRA's pieces by hand ----------------------------------------------------------------------
PHI = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [5.0, 40.0]])
USE = np.array([[1, 1], [1, 0], [1, 1], [0, 0]], dtype=bool)


def test_lira_side_fit_follows_the_authors_procedure():
    # example 0 has 3 observations (1, 2, 3), example 1 has 2 (10, 30): both are cut to 2,
    # in shadow order: (1, 2) and (10, 30)
    median = fit_side(PHI, USE, "median", "per-example")
    assert median.mean.tolist() == pytest.approx([1.5, 20.0])
    assert median.std.tolist() == pytest.approx([0.5, 10.0])  # ddof 0, + 1e-30
    assert fit_side(PHI, USE, "mean", "per-example").mean.tolist() == pytest.approx([1.5, 20])
    odd = fit_side(PHI, np.array([[1, 1], [1, 1], [1, 1], [0, 0]], bool), "median",
                   "per-example")
    assert odd.mean.tolist() == pytest.approx([2.0, 20.0])  # the median, not the mean of 3
    # fixed: ONE standard deviation of all kept values (1, 2, 10, 30) around their mean
    fixed = fit_side(PHI, USE, "median", "fixed")
    assert fixed.std.tolist() == pytest.approx([np.std([1, 2, 10, 30])] * 2)
    # pooled (rsc's earlier default): deviations from each example's own mean, all rows
    pooled = fit_side(PHI, USE, "mean", "pooled")
    assert pooled.std.tolist() == pytest.approx([math.sqrt(202 / 5)] * 2)
    with pytest.raises(ConfigError, match="no example"):
        fit_side(PHI, np.zeros_like(USE), "median", "fixed")
    with pytest.raises(ConfigError, match="at least 2"):
        fit_side(PHI, np.eye(4, 2, dtype=bool), "median", "per-example")
    # an example with no observation on a side is left unscored (NaN), not an error
    partial = fit_side(PHI, np.array([[1, 0], [1, 0], [0, 0], [0, 0]], bool), "median",
                       "per-example")
    assert partial.mean[0] == 1.5 and np.isnan(partial.mean[1])


def test_lira_scores_are_the_authors_likelihoods():
    # 4 shadows on 1 example; IN phi 3 and 5 (median 4, sd 1), OUT 0 and 2 (median 1, sd 1)
    shadows = [observe([phi], [member]) for phi, member in ((3, 1), (0, 0), (5, 1), (2, 0))]
    target = observe([3.5], [True])
    lira = rsc_core.create("attacks", "lira", shadows=4)
    out = lira.attack(target, shadows)
    expected = norm.logpdf(3.5, 4, 1) - norm.logpdf(3.5, 1, 1)
    assert out.scores[0] == pytest.approx(expected) and out.decisions[0]
    offline = rsc_core.create("attacks", "lira-offline", shadows=4)  # two-sided: the authors'
    result = offline.attack(target, shadows)
    assert result.scores[0] == pytest.approx(-norm.logpdf(3.5, 1, 1))
    assert result.decisions[0]  # |3.5 - 1| / 1 > 1.96
    low = offline.attack(observe([-1.5], [True]), shadows)  # as far below: the same score
    assert low.scores[0] == pytest.approx(result.scores[0])
    one_sided = rsc_core.create("attacks", "lira-offline", shadows=4, test="one-sided")
    assert one_sided.attack(target, shadows).scores[0] == pytest.approx(norm.logcdf(3.5, 1, 1))
    assert not one_sided.attack(observe([-1.5], [True]), shadows).decisions[0]
    # fixed variance online: BOTH sides take the IN side's spread, std(3, 5) = 1, although
    # the OUT side (0, 4) alone has 2
    fixed = rsc_core.create("attacks", "lira", shadows=4, variance="fixed")
    wide = [observe([phi], [member]) for phi, member in ((3, 1), (0, 0), (5, 1), (4, 0))]
    assert fixed.attack(target, wide).scores[0] == pytest.approx(
        norm.logpdf(3.5, 4, 1) - norm.logpdf(3.5, 2, 1))
    # an example that no shadow trained on cannot be scored online
    outside = [observe([phi, phi], [member, False]) for phi, member in
               ((3, 1), (0, 0), (5, 1), (2, 0))]
    scores = lira.attack(observe([3.5, 3.5], [True, False]), outside).scores
    assert scores[0] == pytest.approx(expected) and np.isnan(scores[1])


def test_lira_options_are_checked():
    with pytest.raises(ConfigError, match="at least 4"):
        create_attacks(["lira-offline:variance=per-example"], 2)
    assert create_attacks(["lira-offline:variance=fixed"], 2)[0].shadows == 2
    with pytest.raises(ConfigError, match="unknown LiRA center"):
        create_attacks(["lira:center=mode"], 4)
    with pytest.raises(ConfigError, match="no option 'varaince'"):
        create_attacks(["lira:varaince=fixed"], 4)
    with pytest.raises(ConfigError, match="alpha"):
        create_attacks(["lira-offline:alpha=2"], 4)
    with pytest.raises(ConfigError, match="'alpha' of attack lira-offline must be a number, "
                                          "got True"):
        create_attacks(["lira-offline:alpha=true"], 4)
    with pytest.raises(ConfigError, match="'population' of attack rmia must be a whole "
                                          "number, got True"):
        create_attacks(["rmia:population=yes"], 2)
    assert create_attacks(["rmia:population=1e2"], 2)[0].options["population"] == 100
    assert create_attacks(["lira-offline:alpha=0.01"], 4)[0].options["alpha"] == 0.01
    assert create_attacks(["lira:variance=global"], 4)[0].variance == "pooled"
    both = create_attacks(["lira-offline", "lira-offline:variance=fixed"], 4)
    assert [a.label for a in both] == ["lira-offline", "lira-offline:variance=fixed"]


def test_attack_details_must_be_json_serialisable():
    """An attack's details go into metrics.json and `rsc mia --json`: numpy numbers and
    infinities are fine (converted, infinity as null), anything else is one clear error."""
    from rsc_core.privacy.experiment import _check_output

    attack = create_attacks(["loss-threshold"], 1)[0]
    fine = AttackOutput(np.zeros(2), np.zeros(2, bool),
                        {"threshold": np.float64(0.5), "best": float("inf"), "grid": np.ones(2)})
    _check_output(attack, fine, 2)
    bad = AttackOutput(np.zeros(2), np.zeros(2, bool), {"model": object()})
    with pytest.raises(RscError, match="attack loss-threshold returned details that cannot be "
                                       "written to metrics.json"):
        _check_output(attack, bad, 2)


# -- RMIA by hand -------------------------------------------------------------------------------
def test_rmia_score_by_hand():
    # two reference models; example 0 is OUT of the first only, example 1 of both
    p_target = np.array([0.9, 0.5])
    ref = np.array([[0.6, 0.4], [0.99, 0.2]])  # ref k on examples
    member = np.array([[False, False], [True, False]])
    z_target, z_ref = np.array([0.5, 0.8, 0.3]), np.array([[0.5, 0.4, 0.3], [0.7, 0.8, 0.1]])

    def obs(p, flags):  # two classes: phi = log(p / (1 - p))
        p = np.asarray(p, dtype=np.float64)
        logits = np.column_stack([np.log(p / (1 - p)), np.zeros(p.size)])
        return Observations(logits, np.zeros(p.size, int), flags)

    a = 0.3
    pr_x = ((1 + a) * np.array([0.6, 0.3]) + (1 - a)) / 2  # OUT means: 0.6; (0.4 + 0.2) / 2
    pr_z = ((1 + a) * z_ref.mean(axis=0) + (1 - a)) / 2
    ratio_x, ratio_z = p_target / pr_x, z_target / pr_z
    expected = [(ratio_x[i] / ratio_z > 1).mean() for i in range(2)]
    rmia = rsc_core.create("attacks", "rmia", shadows=2)
    out = rmia.attack(obs(p_target, [True, False]), [obs(ref[k], member[k]) for k in range(2)],
                      population=Population(obs(z_target, np.zeros(3, bool)),
                                            [obs(z_ref[k], np.zeros(3, bool))
                                             for k in range(2)]))
    assert out.scores.tolist() == pytest.approx(expected)
    assert pairwise_share(np.log([1.0, 3.0]), np.log([0.5, 2.0, 4.0]), 1.0).tolist() == \
        pytest.approx([1 / 3, 2 / 3])
    with pytest.raises(ConfigError, match="population"):
        rmia.attack(obs(p_target, [True, False]), [obs(ref[k], member[k]) for k in range(2)])
    with pytest.raises(ConfigError, match="RMIA's a"):
        create_attacks(["rmia:a=1.5"], 2)


# -- shadow-lr's reference evaluation -----------------------------------------------------------
def test_shadow_lr_reference_reuses_the_members_logits_for_the_non_members():
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.5], [0.5, 0.2], [9.0, 9.5]])
    target = Observations(logits, np.array([0, 1, 0, 0, 1]),
                          np.array([True, True, False, False, False]))
    swapped = reference_logits(target)
    # non-member k takes member k's logits; the row beyond the pairs (a control) keeps its own
    assert swapped.tolist() == [[3, 0], [0, 2], [3, 0], [0, 2], [9, 9.5]]
    # ... but keeps its own correctness flag (row 2 is wrong: label 0, argmax 1)
    assert features(target, swapped)[:, -1].tolist() == [1, 1, 0, 1, 1]


def test_shadow_lr_reference_mode_is_the_reference_notebook_computation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.preprocessing import StandardScaler

    target, shadows = constructed(memorises=True)
    (shadow,) = shadows[SHADOW_POOL]
    attack = rsc_core.create("attacks", "shadow-lr", compat="reference")
    out = attack.attack(target, [shadow])
    # the notebook, by hand: scaler on all shadow features, default regression, 3-fold CV
    scaler = StandardScaler().fit(features(shadow))
    search = GridSearchCV(LogisticRegression(), {"C": [0.01, 0.1, 1.0, 10.0]}, cv=3)
    search.fit(scaler.transform(features(shadow)), shadow.member.astype(int))
    members = np.flatnonzero(target.member)
    logits = target.logits.copy()
    logits[np.flatnonzero(~target.member)] = target.logits[members]
    x = scaler.transform(np.column_stack([np.sort(logits, axis=1), target.correct()]))
    assert out.scores.tolist() == pytest.approx(search.decision_function(x).tolist())
    assert out.decisions.tolist() == search.predict(x).astype(bool).tolist()
    with pytest.raises(ConfigError, match="compat"):
        create_attacks(["shadow-lr:compat=paper"], 1)


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
    halves, population = [], []
    nobody = np.zeros(n, dtype=bool)
    for _ in range(shadows // 2):
        first = rng.permutation(half)
        halves += [model(first, target_rows), model(~first, target_rows)]
        population += [model(nobody, shadow_rows), model(nobody, shadow_rows)]
    target_population = model(nobody, shadow_rows)
    return target, {SHADOW_POOL: [pool_shadow], TARGET_HALVES: halves, CLEAN_HALVES: halves,
                    "population": Population(target_population, population)}


ATTACKS = ["shadow-lr", "loss-threshold", "lira", "lira-offline", "rmia",
           "lira:variance=fixed", "lira-offline:variance=fixed,test=one-sided"]


def run_attack(name: str, target: Observations, shadows: dict):
    (attack,) = create_attacks([name], 8)
    given = shadows[attack.shadow_design][:attack.num_shadows]
    if attack.needs_population:
        return attack.attack(target, given, population=shadows["population"])
    return attack.attack(target, given)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_detects_a_model_that_memorises_its_members(name):
    target, shadows = constructed(memorises=True)
    out = run_attack(name, target, shadows)
    metrics = membership_metrics(target.member, out.scores, out.decisions)
    assert metrics["auc"] > 0.97
    assert metrics["balanced_accuracy"] > 0.85
    assert isinstance(out, AttackOutput) and out.scores.shape == (len(target),)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_is_at_chance_when_members_are_exchangeable(name):
    aucs = []
    for seed in range(3):
        target, shadows = constructed(memorises=False, seed=seed)
        out = run_attack(name, target, shadows)
        aucs.append(membership_metrics(target.member, out.scores, out.decisions)["auc"])
    assert abs(np.mean(aucs) - 0.5) < 0.05, aucs


def test_the_reference_evaluation_hides_what_the_logits_show():
    """shadow-lr:compat=reference gives the non-members the members' logits, so on a model
    that memorises its members only the correctness flags differ: the evaluation's defect,
    reproduced on purpose."""
    target, shadows = constructed(memorises=True)
    corrected = run_attack("shadow-lr", target, shadows)
    reference = run_attack("shadow-lr:compat=reference", target, shadows)
    auc = [membership_metrics(target.member, out.scores, out.decisions)["auc"]
           for out in (corrected, reference)]
    assert auc[0] > 0.97 and auc[1] < 0.8, auc


def test_attacks_are_registered_and_mia_is_a_command():
    assert {"shadow-lr", "loss-threshold", "lira", "lira-offline", "rmia"} <= set(
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
    root = tmp_path / "data"
    dataset_writers.balanced_mnist(root, seed=3, train_per_class=24, test_per_class=4)
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
                    "--attack", "lira", "--attack", "lira-offline", "--attack",
                    "rmia:population=50", "--shadows", "4", "--output", str(out))
    result = rsc(*args, "--json")
    assert result.exit_code == 0, result.output
    metrics = strict_json.loads(result.stdout)  # RFC 8259: an unscored rate is null
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "roc.png", "scores.csv",
                                                     "split.json"]
    assert json.loads((out / "metrics.json").read_text())["attacks"] == metrics["attacks"]
    assert set(metrics["attacks"]) == {"shadow-lr", "lira", "lira-offline",
                                       "rmia:population=50"}
    # the control: the 11 reserved class-0 images no model trained on (12 reserved, 1 planted)
    split = json.loads((out / "split.json").read_text())
    assert metrics["control"]["count"] == 11 == len(split["control"])
    assert set(split["control"]) == set(split["reserved"]) - set(split["spurious"])
    assert len(split["population"]) == metrics["population"] == 50
    assert not set(split["population"]) & set(split["target_members"] +
                                              split["target_non_members"] + split["reserved"])
    for name, row in metrics["attacks"].items():
        assert 0 <= row["auc"] <= 1 and row["planted"]["count"] == 1
        assert row["patterned_nonmembers"]["count"] == 11
        if name == "lira":  # no shadow trained on a control image: online LiRA cannot score
            assert row["patterned_nonmembers"]["member_rate"] is None
        else:
            assert 0 <= row["patterned_nonmembers"]["tpr_at_1%_fpr"] <= 1
            assert "low" in row["planted_minus_patterned_nonmembers"]["member_rate"]
    assert metrics["split"]["part_size"] == 57
    lines = (out / "scores.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 57 + 11
    assert lines[0].startswith("index,label,member,planted,same_class_member,control,loss")
    rows = [line.split(",") for line in lines[1:]]
    assert sum(int(row[3]) for row in rows) == 1 and sum(int(row[5]) for row in rows) == 11
    assert {int(row[1]) for row in rows if row[5] == "1"} == {0}  # the target class
    runs = run_folders(tmp_path)
    assert len(runs) == 1 + 1 + 4 + 4  # target, pool shadow, online and offline halves
    assert runs == sorted(sum(metrics["runs"].values(), []))
    # a second n reuses every shadow that holds no planted image
    again = rsc(*mia_args(mem_data, tmp_path, "--spec", "memmnistv20-2-0-0", "--attack",
                          "shadow-lr", "--attack", "lira-offline", "--shadows", "4",
                          "--out", str(tmp_path / "n2")))  # the older spelling of --output
    assert again.exit_code == 0, again.output
    assert "--out is now spelled --output" in again.stderr and (tmp_path / "n2").is_dir()
    assert "shadow-lr" in again.output and "results:" in again.output
    assert len(run_folders(tmp_path)) == len(runs) + 1  # only the new target
    # the same call again reuses everything and replaces the result in one piece
    assert rsc(*args).exit_code == 0
    assert len(run_folders(tmp_path)) == len(runs) + 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".result")]


def test_rsc_mia_attacks_a_given_target_run(mem_data, tmp_path):
    first = rsc(*mia_args(mem_data, tmp_path, "--spec", "memmnistv20-1-0-0", "--attack",
                          "loss-threshold", "--output", str(tmp_path / "a"), "--json"))
    target = json.loads(first.output)["runs"]["target"][0]
    before = run_folders(tmp_path)
    second = rsc(*base_args(mem_data, tmp_path, "--spec", "memmnistv20-1-0-0", "--attack",
                            "loss-threshold", "--output", str(tmp_path / "b"), "--target-run",
                            str(tmp_path / "runs" / target), "--json"))
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["runs"]["target"] == [target]
    assert run_folders(tmp_path) == before  # the shadow, of the run's recipe, is reused


def test_rsc_mia_several_specs_train_in_one_group(mem_data, tmp_path):
    result = rsc(*mia_args(mem_data, tmp_path, "--spec", "memmnistv20-{1,2}-0-0", "--attack",
                           "shadow-lr", "--output", str(tmp_path / "grid"), "--json"))
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
                          "shadow-lr", "--output", str(tmp_path / "grid")))
    assert "over seeds" in table.output and "mnistv20-2-0-0 " in table.output  # names whole


def test_summary_over_seeds_by_hand():
    def result(seed: int, accuracy: float, rate: float | None) -> dict:
        planted = {"count": 3, "member_rate": rate, "tpr_at_1%_fpr": 0.0}
        attack = {"balanced_accuracy": accuracy, "auc": 0.5, "tpr_at_0.1%_fpr": 0.0,
                  "tpr_at_1%_fpr": 0.01, "planted": planted,
                  "same_class_members": {"member_rate": 0.5},
                  "patterned_nonmembers": {"member_rate": 0.9, "tpr_at_1%_fpr": 0.2}}
        spec = {"dataset": "mnist", "pattern": "v20", "n": 3, "targets": [0], "seed": seed}
        return {"spec": {"spurious": spec}, "attacks": {"shadow-lr": attack, "lira": attack}}

    rows = summarise([result(0, 0.50, 1.0), result(1, 0.54, 0.0), result(2, 0.52, None)])
    study = rows[0]
    assert (study["attack"], study["seeds"]) == ("shadow-lr", [0, 1, 2])
    assert study["balanced_accuracy_mean"] == pytest.approx(0.52)
    assert study["balanced_accuracy_sem"] == pytest.approx(0.02 / math.sqrt(3))
    assert study["planted_member_rate_mean"] == 0.5  # the seed without a rate is left out
    assert study["planted_member_rate_sem"] == pytest.approx(0.5)
    assert study["control_member_rate_mean"] == pytest.approx(0.9)
    assert study["control_tpr_at_1%_fpr_mean"] == pytest.approx(0.2)
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
    (("--spec", "memmnist", "--attack", "shadow-lr"), "names no pattern"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "shadow-lr", "--control-size", "12"),
     "has 11 reserved images of class 0 that no model trains on, fewer than the 12"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "shadow-lr", "--control-size", "-1"),
     "0 or more"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "lira-offline:variance=per-example",
      "--shadows", "2"), "at least 4"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "lira-offline:tests=one-sided"),
     "no option 'tests'"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "rmia:population=1000"), "at most 114"),
    (("--spec", "memmnistv20-1-0-0", "--attack", "rmia", "--attack", "rmia"), "twice"),
])
def test_rsc_mia_bad_input_is_one_line_and_writes_nothing(mem_data, tmp_path, extra, fragment):
    result = rsc(*mia_args(mem_data, tmp_path, *extra, "--output", str(tmp_path / "out")))
    assert_error_and_nothing_written(result, tmp_path, fragment)
    assert run_folders(tmp_path) == []


def test_rsc_mia_never_replaces_a_folder_that_is_not_a_result(mem_data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = rsc(*mia_args(mem_data, tmp_path, "--spec", "memmnistv20-1-0-0", "--attack",
                           "shadow-lr", "--output", str(mine)))
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
                     "--output", str(tmp_path / "out"))
    result = rsc(*base, "--target-run", run)
    assert_error_and_nothing_written(result, tmp_path, "not on the target training set")
    assert run_folders(tmp_path) == before
    flags = rsc(*base, "--target-run", run, "--epochs", "3")
    assert_error_and_nothing_written(flags, tmp_path, "drop --epochs")
