"""Data removal (issue 8): removal run folders, incremental retraining, group influence,
exact retraining, the CLI's errors, and first-layer weight maps. A tiny MNIST-format set
(200 training images) and MLP runs of 3 epochs keep it fast."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from conftest import write_idx_dataset
from rsc_plugins.trainers.erm import ErmTrainer
from rsc_core.checkpoints import read_checkpoint
from rsc_core.datasets import ImageData
from rsc_core.removal_runs import remove_run
from rsc_core.runs import Run, train_run
from rsc_core.spec import SpuriousSpec
from rsc_core.spurious import build_spurious_dataset
from rsc_core.training import TrainConfig
from rsc_plugins.removal.hessian import LossHessian

NUM_TRAIN = 200
# decayed twice by epoch 3, so the source ends at lr 1e-4: what incremental retraining keeps
CONFIG = TrainConfig(arch="MLP", epochs=3, batch_size=32, milestones=(1, 2))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data root, a finished source run and its folder listing (to prove it never changes)."""
    root = tmp_path_factory.mktemp("removal")
    written = write_idx_dataset(root / "data", "MNIST", seed=5, n_train=NUM_TRAIN, n_test=40)
    target = int(written.train.labels[0])
    spec = SpuriousSpec.build("mnist", "v20", 3, target, 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RSC_CACHE_DIR", str(root / "cache"))
        source = train_run(spec, CONFIG, runs_dir=root / "runs", data_dir=root / "data",
                           progress=False, device="cpu").run
    return {"root": root, "data": root / "data", "runs": root / "runs", "source": source,
            "spec": spec}


@pytest.fixture
def env(world, monkeypatch):
    monkeypatch.setenv("RSC_DATA_DIR", str(world["data"]))
    monkeypatch.setenv("RSC_RUNS_DIR", str(world["runs"]))
    return world


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime)
            for p in folder.rglob("*") if p.is_file()}


def listing(runs: Path) -> set[str]:
    return {p.name for p in runs.iterdir() if not p.name.startswith(".")}


def remove(env, method: str, forget: str = "spurious", **options):
    return remove_run(env["source"].path, method, forget, options, runs_dir=env["runs"],
                      data_dir=env["data"], device="cpu")


# --------------------------------------------------------------------------- incremental
def test_incremental_retraining_never_sees_a_removed_example_and_keeps_the_lr(env,
                                                                              monkeypatch):
    source = env["source"]
    data = build_spurious_dataset(source.spec, env["data"])
    forget = sorted({*source.metrics["spurious_indices"], 5, 17})
    removed = data.train.images[forget].flatten(1)
    seen_rows = []
    original = ErmTrainer._train_epoch

    def spy(self, ctx, x_all, y_all, *args, **kwargs):
        # every batch of this epoch is a slice of x_all: recording x_all's rows covers them
        seen_rows.append(x_all.flatten(1).clone())
        return original(self, ctx, x_all, y_all, *args, **kwargs)

    monkeypatch.setattr(ErmTrainer, "_train_epoch", spy)
    before = snapshot(source.path)
    outcome = remove(env, "incremental-retraining", ",".join(map(str, forget)))
    assert snapshot(source.path) == before  # the source is never modified
    assert len(seen_rows) == CONFIG.epochs  # epochs 4..6
    for rows in seen_rows:
        assert rows.shape[0] == NUM_TRAIN - len(forget)
        assert not (rows[:, None, :] == removed[None]).all(-1).any()
    metrics = outcome.run.metrics
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, 7))
    source_lr = read_checkpoint(source.path / "model.pt")["optimizer_state_dict"][
        "param_groups"][0]["lr"]
    assert source_lr == pytest.approx(1e-4)
    assert all(h["lr"] == source_lr for h in history[3:])
    assert metrics["removal"]["facts"]["learning_rates"] == [source_lr]


def test_incremental_retraining_resumes_the_optimizer_state(env):
    outcome = remove(env, "incremental-retraining", extra_epochs=2)
    source_state = read_checkpoint(env["source"].path / "model.pt")["optimizer_state_dict"]
    new_state = read_checkpoint(outcome.run.path / "model.pt")["optimizer_state_dict"]
    batches = math.ceil((NUM_TRAIN - 3) / CONFIG.batch_size)
    for key, state in new_state["state"].items():
        assert float(state["step"]) == float(source_state["state"][key]["step"]) + 2 * batches
    assert outcome.run.metrics["removal"]["facts"]["epochs"] == [4, 5]


