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
from rsc_core.runs.checkpoints import read_checkpoint
from rsc_core.data.datasets import ImageData
from rsc_core.removal.runs import remove_run
from rsc_core.runs.folder import Run
from rsc_core.runs.training import train_run
from rsc_core.data.spec import SpuriousSpec
from rsc_core.data.planting import build_spurious_dataset
from rsc_core.training.trainer import TrainConfig
from rsc_core.influence.hessian import LossHessian

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
    outcome = remove(env, "group-influence", compat="paper", scale=500.0, depth=30,
                     repeats=3)
    options = outcome.run.metrics["removal"]["options"]
    assert options["scale"] == 500.0 and options["damp"] == 0.01 and options["hvp_batch"] == 1
    state = outcome.run.load_model().state_dict()
    assert all(torch.isfinite(t).all() for t in state.values())
    facts = outcome.run.metrics["removal"]["facts"]
    assert facts["lissa_steps"] == 90 and facts["p"] == pytest.approx(3 / NUM_TRAIN)


def test_reference_defaults_depend_on_dataset_and_forget_size(env):
    import rsc_core
    from rsc_plugins.removal.group_influence import reference_depth

    remover = rsc_core.create("removers", "group-influence")
    small = remover.resolve_options({}, env["source"], np.arange(3))
    large = remover.resolve_options({}, env["source"], np.arange(100))
    assert (small["scale"], small["depth"], small["repeats"]) == (25.0, 2000, 10)
    assert large["depth"] == 1000
    # the reference: CIFAR-10 1000 steps for every |S|; MNIST and Fashion 2000 below 100
    assert [reference_depth(n, "cifar10") for n in (3, 99, 100)] == [1000, 1000, 1000]
    assert [reference_depth(n, "fashion") for n in (3, 99, 100)] == [2000, 2000, 1000]
    assert "tol" not in small and "depth" not in remover.resolve_options(
        {"solver": "cg"}, env["source"], np.arange(3))


@pytest.mark.parametrize("compat, message", [("paper", "diverged by step"),
                                             ("reference", "produced a non-finite iterate")])
def test_diverging_lissa_is_one_line_and_writes_nothing(env, compat, message):
    before = listing(env["runs"])
    result = CliRunner().invoke(cli, ["remove", str(env["source"].path), "--method",
                                      "group-influence", "--scale", "0.001", "--damp",
                                      "0.0001", "--depth", "50", "--repeats", "2", "-q",
                                      "--compat", compat])
    assert result.exit_code == 2, result.output
    assert message in result.output and "--scale" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert listing(env["runs"]) == before


def test_reference_mode_writes_what_the_reference_code_writes(env):
    """--compat reference end to end: the stored weights are the independent
    re-implementation's (tests/reference_group_influence.py: graph kept, chains
    list-extended) given the Hessian samples the remover draws from its seed."""
    from reference_group_influence import reference_new_weights
    from rsc_plugins.removal.reference_lissa import draw_reference_samples

    depth, repeats, seed = 25, 3, 4
    outcome = remove(env, "group-influence", compat="reference", depth=depth,
                     repeats=repeats, seed=seed)
    removal = outcome.run.metrics["removal"]
    assert removal["options"] == {"solver": "lissa", "compat": "reference", "damp": 0.01,
                                  "scale": 25.0, "seed": seed, "depth": depth,
                                  "repeats": repeats, "emulation": 2}
    assert removal["facts"]["lissa_steps"] == depth * 3
    source = env["source"]
    data = build_spurious_dataset(source.spec, env["data"])
    forget = sorted(source.metrics["spurious_indices"])
    chain0 = draw_reference_samples(NUM_TRAIN, depth, len(forget),
                                    torch.Generator().manual_seed(seed), torch.device("cpu"))
    samples = [[chain0[:, j, 0].tolist()] * repeats for j in range(len(forget))]
    model = source.load_model().double().eval()
    images = data.train.images.double()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    expected = reference_new_weights(model, images, data.train.labels, forget, samples,
                                     0.01, 25.0, repeats) - theta
    new = outcome.run.load_model()
    written = torch.cat([p.detach().double().reshape(-1) for p in new.parameters()]) - theta
    assert expected.norm() > 0
    assert ((written - expected).norm() / expected.norm()).item() < 1e-3  # float32 weights


