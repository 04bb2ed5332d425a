"""The throughput benchmark must keep running and keep its arithmetic right.

Not a timing test: nothing here asserts a speed. It runs the real script on the tiny MNIST
files in a fresh process (its DataLoader workers need a ``__main__`` guard) and checks that every
measurement was taken and every reported ratio follows from the samples."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ONE_THREAD_ENV

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


@pytest.fixture
def benchmark_result(tiny_data) -> dict:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--data-dir", str(tiny_data.root), "--repeats", "2",
         "--warmup-batches", "1", "--mm-size", "64", "--mm-reps", "2", "--json"],
        capture_output=True, text=True, timeout=300,
        env=ONE_THREAD_ENV)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_every_measurement_is_taken_each_repeat(benchmark_result):
    samples = benchmark_result["samples"]
    assert set(samples) == {"rsc", "ref_w4", "ref_w0", "matmul", "floor"}
    for name, runs in samples.items():
        assert [run["repeat"] for run in runs] == [0, 1], name
        assert all(run["seconds"] > 0 for run in runs), name
    assert all(run["worker_processes"] >= 4 for run in samples["ref_w4"])
    assert all(run["gflops"] > 0 for run in samples["matmul"])


def test_ratios_and_verdicts_follow_from_the_samples(benchmark_result):
    samples, ratios = benchmark_result["samples"], benchmark_result["ratios"]
    for stat, pick in (("median", statistics.median), ("best", min)):
        seconds = {name: pick(run["seconds"] for run in samples[name])
                   for name in ("rsc", "ref_w4", "ref_w0", "floor")}
        assert ratios[stat]["rsc_vs_ref_w4"] == pytest.approx(seconds["ref_w4"] / seconds["rsc"])
        assert ratios[stat]["rsc_vs_ref_w0"] == pytest.approx(seconds["ref_w0"] / seconds["rsc"])
        assert ratios[stat]["rsc_over_floor"] == pytest.approx(seconds["rsc"] / seconds["floor"])
        assert ratios[stat]["floor_vs_ref_w4"] == pytest.approx(
            seconds["ref_w4"] / seconds["floor"])
    for target in benchmark_result["targets"].values():
        assert target["pass"] == (target["value"] >= target["threshold"])
    epoch_gflop = benchmark_result["figures"]["epoch_gflop"]
    assert epoch_gflop == pytest.approx(5 * 2_006_016 / 1e9)
