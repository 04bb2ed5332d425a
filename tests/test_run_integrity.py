"""Numbers that must never be wrong with exit 0 (issue 13): cached scores tied to the exact
weights, verified model files, a sane threshold, honest pooling in compare, one trainer per run;
and the seed protocol and Adam kernel of issue 14."""
from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
import torch

from rsc_core.analysis.compare import compare_runs, seed_protocol
from rsc_core.errors import CheckpointError, ConfigError, RscError
from rsc_core.runs.locks import RunLock
from rsc_core.runs.folder import Run, config_hash, run_config
from rsc_core.runs.scores import score_run
from rsc_core.runs.training import find_run, train_run
from rsc_core.evaluation.spurious_score import check_threshold
from rsc_core.data.spec import SpuriousSpec
from rsc_core.training.trainer import TrainConfig

RECIPE = TrainConfig(arch="MLP", epochs=2, batch_size=2)


def target_of(tiny_data) -> int:
    return int(tiny_data["mnist"].train.labels[0])


def spec(tiny_data, n: int = 1, seed: int = 0) -> SpuriousSpec:
    return SpuriousSpec.build("mnist", "v8", n, target_of(tiny_data), seed)


def train(tiny_data, tmp_path, the_spec=None, config=RECIPE, **kwargs) -> Run:
    return train_run(the_spec or spec(tiny_data), config, runs_dir=tmp_path / "runs",
                     data_dir=tiny_data.root, progress=False, device="cpu", **kwargs).run


def clean(tiny_data, tmp_path, config=RECIPE) -> Run:
    return train(tiny_data, tmp_path, SpuriousSpec.build("mnist"), config)


# --- 1. --force must not leave stale scores ---------------------------------------------------

def test_force_retrain_never_returns_the_old_weights_score(tiny_data, tmp_path):
    """The issue's case: score, retrain with --force (here on changed data, so the weights
    change), score again with the same arguments: the new weights' score, never the cache."""
    from dataclasses import replace

    from rsc_core.data.datasets import ImageData
    from rsc_core.evaluation.spurious_score import score_model
    from rsc_core.data.planting import build_spurious_dataset

    run = train(tiny_data, tmp_path)
    old = score_run(run, threshold=0.2, data_dir=tiny_data.root, device="cpu")
    data = build_spurious_dataset(spec(tiny_data), tiny_data.root)
    changed = replace(data, train=ImageData(1 - data.train.images, data.train.labels))
    forced = train(tiny_data, tmp_path, force=True, dataset=changed)
    assert forced.path == run.path
    assert [p.name for p in (run.path / "scores").iterdir()] == [forced.model_sha256()[:16]]
    fresh = score_run(forced, threshold=0.2, data_dir=tiny_data.root, device="cpu")
    expected = score_model(forced.load_model(), data.test, "v8", target_of(tiny_data), 0, 0.2)
    assert (fresh.indicators == expected.indicators).all()
    assert fresh.clean_accuracy == expected.clean_accuracy
    assert (fresh.score, fresh.patterned_accuracy) == (expected.score,
                                                      expected.patterned_accuracy)
    assert old.threshold == 0.2


def test_cached_score_is_filed_under_the_model_checksum(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path)
    score_run(run, threshold=0.3, data_dir=tiny_data.root, device="cpu")
    folders = [p.name for p in (run.path / "scores").iterdir()]
    assert folders == [run.model_sha256()[:16]]
    cached = json.loads(next((run.path / "scores" / folders[0]).glob("*th0.3.json")).read_text())
    assert cached["model_sha256"] == run.model_sha256()


def test_a_stale_score_from_other_weights_is_not_returned(tiny_data, tmp_path):
    """Write a bogus score for the current key under another checksum: it must be ignored."""
    run = train(tiny_data, tmp_path)
    real = score_run(run, threshold=0.4, data_dir=tiny_data.root, device="cpu")
    folder = run.path / "scores" / run.model_sha256()[:16]
    summary = next(folder.glob("*th0.4.json"))
    data = json.loads(summary.read_text())
    data["score"], data["model_sha256"] = 0.987, "0" * 64
    summary.write_text(json.dumps(data))
    again = score_run(run, threshold=0.4, data_dir=tiny_data.root, device="cpu")
    assert again.score == real.score != 0.987


