"""The multi-model benchmark must keep running and keep its arithmetic right (not a timing
test: nothing here asserts a speed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ONE_THREAD_ENV

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "multi_model.py"


def test_multi_model_benchmark_measures_every_row_and_derives_its_ratios(tiny_data):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--data-dir", str(tiny_data.root), "--batches", "1",
         "--ks", "2", "8", "--bmm-ks", "2", "--repeats", "2", "--mm-size", "64",
         "--mm-reps", "2", "--json"], capture_output=True, text=True, timeout=300,
        env=ONE_THREAD_ENV)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert set(result["samples"]) == {"single", "group2", "group8", "bmm2"}
    assert all(len(v) == 2 for v in result["samples"].values())
    rows = result["rows"]
    for name, row in rows.items():
        median = row["median"]
        per_epoch = median["seconds"] / median["k"] * (469 / result["batches"])
        assert abs(median["per_model_s_per_epoch"] - per_epoch) < 1e-9 * per_epoch
        assert abs(median["model_epochs_per_hour"] * per_epoch - 3600) < 1e-6
    verdict = result["verdict"]
    single = rows["single"]["median"]["per_model_s_per_epoch"]
    group8 = rows["group8"]["median"]["per_model_s_per_epoch"]
    assert abs(verdict["k8_vs_single"]["value"] - single / group8) < 1e-9
    assert verdict["best_k"] in (2, 8)