def test_old_reference_removals_are_not_reused_as_the_emulation(env):
    """Before issue 20, compat=reference meant what is now 'paper'; a removal folder made then
    has the options below. The emulation's identity must differ from it."""
    from rsc_core.removal.runs import removal_path, removal_section

    source, forget = env["source"], np.array(sorted(env["source"].metrics["spurious_indices"]))
    old = {"solver": "lissa", "compat": "reference", "damp": 0.01, "scale": 25.0, "seed": 0,
           "depth": 2000, "repeats": 10, "hvp_batch": 1, "vectorise": True,
           "max_norm_factor": 10.0}
    import rsc_core

    remover = rsc_core.create("removers", "group-influence")
    new = remover.resolve_options({"compat": "reference"}, source, forget)
    assert {k: new[k] for k in ("scale", "depth", "repeats", "damp")} == \
        {"scale": 25.0, "depth": 2000, "repeats": 10, "damp": 0.01}

    def path(options):
        return removal_path(env["runs"], source, removal_section(
            source, "group-influence", options, forget, remover.tag(options)))

    assert path(old) != path(new)
    assert path(old).name.rsplit("-", 1)[0] == path(new).name.rsplit("-", 1)[0]


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


def test_remove_help_says_what_each_compat_mode_computes():
    result = CliRunner().invoke(cli, ["remove", "--help"])
    text = " ".join(result.output.split())
    assert "[correct|paper|reference]" in text
    assert "the only mode that reproduces its numbers" in text
    assert "scale (H + damp scale I)^-1 v" in text and "chain 0 divided by --repeats" in text