# --- 2. the model file must be the run's ----------------------------------------------------

def test_truncated_model_is_an_error_not_a_reuse_or_cached_score(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path)
    score_run(run, data_dir=tiny_data.root, device="cpu")  # cache a score
    model = run.path / "model.pt"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="does not match its run.*bytes.*--force"):
        score_run(run, data_dir=tiny_data.root, device="cpu")
    with pytest.raises(CheckpointError, match="does not match its run"):
        train(tiny_data, tmp_path)  # not silently "reused"
    retrained = train(tiny_data, tmp_path, force=True)
    assert retrained.model_sha256()


def test_model_of_another_architecture_is_refused(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path)
    other = train(tiny_data, tmp_path, config=TrainConfig(arch="LargeMLP", epochs=1,
                                                          batch_size=2))
    shutil.copy(other.path / "model.pt", run.path / "model.pt")
    with pytest.raises(CheckpointError, match="does not match its run"):
        score_run(run, threshold=0.25, data_dir=tiny_data.root, device="cpu")
    assert not list((run.path / "scores").glob("*/*th0.25*"))


def test_same_size_replaced_model_is_caught_by_the_checksum(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path)
    model = run.path / "model.pt"
    data = bytearray(model.read_bytes())
    data[-200] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        run.load_model()


def test_run_folders_of_an_older_format_are_refused(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path)
    config = json.loads((run.path / "config.json").read_text())
    config["rsc_run"] = 1
    (run.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RscError, match="folder format 1.*--force"):
        Run.open(run.path)


# --- 3. the threshold --------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), -1.0, 0.0, 1.0, 1.5, float("inf")])
def test_threshold_outside_zero_one_is_refused(bad, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"finite number in \(0, 1\)"):
        check_threshold(bad)
    run = train(tiny_data, tmp_path)
    with pytest.raises(ConfigError):
        score_run(run, threshold=bad, data_dir=tiny_data.root, device="cpu")
    assert not any("nan" in p.name for p in (run.path / "scores").rglob("*"))


def test_score_key_keeps_every_digit_of_the_threshold(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path)
    a = score_run(run, threshold=0.1, data_dir=tiny_data.root, device="cpu")
    b = score_run(run, threshold=0.1000001, data_dir=tiny_data.root, device="cpu")
    assert a.threshold == 0.1 and b.threshold == 0.1000001


# --- 4, 5. compare pools only runs that differ in seeds --------------------------------------

def test_compare_refuses_runs_with_different_recipes_and_names_the_fields(tiny_data, tmp_path):
    a = train(tiny_data, tmp_path, spec(tiny_data, seed=0))
    b = train(tiny_data, tmp_path, spec(tiny_data, seed=1),
              TrainConfig(arch="MLP", epochs=3, batch_size=2))
    with pytest.raises(RscError, match=r"differ only in their seeds.*train\.epochs \(2 vs 3\)"):
        compare_runs([a, b], data_dir=tiny_data.root, device="cpu")


def test_compare_refuses_a_baseline_with_another_recipe_unless_allowed(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path)
    base = clean(tiny_data, tmp_path, TrainConfig(arch="MLP", epochs=1, batch_size=2))
    with pytest.raises(RscError, match=r"baseline .* another recipe: train\.epochs.*"
                                       r"--allow-mixed-baseline"):
        compare_runs([run], [base], data_dir=tiny_data.root, device="cpu")
    with pytest.warns(UserWarning, match="allowed by --allow-mixed-baseline"):
        result = compare_runs([run], [base], data_dir=tiny_data.root, device="cpu",
                              allow_mixed_baseline=True)
    assert [r.n for r in result.rows] == [0, 1]


def test_compare_counts_a_run_given_twice_once(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path)
    twin = Run(str(run.path.parent / ".." / "runs" / run.path.name))  # another spelling
    with pytest.warns(UserWarning, match="counted once"):
        result = compare_runs([run, twin], data_dir=tiny_data.root, device="cpu")
    assert result.rows[0].runs == 1