def test_a_fresh_optimizer_would_differ(env, monkeypatch):
    """Guard for the test above: dropping the optimizer state changes the result, so the
    resume really matters (a remover ignoring it would be caught)."""
    kept = Run(remove(env, "incremental-retraining", extra_epochs=1).run.path).load_model()
    from rsc_plugins.removal import incremental_retraining as module

    original = module.read_checkpoint

    def without_state(path):
        checkpoint = dict(original(path))
        state = checkpoint["optimizer_state_dict"]
        checkpoint["optimizer_state_dict"] = {**state, "state": {}}
        return checkpoint

    monkeypatch.setattr(module, "read_checkpoint", without_state)
    fresh = remove_run(env["source"].path, "incremental-retraining", "spurious",
                       {"extra_epochs": 1}, runs_dir=env["root"] / "other-runs",
                       data_dir=env["data"], device="cpu").run.load_model()
    assert not torch.equal(kept.state_dict()["hidden.weight"], fresh.state_dict()["hidden.weight"])


# --------------------------------------------------------------------------- retrain
def test_retrain_equals_training_on_the_reduced_dataset(env):
    source = env["source"]
    forget = [*source.metrics["spurious_indices"], 11]
    outcome = remove(env, "retrain", ",".join(map(str, forget)))
    data = build_spurious_dataset(source.spec, env["data"])
    keep = torch.tensor([i for i in range(NUM_TRAIN) if i not in forget])
    reduced = ImageData(data.train.images[keep], data.train.labels[keep])
    import rsc_core

    torch.manual_seed(CONFIG.seed)
    model = rsc_core.create("architectures", "MLP").build(data.input_shape, data.num_classes)
    ErmTrainer().fit(model, reduced, None, CONFIG)
    retrained = outcome.run.load_model().state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(retrained[name], value), name
    removal = outcome.run.metrics["removal"]
    assert removal["l2_to_retrained"] == 0.0
    assert Path(removal["facts"]["trained_run"]).is_dir()
    # an approximate method run afterwards measures its distance to this retrained model
    later = remove(env, "incremental-retraining", ",".join(map(str, forget)), extra_epochs=1)
    distance = later.run.metrics["removal"]["l2_to_retrained"]
    expected = math.sqrt(sum(float((later.run.load_model().state_dict()[k].double()
                                    - retrained[k].double()).pow(2).sum())
                             for k in retrained))
    assert distance == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- group influence
def test_group_influence_with_cg_applies_the_influence_formula(env):
    outcome = remove(env, "group-influence", solver="cg", damp=5.0, tol=1e-8, max_iter=300)
    source = env["source"]
    removal = outcome.run.metrics["removal"]
    assert removal["facts"]["cg_converged"]
    data = build_spurious_dataset(source.spec, env["data"])
    hessian = LossHessian(source.load_model(), data.train.images, data.train.labels)
    forget = torch.tensor(source.metrics["spurious_indices"])
    v = hessian.gradient_sum(forget)
    new = LossHessian(outcome.run.load_model(), data.train.images, data.train.labels).theta
    p = len(forget) / NUM_TRAIN
    x = (new - hessian.theta) * (1 - p) * NUM_TRAIN  # should solve (H + 5 I) x = v
    residual = hessian.hvp_mean(x) + 5.0 * x - v
    assert v.norm() > 0
    assert (residual.norm() / v.norm()).item() < 1e-3  # float32 weights store the update
    assert removal["options"] == {"solver": "cg", "compat": "correct", "damp": 5.0, "seed": 0,
                                  "tol": 1e-8, "max_iter": 300, "hvp_samples": 0}


def test_group_influence_lissa_writes_reference_defaults_and_a_finite_model(env):
    outcome = remove(env, "group-influence", compat="reference", scale=500.0, depth=30,
                     repeats=3)
    options = outcome.run.metrics["removal"]["options"]
    assert options["scale"] == 500.0 and options["damp"] == 0.01 and options["hvp_batch"] == 1
    state = outcome.run.load_model().state_dict()
    assert all(torch.isfinite(t).all() for t in state.values())
    facts = outcome.run.metrics["removal"]["facts"]
    assert facts["lissa_steps"] == 90 and facts["p"] == pytest.approx(3 / NUM_TRAIN)