@pytest.mark.parametrize("args, message", [
    (["--forget", "3,99999"], "training index 99999 is out of range"),
    (["--forget", "-1"], "training index -1 is out of range"),
    (["--forget", "EMPTY"], "the forget set is empty"),
    (["--forget", ""], "the forget set is empty (--forget ''); give --forget spurious"),
    (["--forget", "  "], "the forget set is empty (--forget ''); give --forget spurious"),
    (["-O", "extra_epochs=true"], "option 'extra_epochs' of method incremental-retraining "
                                  "must be a whole number, got True"),
    (["--method", "group-influence", "-O", "depth=yes"], "'depth' of method group-influence "
                                                          "must be a whole number, got True"),
    (["--method", "group-influence", "-O", "vectorise=2"], "'vectorise' of method "
                                                            "group-influence must be true or "
                                                            "false, got 2"),
    (["--forget", "BAD"], "line 2: 'x7' is not a training index"),
    (["--forget", "no/such/file"], "neither 'spurious', a list of training indices"),
    (["--method", "nope"], "nope"),
    (["--depth", "5"], "has no option 'depth'; its options are: extra_epochs"),
    (["--solver", "cg", "--depth", "5", "--method", "group-influence"], "does not apply to "
                                                                         "solver cg"),
    (["-O", "bogus=1"], "has no option 'bogus'"),
    (["--method", "group-influence", "--depth", "0"], "option 'depth' must be a positive "
                                                       "whole number, got 0; give e.g. --depth"),
    (["--method", "group-influence", "--depth", "-5"], "'depth' must be a positive whole"),
    (["--method", "group-influence", "--damp", "0"], "option 'damp' must be a positive number, "
                                                      "got 0.0; give e.g. --damp 0.01"),
    (["--method", "group-influence", "--damp", "-1"], "'damp' must be a positive number"),
    (["--method", "group-influence", "--damp", "nan"], "'damp' must be a positive number"),
    (["--method", "group-influence", "-O", "damp=inf"], "'damp' must be a positive number"),
    (["--method", "group-influence", "-O", "depth=2.5"], "'depth' of method group-influence "
                                                          "must be a whole number"),
    (["--method", "group-influence", "--compat", "paper", "--damp", "1.5"],
     "'damp' must be below 1 for LiSSA with --compat paper"),
    (["--method", "group-influence", "--damp", "30"], "'damp' must be below scale (25)"),
    (["--method", "group-influence", "--compat", "reference", "--solver", "cg"],
     "--compat reference emulates the reference's LiSSA and has no CG form"),
    (["--method", "group-influence", "--compat", "reference", "--hvp-batch", "2"],
     "'hvp_batch' does not apply to --compat reference"),
    (["--method", "group-influence", "-O", "emulation=2"], "has no option 'emulation'"),
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


def test_the_help_cg_example_gives_the_damping_cg_needs():
    """`rsc remove --help` showed `--solver cg` with the default damping 0.01, which meets
    negative curvature on a trained network (measured on the quickstart's 10-epoch LargeMLP v8
    run: at iteration 11; 0.1 at iteration 14); the example now gives 1, which converges
    there (docs/results.md), and says why."""
    help_text = CliRunner().invoke(cli, ["remove", "--help"]).output
    [example] = [line.strip() for line in help_text.splitlines() if "--solver cg" in line]
    assert example.startswith("rsc remove runs/") and example.endswith("--damp 1")
    assert "negative curvature" in " ".join(help_text.split())


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
    from rsc_core.analysis.weight_maps import first_layer_map
    import rsc_core

    cnn = rsc_core.create("architectures", "CNN002").build((1, 28, 28), 10)
    with pytest.raises(ConfigError, match="not an MLP"):
        first_layer_map(cnn, (1, 28, 28), "cnn")


def test_a_forget_set_with_zero_gradient_leaves_the_model_unchanged(env, monkeypatch):
    """Memorised examples can have a float32 loss of exactly 0; then v = 0, the update is 0
    and no solver runs (the real MNIST R3 n = 3 seed-0 run is such a case)."""
    from rsc_core.influence import hessian as module

    monkeypatch.setattr(module.LossHessian, "gradient_sum",
                        lambda self, rows: torch.zeros_like(self.theta))
    outcome = remove(env, "group-influence", depth=7)
    facts = outcome.run.metrics["removal"]["facts"]
    assert facts["zero_gradient"] and "lissa_steps" not in facts
    assert outcome.run.metrics["removal"]["l2_to_source"] == 0.0


def test_folder_names_tell_variants_apart(env):
    reference = remove(env, "group-influence", compat="reference", depth=10, repeats=3).run
    paper = remove(env, "group-influence", compat="paper", scale=500.0, depth=30,
                   repeats=3).run
    cg = remove(env, "group-influence", solver="cg", damp=5.0, tol=1e-8, max_iter=300).run
    incremental = remove(env, "incremental-retraining", extra_epochs=1).run
    source = env["source"].name
    assert reference.name.startswith(f"{source}_rm-group-influence-lissa-reference-")
    assert paper.name.startswith(f"{source}_rm-group-influence-lissa-paper-")
    assert cg.name.startswith(f"{source}_rm-group-influence-cg-correct-")
    assert incremental.name.startswith(f"{source}_rm-incremental-retraining-e1-")


# --------------------------------------------------------------------------- issue 26
# A removal starts from exactly the source's training set (its --exclude rows, its kept rows)
# minus the forget set, and records it.
EXCLUDED = [100, 101, 102]


def subset_source(env, subset) -> Run:
    """A finished source run of the world's spec trained on ``subset`` only."""
    return train_run(env["spec"], CONFIG, runs_dir=env["runs"], data_dir=env["data"],
                     progress=False, device="cpu", subset=subset).run


def remove_from(env, source: Run, method: str, forget: str = "spurious", **options):
    return remove_run(source.path, method, forget, options, runs_dir=env["runs"],
                      data_dir=env["data"], device="cpu")


def test_retrain_of_an_excluding_source_keeps_its_excluded_rows_out(env):
    from rsc_core.data.subsets import TrainSubset

    source = subset_source(env, TrainSubset.excluding(EXCLUDED))
    planted = source.metrics["spurious_indices"]
    outcome = remove_from(env, source, "retrain")
    trained = Run(outcome.run.metrics["removal"]["facts"]["trained_run"])
    rows = trained.subset.rows(NUM_TRAIN)
    assert rows.size == NUM_TRAIN - 3 - 3  # not 197: rows 100-102 were never seen
    assert not set(EXCLUDED) & set(rows.tolist()) and not set(planted) & set(rows.tolist())
    removal = outcome.run.metrics["removal"]
    assert removal["facts"]["num_train"] == NUM_TRAIN - 6
    assert removal["training_rows"] == {"source": NUM_TRAIN - 3, "after": NUM_TRAIN - 6}
    assert outcome.run.subset == trained.subset  # the removal records the rows it stands for
    assert removal["l2_to_source"] == pytest.approx(math.sqrt(sum(
        float((a.double() - b.double()).pow(2).sum()) for a, b in zip(
            source.load_model().state_dict().values(),
            outcome.run.load_model().state_dict().values()))), rel=1e-9)


def test_incremental_retraining_of_an_excluding_source_never_re_adds_its_rows(env,
                                                                               monkeypatch):
    from rsc_core.data.subsets import TrainSubset

    source = subset_source(env, TrainSubset.excluding(EXCLUDED))
    data = build_spurious_dataset(source.spec, env["data"])
    never = data.train.images[[*EXCLUDED, *source.metrics["spurious_indices"]]].flatten(1)
    seen_rows = []
    original = ErmTrainer._train_epoch

    def spy(self, ctx, x_all, y_all, *args, **kwargs):
        seen_rows.append(x_all.flatten(1).clone())
        return original(self, ctx, x_all, y_all, *args, **kwargs)

    monkeypatch.setattr(ErmTrainer, "_train_epoch", spy)
    outcome = remove_from(env, source, "incremental-retraining", extra_epochs=1)
    assert len(seen_rows) == 1 and seen_rows[0].shape[0] == NUM_TRAIN - 6
    assert not (seen_rows[0][:, None, :] == never[None]).all(-1).any()
    assert outcome.run.metrics["removal"]["facts"]["num_train"] == NUM_TRAIN - 6


def test_removal_of_a_kept_rows_source_works_on_those_rows_only(env):
    """An ``rsc mia`` target trains on kept rows (``TrainSubset.keeping``): its retraining
    baseline and group influence's Hessian (N, p) use those rows, never the whole set."""
    from rsc_core.data.subsets import TrainSubset

    planted = env["source"].metrics["spurious_indices"]
    kept = sorted({*range(0, NUM_TRAIN, 4), *planted})
    source = subset_source(env, TrainSubset.keeping(kept))
    assert sorted(source.metrics["spurious_indices"]) == sorted(planted)
    retrain = remove_from(env, source, "retrain").run.metrics["removal"]
    trained = Run(retrain["facts"]["trained_run"])
    assert trained.subset.rows(NUM_TRAIN).tolist() == sorted(set(kept) - set(planted))
    assert retrain["facts"]["num_train"] == len(kept) - 3
    influence = remove_from(env, source, "group-influence", compat="reference", scale=500.0,
                            depth=5, repeats=1).run.metrics["removal"]["facts"]
    assert influence["num_train"] == len(kept)
    assert influence["p"] == pytest.approx(3 / len(kept))


def test_group_influence_gradient_is_that_of_the_forget_rows_of_the_source_set(env):
    """The remover gets the source's training set and the forget set's positions in it, so
    the gradient it computes is that of the forgotten examples, wherever they sit."""
    from rsc_core.data.subsets import TrainSubset, apply_subset

    source = subset_source(env, TrainSubset.excluding(EXCLUDED))
    outcome = remove_from(env, source, "group-influence", solver="cg", damp=5.0, tol=1e-8,
                          max_iter=300)
    data = apply_subset(build_spurious_dataset(source.spec, env["data"]), source.subset)
    hessian = LossHessian(source.load_model(), data.train.images, data.train.labels)
    v = hessian.gradient_sum(torch.from_numpy(data.spurious_indices))
    facts = outcome.run.metrics["removal"]["facts"]
    assert facts["num_train"] == NUM_TRAIN - 3
    assert facts["gradient_norm"] == pytest.approx(v.double().norm().item(), rel=1e-5)


def test_forgetting_a_row_the_source_never_trained_on_is_refused(env):
    from rsc_core.removal.runs import ForgetSetError
    from rsc_core.data.subsets import TrainSubset

    source = subset_source(env, TrainSubset.excluding(EXCLUDED))
    before = listing(env["runs"])
    with pytest.raises(ForgetSetError, match="training index 101 is not among the 197 rows"):
        remove_from(env, source, "retrain", "5,101")
    assert listing(env["runs"]) == before
    result = CliRunner().invoke(cli, ["remove", str(source.path), "-m", "retrain",
                                      "--forget", "101", "-q"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "forget only rows the source trained on" in result.output


def test_removals_of_whole_set_runs_keep_their_folder_names(env):
    """Folders written before issue 26 are still found: a whole-set source's removal hashes
    exactly what it hashed before; only subset sources (whose old results were wrong) move."""
    from rsc_core.removal.runs import removal_section

    source = env["source"]
    section = removal_section(source, "retrain", {}, np.array([1, 2]))
    assert "source_subset" not in section


# --------------------------------------------------------------------------- long names
def test_an_over_long_removal_folder_name_is_shortened_not_blamed_on_the_folder(env):
    """Issue 26: a removal of a run whose folder name is long got a name over the file
    system's 255 bytes, and the error blamed the runs folder. The readable part is cut; the
    hash (which makes the name unique) stays."""
    import shutil

    long_source = env["runs"] / ("x" * 230 + "-" + env["source"].name[:8])
    shutil.copytree(env["source"].path, long_source)
    outcome = remove_run(long_source, "incremental-retraining", "spurious",
                         {"extra_epochs": 1}, runs_dir=env["runs"], data_dir=env["data"],
                         device="cpu")
    name = outcome.run.name
    assert len(name.encode()) <= 255 - 16 and name.startswith("x" * 100)
    assert outcome.run.finished
    again = remove_run(long_source, "incremental-retraining", "spurious",
                       {"extra_epochs": 1}, runs_dir=env["runs"], data_dir=env["data"],
                       device="cpu")
    assert again.reused and again.run.path == outcome.run.path
    shutil.rmtree(outcome.run.path)
    shutil.rmtree(long_source)


def test_over_long_run_names_are_shortened_and_existing_names_kept(tmp_path):
    from rsc_core.storage.paths import fitted_name
    from rsc_core.runs.folder import RUN_NAME_RESERVE, config_hash, run_config
    from rsc_core.runs.training import find_run

    spec = SpuriousSpec.build("mnist", "v20", 3, 0, 0)
    regularisers = tuple({"name": name, "params": {"value": 0.12345678901234567,
                                                   "sigma": 0.98765432109876543}}
                         for name in ("weight-decay", "input-noise", "label-smoothing",
                                      "confidence-penalty", "grad-clip"))
    config = TrainConfig(arch="MLP", epochs=3, regularisers=regularisers)
    run = find_run(spec, config, tmp_path)
    assert len(run.name.encode()) <= 255 - RUN_NAME_RESERVE
    assert run.name.endswith(config_hash(run_config(spec, config)))
    assert find_run(spec, CONFIG, tmp_path).name == find_run(spec, CONFIG, tmp_path).name
    label, digest = "a" * 240, "0123456789"
    assert fitted_name(tmp_path, label, digest, RUN_NAME_RESERVE) != f"{label}-{digest}"
    (tmp_path / f"{label}-{digest}").mkdir()  # written before names were shortened: found
    assert fitted_name(tmp_path, label, digest, RUN_NAME_RESERVE) == f"{label}-{digest}"


def test_a_name_too_long_for_the_file_system_is_named_in_the_error(tmp_path):
    from rsc_core.errors import RscError
    from rsc_core.runs.locks import RunLock

    with pytest.raises(RscError, match=r"the name 'y{300}' \(300 bytes\) is longer than"):
        with RunLock(tmp_path / ("y" * 300)):
            pass


# --------------------------------------------------------------------------- EK-FAC solver
def test_group_influence_with_ekfac_applies_the_influence_formula(env):
    pytest.importorskip("kronfluence")
    from rsc_core.influence.ekfac import EkfacSettings, ekfac_ihvp

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
    (["--solver", "ekfac", "--fit-batch", "0"], "'fit_batch' must be a positive whole number"),
    (["--solver", "ekfac", "--compat", "reference"], "has no EK-FAC form; use --solver lissa"),
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
    from rsc_core.influence.ekfac import check_supported

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
