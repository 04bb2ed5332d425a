"""The study-grid projection (benchmarks/study_grid_cost.py) must count the grid right and keep
its arithmetic honest; not a timing test (it runs no measurement)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import study_grid_cost as grid  # noqa: E402


def test_the_grid_has_one_clean_run_for_every_pattern_and_seed():
    # 7 patterns x 7 non-zero n x 5 seeds, plus the one clean run (n = 0) they all share
    assert grid.grid_runs() == (246, 280)


def test_projection_follows_from_the_medians():
    median = {"single": 1.5, "group8": 1.0, "eval": 0.05, "matmul_gflops": 120.4}
    projection = grid.project(median)
    assert projection["model_epochs"] == 246 * 70
    floor = projection["rows"]["FLOP floor (matmul peak)"]
    assert floor["seconds_per_model_epoch"] == pytest.approx(60_000 * 2_006_016 / 1e9 / 120.4)
    single = projection["rows"]["single"]
    assert single["seconds_per_model_epoch"] == pytest.approx(1.55)
    assert single["grid_hours"] == pytest.approx(1.55 * 246 * 70 / 3600)
    assert single["over_floor"] == pytest.approx(1.55 / floor["seconds_per_model_epoch"])
    assert "eval" not in projection["rows"] and "matmul_gflops" not in projection["rows"]


def test_options_are_checked():
    assert grid.parse_args(["--cpu-time"]).ks == [8, 16]
    with pytest.raises(SystemExit):
        grid.parse_args(["--ks", "1"])