def test_reference_defaults_depend_on_dataset_and_forget_size(env):
    import rsc_core

    remover = rsc_core.create("removers", "group-influence")
    small = remover.resolve_options({}, env["source"], np.arange(3))
    large = remover.resolve_options({}, env["source"], np.arange(100))
    assert (small["scale"], small["depth"], small["repeats"]) == (25.0, 2000, 10)
    assert large["depth"] == 1000
    assert "tol" not in small and "depth" not in remover.resolve_options(
        {"solver": "cg"}, env["source"], np.arange(3))


def test_diverging_lissa_is_one_line_and_writes_nothing(env):
    before = listing(env["runs"])
    result = CliRunner().invoke(cli, ["remove", str(env["source"].path), "--method",
                                      "group-influence", "--scale", "0.001", "--damp",
                                      "0.0001", "--depth", "50", "--repeats", "2", "-q",
                                      "--compat", "reference"])
    assert result.exit_code == 2, result.output
    assert "diverged by step" in result.output and "--scale" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert listing(env["runs"]) == before


# --------------------------------------------------------------------------- folders
def test_removal_is_reused_unless_forced_and_is_a_run(env):
    first = remove(env, "incremental-retraining", extra_epochs=1)
    again = remove(env, "incremental-retraining", extra_epochs=1)
    assert again.reused and again.run.path == first.run.path
    weights = again.run.load_model().state_dict()
    forced = remove_run(env["source"].path, "incremental-retraining", "spurious",
                        {"extra_epochs": 1}, runs_dir=env["runs"], data_dir=env["data"],
                        device="cpu", force=True)
    assert not forced.reused and forced.run.path == first.run.path
    forced_weights = forced.run.load_model().state_dict()
    assert all(torch.equal(weights[k], forced_weights[k]) for k in weights)  # deterministic
    run = Run.open(first.run.path)
    config = run.config
    assert config["removal"]["source"]["name"] == env["source"].name
    assert config["removal"]["forget"] == sorted(env["source"].metrics["spurious_indices"])
    metrics = run.metrics
    for key in ("before", "after", "forget_set", "l2_to_source", "seconds", "facts"):
        assert key in metrics["removal"]
    assert metrics["removal"]["before"]["score"] == env["source"].metrics["score"]["score"]
    assert metrics["spurious_indices"] == []  # all planted rows were forgotten
    assert not any(p.name.startswith(".") and "tmp" in p.name for p in env["runs"].iterdir())


