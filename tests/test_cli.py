"""The rsc command line: help, patterns show, data summary, train/score/compare on tiny data,
and one-line errors with non-zero exit codes for bad input."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rsc_cli.main import cli

PNG = b"\x89PNG\r\n\x1a\n"


def rsc(*args: str) -> "Result":
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_commands():
    result = rsc("--help")
    assert result.exit_code == 0
    for command in ("plugins", "patterns", "data", "train", "score", "compare", "quickstart",
                    "theory"):
        assert command in result.output


def test_patterns_show_writes_png(tiny_data, tmp_path):
    out = tmp_path / "x.png"
    result = rsc("patterns", "show", "r3", "--dataset", "fashion", "--data-dir",
                 str(tiny_data.root), "--count", "3", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(PNG)


def test_data_summary_from_options_and_spec(tiny_data):
    target = str(int(tiny_data["mnist"].train.labels[0]))
    by_options = rsc("data", "summary", "--dataset", "mnist", "--pattern", "s3",
                     "--n-spurious", "1", "--target", target, "--data-dir",
                     str(tiny_data.root), "--json")
    by_spec = rsc("data", "summary", "--spec", f"mnistv8-1-{target}-0", "--data-dir",
                  str(tiny_data.root), "--json")
    assert by_options.exit_code == 0, by_options.output
    assert json.loads(by_options.output) == json.loads(by_spec.output)
    assert json.loads(by_spec.output)["spec"] == f"mnistv8-1-{target}-0"


@pytest.mark.parametrize("args,message", [
    (["data", "summary", "--spec", "mnistv8-3-0"], "needs 3 numbers"),
    (["data", "summary", "--spec", "mnistq-3-0-0"], "unknown pattern"),
    (["data", "summary", "--spec", "mnistv8-3-0-0", "--target", "1"], "not both"),
    (["patterns", "show", "v99"], "unknown pattern 'v99'"),
    (["train", "--spec", "mnistv8-1-0-0", "--arch", "ResNet9000"], "unknown architecture"),
    (["train", "--spec", "mnistv8-1-0-0", "--model", "LargeMLP"], "cannot parse model spec"),
    (["train", "--spec", "mnistv8-1-0-0", "-r", "nonsense"], "unknown regulariser"),
    (["train", "--spec", "mnistv8-1-0-0", "--lr", "0"], "learning rate must be positive"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(tmp_path)]
                                if args[0] != "patterns" else args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]


def test_missing_dataset_error(tmp_path):
    result = CliRunner().invoke(cli, ["data", "summary", "--spec", "mnist", "--data-dir",
                                      str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "RSC_DATA_DIR" in result.output and "Traceback" not in result.output


def test_train_score_compare_round_trip(tiny_data, tmp_path):
    target = str(int(tiny_data["mnist"].train.labels[0]))
    common = ["--data-dir", str(tiny_data.root), "--runs-dir", str(tmp_path / "runs"),
              "--arch", "MLP", "--epochs", "2", "--batch-size", "2", "--quiet"]
    spurious = rsc("train", "--spec", f"mnistv8-1-{target}-0", *common, "--json")
    assert spurious.exit_code == 0, spurious.output
    run = json.loads(spurious.output)["run"]
    baseline = json.loads(rsc("train", "--spec", "mnist", *common, "--json").output)["run"]
    again = rsc("train", "--spec", f"mnistv8-1-{target}-0", *common)
    assert "reused finished run" in again.output
    score = json.loads(rsc("score", run, "--data-dir", str(tiny_data.root), "--json").output)
    assert score["pattern"] == "v8" and score["target"] == int(target)
    clean = rsc("score", baseline, "--data-dir", str(tiny_data.root))
    assert clean.exit_code == 2 and "--pattern P --target C" in clean.output
    checkpoint = rsc("score", f"{run}/model.pt", "--data-dir", str(tiny_data.root), "--json")
    assert json.loads(checkpoint.output)["score"] == score["score"]
    compared = rsc("compare", run, "--baseline", f"{tmp_path}/runs/mnist_*", "--data-dir",
                   str(tiny_data.root), "--json")
    assert compared.exit_code == 0, compared.output
    rows = json.loads(compared.output)["rows"]
    assert [r["n"] for r in rows] == [0, 1] and rows[0]["p_value"] is None
    assert 0 <= rows[1]["p_value"] <= 1


def test_plugins_json_lists_every_kind():
    report = json.loads(rsc("plugins", "--json").output)
    assert set(report["kinds"]) >= {"patterns", "datasets", "architectures", "trainers",
                                    "regularisers", "removers", "attacks", "executors"}
    assert {"v8", "v20"} <= {e["name"] for e in report["kinds"]["patterns"]}


def test_quickstart_runs_end_to_end_and_says_it_is_shortened(tiny_data, tmp_path):
    target = str(int(tiny_data["mnist"].train.labels[0]))
    out = tmp_path / "q.png"
    args = ["quickstart", "--epochs", "1", "-n", "1", "--target", target, "--quiet",
            "--data-dir", str(tiny_data.root), "--runs-dir", str(tmp_path / "runs"),
            "-o", str(out)]
    result = rsc(*args)
    assert result.exit_code == 0, result.output
    assert "the paper trains 70" in result.output
    assert "spurious score" in result.output and "baseline" in result.output
    assert out.read_bytes().startswith(PNG)
    assert len([p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]) == 3
    again = rsc(*args)  # finished runs are reused
    assert again.exit_code == 0 and "training" in again.output
