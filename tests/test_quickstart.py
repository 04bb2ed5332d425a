"""`rsc quickstart` shows the study's headline: a clean model against S3 AND R3 at the same n,
with one figure of both curves; runs train together on the local executor and through any
other executor one job per run."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from rsc_cli.main import cli
from rsc_cli.quickstart import headline
from rsc_core import registry
from rsc_core.analysis.compare import Comparison, GroupSummary
from rsc_core.sweeps.executors import Executor
from rsc_core.plugins import reset_plugins

PNG = b"\x89PNG\r\n\x1a\n"


def run_quickstart(tiny_data, tmp_path, *extra: str):
    target = str(int(tiny_data["mnist"].train.labels[0]))
    out = tmp_path / "q.png"
    args = ["quickstart", "--epochs", "1", "-n", "1", "--target", target, "--quiet",
            "--data-dir", str(tiny_data.root), "--runs-dir", str(tmp_path / "runs"),
            "-o", str(out), "--device", "cpu", *extra]
    return CliRunner().invoke(cli, args), out


def test_quickstart_shows_s3_and_r3_against_the_clean_model(tiny_data, tmp_path):
    result, out = run_quickstart(tiny_data, tmp_path)
    assert result.exit_code == 0, result.output
    assert "pattern v8" in result.output and "pattern v20" in result.output
    assert "v8 (S3) at n = 1: spurious score" in result.output
    assert "v20 (R3) at n = 1: spurious score" in result.output
    assert "for the clean model" in result.output
    assert out.read_bytes().startswith(PNG)
    runs = sorted(p.name.split("_")[0] for p in (tmp_path / "runs").iterdir()
                  if not p.name.startswith("."))
    assert runs == ["mnist", f"mnistv20-1-{runs[1].split('-')[2]}-0",
                    f"mnistv8-1-{runs[1].split('-')[2]}-0"]


class CountingExecutor(Executor):
    """Runs jobs in order and counts them (a stand-in for process or cluster executors)."""

    name = "counting"
    jobs = 0

    def map(self, fn, jobs):
        results = []
        for job in jobs:
            CountingExecutor.jobs += 1
            results.append(fn(job))
        return results


@pytest.fixture
def counting_executor():
    registry("executors").add(CountingExecutor, source="test")
    CountingExecutor.jobs = 0
    yield CountingExecutor
    reset_plugins()


def test_other_executors_get_one_job_per_run(tiny_data, tmp_path, counting_executor):
    result, out = run_quickstart(tiny_data, tmp_path, "--executor", "counting",
                                 "--pattern", "r3")
    assert result.exit_code == 0, result.output
    assert counting_executor.jobs == 2  # clean + R3
    assert "pattern v20" in result.output and "pattern v8" not in result.output


def test_headline_line():
    def row(n, score, p):
        return GroupSummary(n, 1, score, float("nan"), 0.98, float("nan"), 0.5,
                            float("nan"), p)

    comparisons = [Comparison("v8", 0, 0.1, False, (row(0, 0.002, None),
                                                    row(3, 0.011, 2.7e-47))),
                   Comparison("v20", 0, 0.1, False, (row(0, 0.2, None), row(3, 0.9, 0.0)))]
    assert headline(comparisons) == (
        "v8 (S3) at n = 3: spurious score 0.011 vs 0.002 for the clean model, p = 2.7e-47; "
        "v20 (R3) at n = 3: spurious score 0.900 vs 0.200 for the clean model, p < 1e-300")


README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_comparison_works_right_after_the_quickstart(tiny_data, tmp_path,
                                                                monkeypatch):
    """The README's `rsc compare` line, run as printed in the folder where `make quickstart`
    ran: its runs are what the quickstart trained (in ./runs, 10 epochs), and their baseline
    is found in the results index (`--where`), not by a glob over other recipes."""
    line = next(text for text in README.read_text().splitlines()
                if text.startswith(".venv/bin/rsc compare"))
    readme_args = shlex.split(line.split("#")[0])[1:]
    monkeypatch.chdir(tmp_path)
    target = str(int(tiny_data["mnist"].train.labels[0]))
    here = ["--data-dir", str(tiny_data.root), "--device", "cpu"]
    quick = CliRunner().invoke(cli, ["quickstart", "-n", "1", "--target", target, "-q", *here])
    assert quick.exit_code == 0, quick.output
    other = CliRunner().invoke(cli, ["train", "--spec", f"mnistv20-1-{target}-1", "--epochs",
                                     "2", "-q", *here])  # another recipe beside it
    assert other.exit_code == 0, other.output
    result = CliRunner().invoke(cli, [*readme_args, *here])
    assert result.exit_code == 0, result.output
    assert "pattern v20" in result.output and "baseline" in result.output
