"""Tests for rsc_core.theory (PROTOCOL.md section 6, "Theory") and the ``rsc theory`` command."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from rsc_core.errors import ConfigError
from rsc_core.analysis.theory import (TheoryParams, clean_accuracy, spurious_accuracy,
    spurious_score, study_curves)

G_OPEN = np.linspace(0.0, 0.5, 501)[1:]  # (0, 0.5]


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


# --- hand-computed points ----------------------------------------------------------------------

def test_hand_computed_point():
    # g = 0.2, L = 1, v = 0.1, study defaults x_inv = 1, x_sp^2 = 5, base s_inv 0.5, s_sp 0.1.
    g, L, v = 0.2, 1.0, 0.1
    x_inv, x2 = 1.0, 5.0
    s_inv, s_sp = 0.5 + v, 0.1 + v
    h = g / 2
    score = h * (s_inv + L) * x2 / ((s_inv + L) * (s_sp + L)
                                     + (s_sp + L + h * (1 - h) * (s_inv + L) + h * (1 - g) * x2) * x2)
    t = ((g * (1 - g) / 2 * x2 + s_sp + L) / (s_inv + L)) * x_inv ** 2
    top, top1, top2 = t + h * h * x2, t - h * h * x2, t + h * (h - 1) * x2
    down = math.sqrt(t * t * s_inv + h * h * x2 * x2 * s_sp)
    clean = _phi(top / down) / 2 + _phi(top1 / down) / 2
    spur = _phi(top2 / down)

    p = TheoryParams(ridge=L, noise_var=v)
    assert float(spurious_score(g, p)) == pytest.approx(score, rel=1e-12)
    assert float(clean_accuracy(g, p)) == pytest.approx(clean, rel=1e-12)
    assert float(spurious_accuracy(g, p)) == pytest.approx(spur, rel=1e-12)


def test_hand_arithmetic_l0_g01():
    # Worked by hand: numerator 0.05*0.5*5 = 0.125;
    # denominator 0.5*0.1 + (0.1 + 0.05*0.95*0.5 + 0.05*0.9*5)*5 = 0.05 + 1.74375 = 1.79375.
    assert float(spurious_score(0.1)) == pytest.approx(0.125 / 1.79375, rel=1e-12)


def test_noise_adds_to_base_variances():
    p = TheoryParams(s_inv=0.4, s_sp=0.2, noise_var=0.3)
    assert p.s_inv_eff == pytest.approx(0.7) and p.s_sp_eff == pytest.approx(0.5)
    same = TheoryParams(s_inv=0.7, s_sp=0.5)
    g = np.linspace(0, 1, 11)
    for f in (spurious_score, clean_accuracy, spurious_accuracy):
        np.testing.assert_allclose(f(g, p), f(g, same), rtol=1e-12)


# --- g = 0 and sanity values --------------------------------------------------------------------

@pytest.mark.parametrize("params", [TheoryParams(), TheoryParams(ridge=100.0),
                                    TheoryParams(noise_var=0.3), TheoryParams(x_sp2=0.0),
                                    TheoryParams(s_inv=0.0, s_sp=0.0, noise_var=0.2)])
def test_score_exactly_zero_at_g0_without_warnings(params):
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        assert float(spurious_score(0.0, params)) == 0.0
        assert spurious_score(np.zeros(3), params).tolist() == [0.0, 0.0, 0.0]
        assert 0.0 <= float(clean_accuracy(0.0, params)) <= 1.0
        assert 0.0 <= float(spurious_accuracy(0.0, params)) <= 1.0


@pytest.mark.parametrize("ridge,expected", [(0.0, 0.070), (1.0, 0.043), (10.0, 0.016),
                                            (100.0, 0.002)])
def test_protocol_sanity_values(ridge, expected):
    assert float(spurious_score(0.1, TheoryParams(ridge=ridge))) == pytest.approx(expected,
                                                                                  abs=5e-4)


def test_shapes_and_scalars():
    assert spurious_score(0.1).shape == ()
    assert spurious_score([[0.0, 0.1], [0.2, 0.3]]).shape == (2, 2)
    assert clean_accuracy(np.linspace(0, 1, 7)).shape == (7,)
    assert spurious_accuracy([]).shape == (0,)


# --- orderings ------------------------------------------------------------------------------

def test_score_increases_with_g():
    for p in (TheoryParams(), TheoryParams(ridge=10.0), TheoryParams(noise_var=0.3)):
        assert np.all(np.diff(spurious_score(np.linspace(0, 0.5, 501), p)) > 0)


def test_score_decreases_with_ridge_for_l_at_least_1():
    s = [spurious_score(G_OPEN, TheoryParams(ridge=L)) for L in (1.0, 10.0, 100.0)]
    assert np.all(s[0] > s[1]) and np.all(s[1] > s[2])


def test_score_l0_vs_l1_crosses_near_g_0327():
    # What the protocol formula gives: L = 1 lowers the score only for g < ~0.3268; above that
    # (still inside the study's [0, 0.5]) the L = 1 curve lies slightly above the L = 0 curve.
    s0 = spurious_score(G_OPEN)
    s1 = spurious_score(G_OPEN, TheoryParams(ridge=1.0))
    assert np.all(s1[G_OPEN < 0.326] < s0[G_OPEN < 0.326])
    assert np.all(s1[G_OPEN > 0.328] > s0[G_OPEN > 0.328])
    for L in (10.0, 100.0):  # larger ridges are below L = 0 everywhere on (0, 0.5]
        assert np.all(spurious_score(G_OPEN, TheoryParams(ridge=L)) < s0)


def test_score_vs_noise_direction_depends_on_g():
    # The formula: more input noise LOWERS the score for small g (g <= ~0.24) and RAISES it for
    # larger g (g >= ~0.29); the curves cross between (0.243, 0.263, 0.287 for successive v).
    noises = (0.0, 0.1, 0.2, 0.3)
    s = [spurious_score(G_OPEN, TheoryParams(noise_var=v)) for v in noises]
    low, high = G_OPEN <= 0.24, G_OPEN >= 0.29
    for a, b in zip(s, s[1:]):
        assert np.all(b[low] < a[low])
        assert np.all(b[high] > a[high])


def test_accuracies_in_unit_interval_and_noise_hurts():
    g = np.linspace(0, 1, 201)
    params = [TheoryParams(ridge=L) for L in (0, 1, 10, 100)] + \
             [TheoryParams(noise_var=v) for v in (0.1, 0.2, 0.3, 5.0)] + \
             [TheoryParams(x_sp2=50.0), TheoryParams(x_inv=0.1)]
    for p in params:
        for f in (clean_accuracy, spurious_accuracy):
            a = f(g, p)
            assert np.all(np.isfinite(a)) and np.all((a >= 0) & (a <= 1))
        assert np.all(spurious_accuracy(g, p) <= clean_accuracy(g, p) + 1e-12)
    c = [clean_accuracy(G_OPEN, TheoryParams(noise_var=v)) for v in (0.0, 0.1, 0.2, 0.3)]
    assert all(np.all(b < a) for a, b in zip(c, c[1:]))


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(ridge=-1.0), dict(noise_var=-0.1), dict(s_inv=-0.5),
                                    dict(s_sp=-0.1), dict(x_sp2=-5.0), dict(x_inv=0.0),
                                    dict(ridge=float("nan")), dict(x_sp2=float("inf")),
                                    dict(s_inv=0.0), dict(s_sp=0.0), dict(ridge="abc")])
def test_bad_params(kwargs):
    with pytest.raises(ConfigError) as info:
        TheoryParams(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("g", [-0.1, 1.5, [0.1, 2.0], float("nan"), "x"])
def test_bad_g(g):
    for f in (spurious_score, clean_accuracy, spurious_accuracy):
        with pytest.raises(ConfigError):
            f(g)


@pytest.mark.parametrize("kwargs", [dict(g_max=0.0), dict(g_max=1.5), dict(points=1),
                                    dict(points=2.5), dict(ridges=[-1.0]),
                                    dict(noises=[float("nan")]), dict(ridges=[], noises=[])])
def test_bad_study_curves(kwargs):
    with pytest.raises(ConfigError):
        study_curves(**kwargs)


def test_study_curves_structure():
    c = study_curves(points=11)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["g"][0] == 0.0 and d["g"][-1] == pytest.approx(0.5) and len(d["g"]) == 11
    assert [x["ridge"] for x in d["families"]["ridge"]] == [0.0, 1.0, 10.0, 100.0]
    assert all(x["noise_var"] == 0.0 for x in d["families"]["ridge"])
    assert [x["noise_var"] for x in d["families"]["noise"]] == [0.0, 0.1, 0.2, 0.3]
    assert all(x["ridge"] == 0.0 for x in d["families"]["noise"])
    assert d["params"] == {"x_inv": 1.0, "x_sp2": 5.0, "s_inv": 0.5, "s_sp": 0.1}
    assert d["families"]["ridge"][0]["spurious_score"][0] == 0.0
    assert d["families"]["ridge"][1]["spurious_score"][2] == pytest.approx(0.0434, abs=1e-4)


# --- CLI --------------------------------------------------------------------------------------

from rsc_cli.main import cli as _CLI


def _invoke(args, **kw):
    return CliRunner().invoke(_CLI, ["theory", *args], **kw)


def _assert_config_error(result):
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output


def test_cli_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke(["--json", "--points", "6", "--ridge", "0", "--ridge", "10"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert set(d) == {"g", "params", "families"}
    assert d["g"] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert [c["ridge"] for c in d["families"]["ridge"]] == [0.0, 10.0]
    assert [c["noise_var"] for c in d["families"]["noise"]] == [0.0, 0.1, 0.2, 0.3]
    for fam in d["families"].values():
        for c in fam:
            assert set(c) == {"label", "ridge", "noise_var", "spurious_score", "clean_accuracy",
                              "spurious_accuracy"}
            assert all(len(c[k]) == 6 for k in ("spurious_score", "clean_accuracy",
                                                  "spurious_accuracy"))
    assert d["families"]["ridge"][0]["spurious_score"][1] == pytest.approx(0.0697, abs=1e-4)
    assert not (tmp_path / "theory.png").exists()  # --json alone writes no PNG


def test_cli_png(tmp_path):
    out = tmp_path / "t.png"
    result = _invoke(["-o", str(out), "--points", "21"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_json_and_png(tmp_path):
    out = tmp_path / "both.png"
    result = _invoke(["--json", "-o", str(out), "--points", "3"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args", [["--g-max", "0"], ["--ridge", "-1"], ["--noise", "-0.2"],
                                  ["--points", "1"], ["--x-inv", "0"], ["--x-sp2", "-1"],
                                  ["-o", "nodir/x.png"], ["-o", "x.pdf"]])
def test_cli_bad_values(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _assert_config_error(_invoke(["--json"] + args if args[0] != "-o" else args))


def test_cli_help_mentions_options():
    result = _invoke(["--help"])
    assert result.exit_code == 0
    for opt in ("--ridge", "--noise", "--g-max", "--points", "--x-sp2", "--x-inv", "--output",
                "--json"):
        assert opt in result.output