def test_compare_refuses_a_copied_run_posing_as_another_seed(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path)
    copy = tmp_path / "elsewhere" / run.path.name
    shutil.copytree(run.path, copy)
    with pytest.raises(RscError, match="same configuration"):
        compare_runs([run, Run.open(copy)], data_dir=tiny_data.root, device="cpu")


# --- issue 14: seed protocols ------------------------------------------------------------

@pytest.mark.parametrize("pairs, name", [
    ([(0, 0), (1, 0), (2, 0)], "dataset-seeds"),
    ([(0, 0), (1, 1), (2, 2)], "paired"),
    ([(0, 0), (0, 1)], "training-seeds"),
    ([(3, 0)], "single"),
    ([(0, 0), (1, 0), (2, 2)], "mixed"),
])
def test_seed_protocol_names(pairs, name):
    assert seed_protocol(pairs) == name


def test_compare_reports_the_study_protocol(tiny_data, tmp_path):
    runs = [train(tiny_data, tmp_path, spec(tiny_data, seed=s)) for s in (0, 1)]
    base = clean(tiny_data, tmp_path)
    result = compare_runs(runs, [base], data_dir=tiny_data.root, device="cpu")
    assert result.seeds.name == "dataset-seeds"
    assert "the study's protocol" in result.seeds.description
    assert result.as_dict()["seed_protocol"]["dataset_seeds"] == [0, 1]


