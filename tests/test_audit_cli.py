"""``rsc audit`` end to end on tiny real run folders: what it writes, ``rsc score
--pattern-file`` on what it proposed, a third-party auditor installed from docs/audit.md alone,
and one clear error (exit 2, nothing written) for each kind of bad input."""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from rsc_cli.main import cli
from rsc_core.data.pattern_files import BlendPattern, read_pattern_png, write_pattern_png
from rsc_core.runs.training import train_run
from rsc_core.data.spec import parse_spec
from rsc_core.training.trainer import TrainConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "audit.md"
QUICK = ["-a", "saliency:quantile=0.9", "-a", "neural-cleanse:steps=20,images=20,phase=5",
         "-a", "self-influence:solver=arnoldi,rank=3,hvp_samples=0"]


def rsc(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False,
                              prog_name="rsc")


def one_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished one-epoch LargeMLP run on a 60-image MNIST copy with two planted images."""
    from conftest import write_idx_dataset

    root = tmp_path_factory.mktemp("audit")
    write_idx_dataset(root / "data", "MNIST", seed=3, n_train=60, n_test=30)
    labels = np.fromfile(root / "data/MNIST/raw/train-labels-idx1-ubyte", np.uint8)[8:]
    label = int(np.bincount(labels).argmax())
    old = os.environ.get("RSC_DATA_DIR")
    os.environ["RSC_DATA_DIR"] = str(root / "data")
    try:
        run = train_run(parse_spec(f"mnistv8-2-{label}-0"), TrainConfig(epochs=1, batch_size=16),
                        runs_dir=root / "runs", progress=False).run
    finally:
        os.environ.pop("RSC_DATA_DIR") if old is None else os.environ.update(RSC_DATA_DIR=old)
    return {"run": run, "root": root, "data": root / "data", "label": label}


@pytest.fixture
def data_env(tiny_run, monkeypatch):
    monkeypatch.setenv("RSC_DATA_DIR", str(tiny_run["data"]))
    return tiny_run


def test_audit_writes_ranking_patterns_figure_and_summary(data_env, tmp_path):
    run, out = data_env["run"], tmp_path / "audit"
    result = rsc("audit", str(run.path), *QUICK, "-k", "4", "-o", str(out), "-q", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    with open(out / "ranking.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 and [int(r["rank"]) for r in rows] == list(range(1, 61))
    assert sorted(int(r["index"]) for r in rows) == list(range(60))
    labels = [a["label"] for a in summary["auditors"]]
    assert list(rows[0]) == ["rank", "index", "label", *labels, "combined"]
    combined = [float(r["combined"]) for r in rows]
    assert combined == sorted(combined, reverse=True)  # ranked by the rank average
    patterns = sorted(p.name for p in (out / "patterns").iterdir())
    assert "saliency-region.png" in patterns and len(patterns) == 11  # + 10 NC classes
    assert (out / "top-k.png").stat().st_size > 0 and len(summary["top"]) == 4
    assert summary["top"][0]["index"] == int(rows[0]["index"])
    assert summary["model_sha256"] == run.model_sha256()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no leftovers

    # a proposed pattern is scored like a planted one, its target read from the file
    scored = rsc("score", str(run.path), "--pattern-file",
                 str(out / "patterns" / "neural-cleanse-class3.png"), "--json")
    assert scored.exit_code == 0, scored.output
    score = json.loads(scored.output)
    assert score["pattern"] == "file:neural-cleanse-class3.png" and score["target"] == 3
    assert 0 <= score["score"] <= 1


def test_pattern_files_round_trip_and_blend():
    mask = np.zeros((28, 28), np.float32)
    mask[:5, :5] = 1
    white = np.ones((1, 28, 28), np.float32)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rsc-test-pattern-{os.getpid()}.png"
    try:
        write_pattern_png(path, mask, white, target=7)
        pattern = read_pattern_png(path)
    finally:
        path.unlink(missing_ok=True)
    import rsc_core

    images = torch.rand(3, 1, 28, 28)
    assert pattern.target == 7 and isinstance(pattern, BlendPattern)
    torch.testing.assert_close(pattern.apply(images), rsc_core.create("patterns", "v8").apply(
        images))  # a white square blended at alpha 1 is S3
    with pytest.raises(Exception, match="is \\(1, 28, 28\\).*images are \\(3, 32, 32\\)"):
        pattern.apply(torch.rand(1, 3, 32, 32))


def test_a_pattern_file_that_is_not_a_png_is_one_error(data_env, tmp_path):
    bogus = tmp_path / "x.png"
    bogus.write_text("not an image")
    one_error(rsc("score", str(data_env["run"].path), "--pattern-file", str(bogus)),
              "is not a readable PNG pattern file")
    one_error(rsc("score", str(data_env["run"].path), "--pattern-file", str(bogus),
                  "--pattern", "v8"), "either --pattern or --pattern-file")


def test_k_larger_than_the_training_set_is_one_error(data_env, tmp_path):
    out = tmp_path / "audit"
    one_error(rsc("audit", str(data_env["run"].path), "-a", "saliency", "-k", "61", "-o",
                  str(out)), "--top-k 61 is larger than the training set", "(60 examples)")
    assert not out.exists()


def test_a_run_without_its_training_set_is_one_error(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("RSC_DATA_DIR", str(tmp_path / "empty"))
    out = tmp_path / "audit"
    one_error(rsc("audit", str(tiny_run["run"].path), "-a", "saliency", "-o", str(out)),
              "cannot audit", "its training set (mnist) is not available")
    one_error(rsc("audit", str(tiny_run["run"].path / "model.pt"), "-a", "saliency"),
              "is a file; rsc audit needs a run folder")
    config = json.loads((tiny_run["run"].path / "config.json").read_text())
    imported = tmp_path / "imported"
    imported.mkdir()
    for name in ("model.pt", "metrics.json"):
        (imported / name).write_bytes((tiny_run["run"].path / name).read_bytes())
    del config["spec"]
    (imported / "config.json").write_text(json.dumps(config))
    one_error(rsc("audit", str(imported), "-a", "saliency", "-o", str(out)),
              "does not record the training set")
    assert not out.exists()


def test_an_auditor_the_architecture_cannot_serve_is_one_error(tmp_path, monkeypatch,
                                                                tiny_data):
    pytest.importorskip("kronfluence")
    monkeypatch.setenv("RSC_DATA_DIR", str(tiny_data.root))
    run = train_run(parse_spec("cifar10"), TrainConfig(arch="altResNet20", epochs=1,
                                                       batch_size=5),
                    runs_dir=tmp_path / "runs", progress=False).run
    out = tmp_path / "audit"
    one_error(rsc("audit", str(run.path), "-a", "self-influence", "-o", str(out)),
              "self-influence with solver ekfac covers only Linear and Conv2d layers",
              "BatchNorm2d", "solver=arnoldi")
    assert not out.exists()


def test_other_bad_input_is_one_error_each(data_env, tmp_path):
    run = str(data_env["run"].path)
    one_error(rsc("audit", run, "-a", "salency"), "unknown auditor 'salency'", "saliency")
    one_error(rsc("audit", run, "-a", "saliency:windw=3"), "no option 'windw'")
    one_error(rsc("audit", run, "-a", "saliency", "-a", "saliency"), "given twice")
    one_error(rsc("audit", run, "-a", "saliency", "--combine", "sum"), "'sum' is not one of")
    one_error(rsc("audit", run, "-a", "memorisation", "-o", str(tmp_path / "a")),
              "memorisation found no reference models")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_error(rsc("audit", run, "-a", "saliency", "-o", str(other)),
              "not an earlier rsc audit result")
    assert (other / "notes.txt").read_text() == "mine"


def test_memorisation_uses_reference_runs(data_env, tmp_path):
    """Reference runs: clean runs of the dataset on halves of the training set."""
    from rsc_core.data.subsets import TrainSubset

    runs = tmp_path / "refs"
    order = np.random.RandomState(0).permutation(60)
    for half in (order[:30], order[30:]):
        train_run(parse_spec("mnist"), TrainConfig(epochs=1, batch_size=16), runs_dir=runs,
                  progress=False, subset=TrainSubset.keeping(half.tolist()))
    out = tmp_path / "audit"
    result = rsc("audit", str(data_env["run"].path), "-a",
                 f"memorisation:references={runs},statistic=loss-gap", "-o", str(out), "-q",
                 "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)["auditors"][0]["facts"]
    assert len(facts["references"]) == 2 and facts["unscored"] == 0


def _documented_plugin() -> tuple[str, str, dict[str, str]]:
    text = DOC.read_text()
    module = re.search(r"`rsc_high_loss.py`:\n\n```python\n(.*?)```", text, re.S).group(1)
    toml = re.search(r"`pyproject.toml`:\n\n```toml\n(.*?)```", text, re.S).group(1)
    project = tomllib.loads(toml)["project"]
    return module, project["name"], project["entry-points"]["rsc"]


@pytest.fixture
def high_loss_installed(tmp_path, monkeypatch):
    """The docs' example installed as pip would (its module and dist-info on sys.path), in
    strict mode; plugin discovery is reset before and after."""
    from rsc_core.plugins import reset_plugins
    from test_plugins import make_distribution

    module, dist, entry_points = _documented_plugin()
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, dist, "rsc_high_loss", module, entry_points)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("RSC_STRICT_PLUGINS", "1")
    reset_plugins()
    yield
    sys.modules.pop("rsc_high_loss", None)
    reset_plugins()


def test_third_party_auditor_from_the_docs_works(data_env, high_loss_installed, tmp_path):
    import rsc_core

    assert rsc_core.get("auditors", "high-loss").source == "rsc-high-loss"
    out = tmp_path / "audit"
    result = rsc("audit", str(data_env["run"].path), "-a", "high-loss:batch=7", "-a",
                 "saliency:quantile=0.9", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    with open(out / "ranking.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = {int(r["index"]): float(r["high-loss:batch=7"]) for r in rows}
    model = data_env["run"].load_model().eval()
    from rsc_core.audit.runner import training_set

    data = training_set(data_env["run"])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(data.train.images), data.train.labels,
                                                     reduction="none")
    assert np.allclose([losses[i] for i in range(60)], expected.numpy(), rtol=1e-4, atol=1e-6)


def _script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_audit_grid_benchmark_audits_evaluates_and_resumes(data_env, tmp_path, capsys):
    grid = _script("audit_grid")
    run = data_env["run"]
    recipe = run.name.partition("_")[2].rsplit("-", 1)[0]
    out = tmp_path / "grid"
    args = ["--runs-dir", str(run.path.parent), "--out", str(out), "--recipe", recipe,
            "--spec", run.spec.name, "--spec", "mnistv8-3-0-{0..1}",
            "--auditor", "saliency:quantile=0.9",
            "--auditor", "neural-cleanse:steps=10,images=10,phase=5",
            "--figure", str(tmp_path / "grid.png")]
    assert grid.main(args) == 0
    report = capsys.readouterr()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [2] and rows[0]["planted"] == 2
    metrics = rows[0]["metrics"]
    assert set(metrics) == {"saliency:quantile=0.9", "neural-cleanse:steps=10,images=10,phase=5",
                            "combined", "combined-max-rank"}
    assert 0 <= rows[0]["nc_iou"] <= 1 and isinstance(rows[0]["nc_target_flagged"], bool)
    order = ["neural-cleanse:steps=10,images=10,phase=5", "saliency:quantile=0.9", "combined",
             "combined-max-rank"]  # the columns: the auditors, then the combinations
    aurocs = " | ".join(f"{metrics[name]['auroc']:.3f}" for name in order)
    auroc_table = report.out.split("**auroc**")[1]
    assert "| neural-cleanse | saliency | combined | combined-max-rank |" in auroc_table
    assert f"| mnist | v8 | 2 | 1 (0) | {aurocs} |" in auroc_table
    assert "pending (not finished or not audited): 2" in report.err
    assert (tmp_path / "grid.png").stat().st_size > 0
    stamp = (out / run.name / "audit.json").stat().st_mtime_ns
    assert grid.main(args) == 0  # resumes: the finished audit is reused, not redone
    assert (out / run.name / "audit.json").stat().st_mtime_ns == stamp


def test_the_audit_benchmarks_name_each_seed_once_and_order_auditors_before_combinations():
    """A figure panel pools every n, so a seed appears once per n among its runs."""
    grid = _script("audit_grid")
    members = [{"seed": 1}, {"seed": 0}, {"seed": 1}, {"seed": 0}]
    assert grid.panel_title("mnist", "v8", members) == "mnist v8: 4 runs (seeds 0,1)"
    assert grid.panel_title("mnist", "v8", members[:1]) == "mnist v8: 1 runs (seed 1)"
    assert grid.auditor_order(["combined-max-rank", "saliency", "combined", "memorisation"]) == \
        ["memorisation", "saliency", "combined", "combined-max-rank"]


def test_the_self_influence_benchmark_runs(data_env, capsys):
    bench = _script("self_influence")
    assert bench.main(["--run", str(data_env["run"].path), "--solver",
                       "arnoldi:rank=3,hvp_samples=0", "--solver", "cg:max_iter=5,damp=20",
                       "--rows", "20"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["rows"] for line in lines[:2]] == [20, 20]
    assert "arnoldi:rank=3,hvp_samples=0 vs cg:max_iter=5,damp=20" in lines[2]["spearman"]


def test_the_audit_control_benchmark_audits_with_the_clean_model(data_env, tmp_path, capsys):
    """The control: the planted run's training set audited with a clean run's weights."""
    control = _script("audit_control")
    run = data_env["run"]
    clean = train_run(parse_spec("mnist"), TrainConfig(epochs=1, batch_size=16),
                      runs_dir=tmp_path / "clean", progress=False).run
    recipe = run.name.partition("_")[2].rsplit("-", 1)[0]
    out = tmp_path / "control"
    args = ["--runs-dir", str(run.path.parent), "--clean", str(clean.path), "--spec",
            run.spec.name, "--recipe", recipe, "--auditor", "saliency:quantile=0.9",
            "--out", str(out)]
    assert control.main(args + ["--max-runs", "0"]) == 0  # tabulates only: nothing computed
    assert not (out / f"{run.name}.json").exists()
    assert "finished runs still without one: 1" in capsys.readouterr().err
    grid = tmp_path / "results.json"  # the planted model's own audit, as audit_grid writes it
    grid.write_text(json.dumps({"rows": [{"run": run.name, "metrics": {
        "saliency:quantile=0.9": {"auroc": 0.25, "recall@100": 0.75}}}]}))
    figure = tmp_path / "control.png"
    assert control.main(args + ["--grid", str(grid), "--figure", str(figure)]) == 0
    row = json.loads((out / f"{run.name}.json").read_text())
    assert row["clean"] == clean.name and row["n"] == 2
    assert 0 <= row["metrics"]["saliency:quantile=0.9"]["auroc"] <= 1
    out_text = capsys.readouterr().out
    ctrl = row["metrics"]["saliency:quantile=0.9"]
    recall_table, auroc_table = out_text.split("**auroc")
    assert f"| mnist | v8 | 2 | 0 | 0.75 / {ctrl['recall@100']:.2f}" in recall_table
    assert f"| mnist | v8 | 2 | 0 | 0.250 / {ctrl['auroc']:.3f}" in auroc_table
    assert figure.read_bytes().startswith(b"\x89PNG")
