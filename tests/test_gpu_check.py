"""The GPU check (benchmarks/gpu_check.sh) is for a machine with a CUDA device; CPU CI only
checks that it parses its options and, without CUDA, refuses at once with one clear line
instead of measuring the CPU and calling it a GPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD_ENV

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_check  # noqa: E402


def test_options_parse_and_default_to_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    args = gpu_check.parse_args([])
    assert args.steps == list(gpu_check.STEPS) and args.out == tmp_path / "out"
    assert args.budget_seconds <= 600
    args = gpu_check.parse_args(["--steps", "logits,cifar_runs", "--out", "elsewhere"])
    assert args.steps == ["logits", "cifar_runs"] and args.out == Path("elsewhere")


def test_an_unknown_step_is_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "logits,warp"])
    assert "unknown step(s) warp" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("entry", ["gpu_check.sh", "gpu_check.py"])
def test_without_cuda_it_refuses_at_once(tmp_path, entry):
    command = ([str(BENCHMARKS / entry)] if entry.endswith(".sh")
               else [sys.executable, str(BENCHMARKS / entry)])
    env = {**ONE_THREAD_ENV, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert completed.returncode == gpu_check.NO_CUDA_EXIT
    assert completed.stderr.strip().splitlines()[-1].startswith("gpu_check: no CUDA device")
    assert not (tmp_path / "out").exists()  # nothing written