def test_cli_remove_prints_before_and_after(env):
    result = CliRunner().invoke(cli, ["remove", str(env["source"].path), "-m",
                                      "incremental-retraining", "--extra-epochs", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "spurious score" in result.output and "->" in result.output
    result = CliRunner().invoke(cli, ["remove", str(env["source"].path), "-m",
                                      "incremental-retraining", "--extra-epochs", "1", "-q",
                                      "--json"])
    data = json.loads(result.output)
    assert data["reused"] and data["removal"]["method"] == "incremental-retraining"


@pytest.mark.parametrize("args, message", [
    (["--forget", "3,99999"], "training index 99999 is out of range"),
    (["--forget", "-1"], "training index -1 is out of range"),
    (["--forget", "EMPTY"], "the forget set is empty"),
    (["--forget", "BAD"], "line 2: 'x7' is not a training index"),
    (["--forget", "no/such/file"], "neither 'spurious', a list of training indices"),
    (["--method", "nope"], "nope"),
    (["--depth", "5"], "has no option 'depth'; its options are: extra_epochs"),
    (["--solver", "cg", "--depth", "5", "--method", "group-influence"], "does not apply to "
                                                                         "solver cg"),
    (["-O", "bogus=1"], "has no option 'bogus'"),
])
def test_bad_input_is_one_line_and_writes_nothing(env, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("# nothing\n")
    (tmp_path / "bad.txt").write_text("3\nx7\n")
    args = [{"EMPTY": str(tmp_path / "empty.txt"), "BAD": str(tmp_path / "bad.txt")}.get(a, a)
            for a in args]
    method = [] if "--method" in args else ["--method", "incremental-retraining"]
    before = listing(env["runs"])
    result = CliRunner().invoke(cli, ["remove", str(env["source"].path), *method, *args, "-q"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith("Error:") and len(result.output.strip().splitlines()) == 1
    assert listing(env["runs"]) == before


def test_an_unfinished_source_is_refused(env, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((env["source"].path / "config.json").read_text())
    result = CliRunner().invoke(cli, ["remove", str(unfinished), "-m", "retrain", "-q"])
    assert result.exit_code == 2
    assert "has not finished" in result.output and len(result.output.strip().splitlines()) == 1
    assert os.listdir(unfinished) == ["config.json"]


# --------------------------------------------------------------------------- weight maps
def test_weight_maps_of_one_and_two_runs(env, tmp_path):
    source = env["source"]
    other = remove(env, "incremental-retraining", extra_epochs=1).run
    result = CliRunner().invoke(cli, ["weights", str(source.path), str(other.path), "-o",
                                      str(tmp_path / "map.png"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    weight = source.load_model().state_dict()["hidden.weight"]
    assert summary["maps"][0]["max"] == pytest.approx(weight.max().item(), rel=1e-6)
    assert summary["maps"][0]["mean"] == pytest.approx(weight.max(0).values.mean().item(),
                                                       rel=1e-5)
    assert summary["maps"][0]["shape"] == [28, 28]
    new = other.load_model().state_dict()["hidden.weight"]
    diff = new.max(0).values.double() - weight.max(0).values.double()
    assert summary["difference"]["max_abs"] == pytest.approx(diff.abs().max().item(), rel=1e-6)
    assert (tmp_path / "map.png").stat().st_size > 1000
    single = CliRunner().invoke(cli, ["weights", str(source.path), "-o",
                                      str(tmp_path / "one.png")])
    assert single.exit_code == 0 and (tmp_path / "one.png").is_file()


def test_weight_maps_need_an_mlp_and_an_output(env, tmp_path):
    result = CliRunner().invoke(cli, ["weights", str(env["source"].path)])
    assert result.exit_code == 2 and "give -o FILE.png" in result.output
    from rsc_core.errors import ConfigError
    from rsc_core.weight_maps import first_layer_map
    import rsc_core

    cnn = rsc_core.create("architectures", "CNN002").build((1, 28, 28), 10)
    with pytest.raises(ConfigError, match="not an MLP"):
        first_layer_map(cnn, (1, 28, 28), "cnn")


def test_a_forget_set_with_zero_gradient_leaves_the_model_unchanged(env, monkeypatch):
    """Memorised examples can have a float32 loss of exactly 0; then v = 0, the update is 0
    and no solver runs (the real MNIST R3 n = 3 seed-0 run is such a case)."""
    from rsc_plugins.removal import hessian as module

    monkeypatch.setattr(module.LossHessian, "gradient_sum",
                        lambda self, rows: torch.zeros_like(self.theta))
    outcome = remove(env, "group-influence", depth=7)
    facts = outcome.run.metrics["removal"]["facts"]
    assert facts["zero_gradient"] and "lissa_steps" not in facts
    assert outcome.run.metrics["removal"]["l2_to_source"] == 0.0


def test_folder_names_tell_variants_apart(env):
    reference = remove(env, "group-influence", compat="reference", scale=500.0, depth=30,
                       repeats=3).run
    cg = remove(env, "group-influence", solver="cg", damp=5.0, tol=1e-8, max_iter=300).run
    incremental = remove(env, "incremental-retraining", extra_epochs=1).run
    source = env["source"].name
    assert reference.name.startswith(f"{source}_rm-group-influence-lissa-reference-")
    assert cg.name.startswith(f"{source}_rm-group-influence-cg-correct-")
    assert incremental.name.startswith(f"{source}_rm-incremental-retraining-e1-")


# --------------------------------------------------------------------------- EK-FAC solver
def test_group_influence_with_ekfac_applies_the_influence_formula(env):
    pytest.importorskip("kronfluence")
    from rsc_plugins.removal.ekfac import EkfacSettings, ekfac_ihvp

    outcome = remove(env, "group-influence", solver="ekfac", damp=0.5, fit_samples=150)
    source = env["source"]
    removal = outcome.run.metrics["removal"]
    assert removal["options"] == {"solver": "ekfac", "compat": "correct", "damp": 0.5,
                                  "seed": 0, "fit_samples": 150, "fit_batch": 256}
    assert outcome.run.name.startswith(f"{source.name}_rm-group-influence-ekfac-correct-")
    assert removal["facts"]["ekfac_fit_rows"] == 150 and removal["facts"]["ekfac_layers"] == 2
    data = build_spurious_dataset(source.spec, env["data"])
    hessian = LossHessian(source.load_model(), data.train.images, data.train.labels)
    v = hessian.gradient_sum(torch.tensor(source.metrics["spurious_indices"]))
    solved, _ = ekfac_ihvp(hessian.model, hessian.images, hessian.labels, hessian.unflatten(v),
                           EkfacSettings(damp=0.5, fit_samples=150), torch.device("cpu"))
    expected = torch.cat([solved[name].reshape(-1) for name in hessian.names])
    new = LossHessian(outcome.run.load_model(), data.train.images, data.train.labels).theta
    p = 3 / NUM_TRAIN
    update = (new - hessian.theta) * (1 - p) * NUM_TRAIN  # should be (G + 0.5 I)^-1 v
    assert v.norm() > 0 and expected.norm() > 0
    assert ((update - expected).norm() / expected.norm()).item() < 1e-3  # float32 weights


def test_ekfac_without_kronfluence_names_the_extra_and_writes_nothing(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "kronfluence", None)  # "import kronfluence" now fails
    before = listing(env["runs"])
    result = CliRunner().invoke(cli, ["remove", str(env["source"].path), "-m",
                                      "group-influence", "--solver", "ekfac", "-q"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error:") and len(result.output.strip().splitlines()) == 1
    assert "pip install 'rsc[influence]'" in result.output
    assert listing(env["runs"]) == before


@pytest.mark.parametrize("args, message", [
    (["--solver", "ekfac", "--depth", "5"], "option 'depth' does not apply to solver ekfac"),
    (["--solver", "cg", "--fit-samples", "10"], "option 'fit_samples' does not apply to "
                                                "solver cg"),
    (["--solver", "ekfac", "--fit-samples", "-1"], "'fit_samples' cannot be negative"),
    (["--solver", "ekfac", "--fit-batch", "0"], "'fit_batch' must be at least 1"),
    (["--solver", "ekfac", "--scale", "3"], "'scale' does not apply to solver ekfac in the "
                                            "correct mode"),
])
def test_ekfac_option_errors_are_one_line(env, args, message):
    pytest.importorskip("kronfluence")
    result = CliRunner().invoke(cli, ["remove", str(env["source"].path), "-m",
                                      "group-influence", *args, "-q"])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("arch", ["MLP", "MLPv2", "LargeMLP", "LargeMLPv2", "CNN002",
                                  "altResNet20", "altResNet20Norm02"])
def test_ekfac_serves_linear_and_conv_models_and_refuses_batch_norm(arch):
    """Vgg16Norm02 (convs, linears, no batch norm) is left out only for its 138M-parameter
    build; the check is the same."""
    import rsc_core
    from rsc_core.errors import ConfigError
    from rsc_plugins.removal.ekfac import check_supported

    shape = (3, 32, 32) if "Norm02" in arch else (1, 28, 28)
    model = rsc_core.create("architectures", arch).build(shape, 10)
    if arch.startswith("altResNet"):
        with pytest.raises(ConfigError, match="only Linear and Conv2d layers.*BatchNorm2d.*"
                                              "--solver cg or lissa"):
            check_supported(model)
    else:
        check_supported(model)


def test_benchmark_ekfac_section_compares_with_cg(env):
    """benchmarks/group_influence.py --ekfac-only keeps running and its comparison is
    consistent (not a timing test)."""
    pytest.importorskip("kronfluence")
    import subprocess

    from conftest import ONE_THREAD_ENV

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "group_influence.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--run", str(env["source"].path), "--data-dir",
         str(env["data"]), "--ekfac-only", "--ekfac-damp", "5", "--ekfac-fit-samples", "60",
         "0", "--cg-rows", str(NUM_TRAIN)], capture_output=True, text=True, timeout=300,
        env=ONE_THREAD_ENV)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    report = json.loads("\n".join(lines[lines.index("{"):]))["ekfac"]
    assert report["cg_converged"] and [f["ekfac_fit_rows"] for f in report["fits"]] == [
        60, NUM_TRAIN]
    for fit in report["fits"]:
        assert 0.5 < fit["cosine"] <= 1 + 1e-9 and 0.5 < fit["norm_ratio"] < 2
        assert fit["seconds"] >= fit["ekfac_fit_seconds"] > 0
