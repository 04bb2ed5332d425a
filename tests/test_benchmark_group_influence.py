"""The group-influence benchmark must keep running and keep its arithmetic right (not a timing
test: nothing here asserts a speed). Its fit of the reference's growing step cost and the
extrapolation to |S| x r x depth steps are checked against closed forms, and the script runs
end to end on a tiny MNIST-format run with a few steps of everything."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ONE_THREAD_ENV, write_idx_dataset

from rsc_core.runs.training import train_run
from rsc_core.data.spec import SpuriousSpec
from rsc_core.training.trainer import TrainConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "group_influence.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("group_influence_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_linear_step_cost_is_recovered_and_summed_in_closed_form(benchmark):
    a, b, depth = 0.01, 4e-4, 1000
    seconds = [9.0, 7.0] + [a + b * t for t in range(2, 60)]  # two warm-up steps, skipped
    fit = benchmark.fit_step_cost(seconds, skip=2)
    assert fit == pytest.approx([a, b], rel=1e-9)
    assert benchmark.r_squared(seconds, 2, fit) == pytest.approx(1.0)
    assert benchmark.chain_seconds(fit, depth) == pytest.approx(
        a * depth + b * depth * (depth - 1) / 2, rel=1e-9)
    summary = benchmark.reference_as_run(seconds, 2)
    assert summary["linear_fit"]["b_seconds_per_step_index"] == pytest.approx(b, rel=1e-9)
    assert summary["quadratic_fit"]["coefficients"][2] == pytest.approx(0, abs=1e-12)
    totals = benchmark.reference_totals(
        {"detached": {"seconds_per_step": 0.003}, "as_run": summary}, 3, 10, depth, 20.0)
    assert totals["reference_as_run_total_seconds"] == pytest.approx(
        30 * (a * depth + b * depth * (depth - 1) / 2), rel=1e-9)
    assert totals["speedup_vs_as_run"] == pytest.approx(
        totals["reference_as_run_total_seconds"] / 20.0)
    assert totals["reference_detached_total_seconds"] == pytest.approx(30 * depth * 0.003)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gi-benchmark")
    written = write_idx_dataset(root / "data", "MNIST", seed=5, n_train=200, n_test=40)
    spec = SpuriousSpec.build("mnist", "v20", 3, int(written.train.labels[0]), 0)
    config = TrainConfig(arch="MLP", epochs=1, batch_size=32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RSC_CACHE_DIR", str(root / "cache"))
        run = train_run(spec, config, runs_dir=root / "runs", data_dir=root / "data",
                        progress=False, device="cpu").run
    return run, root / "data"


def test_the_benchmark_runs_end_to_end_and_derives_its_totals(tiny_run):
    run, data = tiny_run
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--run", str(run.path), "--data-dir", str(data),
         "--steps", "3", "--sequential-steps", "2", "--reference-steps", "3",
         "--ref-steps", "4", "--ref-graph-steps", "25", "--ref-graph-skip", "2",
         "--repeats", "2", "--skip-cg"], capture_output=True, text=True, timeout=600,
        env=ONE_THREAD_ENV)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout[completed.stdout.index("\n{\n") + 1:])
    as_run = report["reference_procedure"]["as_run"]
    assert as_run["measured_steps"] == 25 and as_run["fit_skips_first_steps"] == 2
    fit = as_run["linear_fit"]
    modes = [row["mode"] for row in report["rsc"]]
    assert modes.count("rsc --compat reference") == 2 and len(modes) == 12
    for row in report["rsc"]:
        chains, depth = row["forget_size"] * 2, row["depth"]
        expected = chains * (fit["a_seconds"] * depth
                             + fit["b_seconds_per_step_index"] * depth * (depth - 1) / 2)
        assert row["reference_as_run_total_seconds"] == pytest.approx(expected, rel=1e-9)
        assert row["speedup_vs_as_run"] == pytest.approx(
            expected / row["estimated_total_seconds"], rel=1e-9)
        detached = report["reference_procedure"]["detached"]["seconds_per_step"]
        assert row["speedup_vs_detached"] == pytest.approx(
            chains * depth * detached / row["estimated_total_seconds"], rel=1e-9)
        assert "extrapolated" in row["reference_as_run_total_is"]
    assert np.isfinite(fit["r_squared"])