def test_compare_refuses_mixed_seed_protocols_unless_told(tiny_data, tmp_path):
    study = [train(tiny_data, tmp_path, spec(tiny_data, seed=s)) for s in (0, 1)]
    paired = train(tiny_data, tmp_path, spec(tiny_data, seed=2),
                   TrainConfig(arch="MLP", epochs=2, batch_size=2, seed=2))
    with pytest.raises(RscError, match=r"mix seed protocols \(dataset seed/training seed: "
                                       r"0/0, 1/0, 2/2\).*--allow-mixed-seeds"):
        compare_runs(study + [paired], data_dir=tiny_data.root, device="cpu")
    result = compare_runs(study + [paired], data_dir=tiny_data.root, device="cpu",
                          allow_mixed_seeds=True)
    assert result.seeds.name == "mixed" and result.rows[0].runs == 3
    # the same through `rsc compare`: refused with one line, then allowed and labelled
    from click.testing import CliRunner

    from rsc_cli.main import cli

    args = ["compare", *(str(r.path) for r in study + [paired]), "--data-dir",
            str(tiny_data.root), "--device", "cpu"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code != 0 and "mix seed protocols" in refused.output
    allowed = CliRunner().invoke(cli, args + ["--allow-mixed-seeds"])
    assert allowed.exit_code == 0 and "runs follow different protocols" in allowed.output
    study_only = CliRunner().invoke(cli, args[:3] + args[4:])
    assert study_only.exit_code == 0, study_only.output
    assert "dataset seeds 0, 1, training seeds 0" in study_only.output
    assert "the study's protocol" in study_only.output


# --- issue 14: the Adam kernel is part of the recipe ---------------------------------------

def test_adam_impl_changes_the_run_hash_and_is_recorded(tiny_data):
    the_spec = spec(tiny_data)
    hashes = {impl: config_hash(run_config(the_spec, TrainConfig(adam_impl=impl)))
              for impl in ("fused", "foreach", "single")}
    assert len(set(hashes.values())) == 3
    assert run_config(the_spec, TrainConfig(adam_impl="single"))["train"]["adam_impl"] == "single"
    with pytest.raises(ConfigError, match="Adam only"):
        TrainConfig(optimizer="sgd", adam_impl="foreach")
    with pytest.raises(ConfigError, match="unknown Adam implementation"):
        TrainConfig(adam_impl="fast")


def test_adam_kernels_give_the_same_update_up_to_rounding(tiny_data, tmp_path):
    weights = {}
    for impl in ("fused", "foreach", "single"):
        run = train(tiny_data, tmp_path, config=TrainConfig(arch="MLP", epochs=2, batch_size=2,
                                                            adam_impl=impl))
        weights[impl] = run.load_model().state_dict()
    for impl in ("foreach", "single"):
        for key, value in weights["fused"].items():
            torch.testing.assert_close(weights[impl][key], value, rtol=1e-4, atol=1e-5)


def test_equivalent_milestones_hash_the_same_and_bad_ones_are_refused(tiny_data):
    the_spec = spec(tiny_data)
    implicit = config_hash(run_config(the_spec, TrainConfig(epochs=70)))
    explicit = config_hash(run_config(the_spec, TrainConfig(epochs=70, milestones=(40, 50, 60))))
    assert implicit == explicit
    for bad in ((50, 40), (10, 10), (0, 5), (-3,), ()):
        with pytest.raises(ConfigError, match="milestones"):
            TrainConfig(milestones=bad)


# --- concurrency: one trainer per run ----------------------------------------------------

def _hold_lock(path: str, ready, release) -> None:
    with RunLock(Path(path)):
        ready.set()
        release.wait(30)


def test_a_second_trainer_waits_names_the_holder_and_then_reuses(tiny_data, tmp_path):
    run_path = find_run(spec(tiny_data), RECIPE, tmp_path / "runs").path
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(run_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        heard = []
        with pytest.raises(RscError, match=r"still being trained by process \d+"):
            with RunLock(run_path, timeout=0.2, on_wait=heard.append):
                pass
        assert heard and "waiting for it to finish" in heard[0]
    finally:
        release.set()
        holder.join(30)
    first = train_run(spec(tiny_data), RECIPE, runs_dir=tmp_path / "runs",
                      data_dir=tiny_data.root, progress=False, device="cpu")
    second = train_run(spec(tiny_data), RECIPE, runs_dir=tmp_path / "runs",
                       data_dir=tiny_data.root, progress=False, device="cpu")
    assert not first.reused and second.reused


def _crash_holding_lock(path: str) -> None:
    import os

    lock = RunLock(Path(path))
    lock.__enter__()
    os._exit(1)  # dies without releasing: the OS must free the claim


def test_a_crashed_holder_leaves_no_stale_claim(tiny_data, tmp_path):
    run_path = find_run(spec(tiny_data), RECIPE, tmp_path / "runs").path
    context = multiprocessing.get_context("spawn")
    crashed = context.Process(target=_crash_holding_lock, args=(str(run_path),))
    crashed.start()
    crashed.join(60)
    started = time.monotonic()
    with RunLock(run_path, timeout=5):
        pass
    assert time.monotonic() - started < 5


def test_two_trainers_started_together_train_once(tiny_data, tmp_path):
    """Two processes ask for the same run at once: one trains, the other reuses."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    args = (str(tiny_data.root), str(tmp_path / "runs"), target_of(tiny_data), queue)
    workers = [context.Process(target=_train_in_process, args=args) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = sorted(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(60)
    assert outcomes == [False, True]  # (reused?) one trained, one reused
    log = (find_run(spec(tiny_data), RECIPE, tmp_path / "runs").path / "log.txt").read_text()
    assert log.count(" start ") == 1 and log.count("finished") == 1


def _train_in_process(data_root: str, runs_root: str, target: int, queue) -> None:
    outcome = train_run(SpuriousSpec.build("mnist", "v8", 1, target, 0), RECIPE,
                        runs_dir=runs_root, data_dir=data_root, progress=False, device="cpu")
    queue.put(outcome.reused)


def test_train_cli_defaults_to_the_study_seed_protocol_and_offers_paired(tiny_data, tmp_path):
    from click.testing import CliRunner

    from rsc_cli.main import cli

    target = target_of(tiny_data)
    common = ["train", "--spec", f"mnistv8-1-{target}-3", "--arch", "MLP", "--epochs", "1",
              "--batch-size", "2", "--quiet", "--json", "--data-dir", str(tiny_data.root),
              "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"]
    runner = CliRunner()
    study = runner.invoke(cli, common)
    assert study.exit_code == 0, study.output
    assert Run(json.loads(study.stdout)["run"]).train_config.seed == 0
    paired = runner.invoke(cli, common + ["--train-seed-equals-dataset-seed"])
    assert paired.exit_code == 0, paired.output
    assert Run(json.loads(paired.stdout)["run"]).train_config.seed == 3
    both = runner.invoke(cli, common + ["--train-seed-equals-dataset-seed", "--train-seed", "0"])
    assert both.exit_code != 0 and "not both" in both.output


def test_train_run_checks_regulariser_and_recipe_fit_before_loading_data(tmp_path):
    """Label smoothing needs the cross-entropy: refused before any data is read."""
    config = TrainConfig(arch="MLP", loss="mse",
                         regularisers=({"name": "label-smoothing", "params": {"eps": 0.1}},))
    with pytest.raises(ConfigError, match="label"):
        train_run(SpuriousSpec.build("mnist"), config, runs_dir=tmp_path / "runs",
                  data_dir=tmp_path / "no-data-here", progress=False, device="cpu")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_finish_cut_short_keeps_the_trained_model_and_only_finishes(tiny_data, tmp_path,
                                                                     monkeypatch):
    """Disk full while writing metrics.json: the trained model stays, and training the run
    again finishes it from model.pt without training any epoch again."""
    import errno

    from rsc_core.runs import training as runs_module

    real_write_json = runs_module.write_json

    def full_disk(path, data):
        if Path(path).name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write_json(path, data)

    monkeypatch.setattr(runs_module, "write_json", full_disk)
    with pytest.raises(OSError):
        train(tiny_data, tmp_path)
    run_path = find_run(spec(tiny_data), RECIPE, tmp_path / "runs").path
    assert (run_path / "model.pt").is_file() and not (run_path / "metrics.json").exists()
    monkeypatch.setattr(runs_module, "write_json", real_write_json)
    outcome = train_run(spec(tiny_data), RECIPE, runs_dir=tmp_path / "runs",
                        data_dir=tiny_data.root, progress=False, device="cpu")
    assert outcome.resumed_from == RECIPE.epochs and outcome.run.finished
    assert [h["epoch"] for h in outcome.run.metrics["history"]] == [1, 2]
    assert outcome.run.model_sha256()


@pytest.mark.parametrize("lr, optimizer", [(1e308, "sgd"), (1e39, "adam")])
def test_a_learning_rate_beyond_float32_is_refused_up_front(lr, optimizer):
    """SGD passes lr to a float32 kernel: 1e308 overflowed there with a RuntimeError."""
    with pytest.raises(ConfigError, match="larger than the largest float32"):
        TrainConfig(lr=lr, optimizer=optimizer)


def test_compare_without_baseline_does_not_label_rows_baseline(tiny_data, tmp_path):
    from click.testing import CliRunner

    from rsc_cli.main import cli

    run = train(tiny_data, tmp_path)
    result = CliRunner().invoke(cli, ["compare", str(run.path), "--data-dir",
                                      str(tiny_data.root), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "no baseline" in result.stdout and "│ baseline" not in result.stdout


def test_comparison_figure_uses_fixed_axes_and_says_how_many_runs(monkeypatch, tmp_path):
    """Figures are evidence: scores and accuracies on 0-1 axes, run counts in the title."""
    from rsc_core import plots

    captured = {}
    monkeypatch.setattr(plots, "_save", lambda fig, title, path: captured.update(
        fig=fig, title=title) or Path(path))
    rows = [{"n": 0, "runs": 1, "score_mean": 0.005, "score_sem": float("nan"),
             "clean_accuracy_mean": 0.967, "clean_accuracy_sem": float("nan")},
            {"n": 3, "runs": 5, "score_mean": 0.025, "score_sem": 0.01,
             "clean_accuracy_mean": 0.966, "clean_accuracy_sem": 0.001}]
    plots.save_comparison_plot(rows, "MNIST, 10 epochs", tmp_path / "f.png")
    assert [axis.get_ylim() for axis in captured["fig"].axes] == [(0.0, 1.0), (0.0, 1.0)]
    assert captured["title"] == "MNIST, 10 epochs, 1-5 run(s) per point"
