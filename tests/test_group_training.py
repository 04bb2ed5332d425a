"""Training K runs at once (issue 11): every member ends where its single run ends, up to the
rounding of a batched computation; members never see each other's data; the data is held once;
each member's run folder is a normal run (reused, resumed, scored); bad groups are one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rsc_cli.main import cli
from rsc_core import registry
from rsc_core.runs.checkpoints import read_checkpoint
from rsc_core.data.datasets import load_dataset
from rsc_core.errors import ConfigError, SpecError
from rsc_core.runs.groups import RunRequest, check_group_size, train_runs
from rsc_core.training.multi_model import GroupMember
from rsc_core.runs.folder import Run
from rsc_core.runs.training import find_run, train_run
from rsc_core.data.spec import SpuriousSpec, expand_names, parse_int_list
from rsc_core.data.planting import plant
from rsc_core.training.trainer import TrainConfig

# Stated tolerances (max |difference| of any weight, group member vs single run): plain SGD
# differs only by the rounding of batched matmuls; Adam divides by the root of tiny second
# moments, which magnifies that rounding for weights whose gradients are nearly zero.
SGD_TOLERANCE = 1e-6
ADAM_TOLERANCE = 1e-3


@pytest.fixture
def data(tmp_path, dataset_writers):
    """A 200-image MNIST-format set, so batches hold several members' patched rows."""
    root = tmp_path / "data"
    written = dataset_writers.idx_dataset(root, "MNIST", seed=3, n_train=200, n_test=20)
    return root, int(written.train.labels[0])


def single(request: RunRequest, root: Path, runs: Path, memory_format: str = "auto") -> Run:
    return train_run(request.spec, request.config, runs_dir=runs, data_dir=root,
                     progress=False, device="cpu", memory_format=memory_format).run


def max_difference(a: Run, b: Run) -> float:
    x, y = a.load_model().state_dict(), b.load_model().state_dict()
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


def group(requests, root: Path, runs: Path, **kwargs):
    results = train_runs(requests, runs_dir=runs, data_dir=root, progress=False,
                         device="cpu", **kwargs)
    assert all(r.error is None for r in results), [str(r.error) for r in results]
    return results


def test_members_match_single_runs_with_sgd(data, tmp_path):
    root, target = data
    requests = [RunRequest(SpuriousSpec.build("mnist", "v20", 3, target, seed),
                           TrainConfig(arch="LargeMLP", optimizer="sgd", lr=0.1, epochs=1,
                                       batch_size=16, seed=train_seed))
                for seed, train_seed in ((0, 0), (1, 0), (2, 7))]
    results = group(requests, root, tmp_path / "group")
    assert [r.group_size for r in results] == [3, 3, 3]
    for result, request in zip(results, requests):
        alone = single(request, root, tmp_path / "single")
        assert result.outcome.run.name == alone.name  # the same run folder name and hash
        assert max_difference(result.outcome.run, alone) < SGD_TOLERANCE
        history = result.outcome.run.metrics["history"][-1]
        assert history["train_loss"] == pytest.approx(alone.metrics["history"][-1]
                                                      ["train_loss"], rel=1e-5)
        assert history["group_size"] == 3


def test_members_match_single_runs_with_adam_and_per_member_regularisers(data, tmp_path):
    root, target = data
    requests = []
    # Clipping to a norm of 0.05 here makes training chaotic: a single run whose initial
    # weights are scaled by 1 + 1e-7 ends 0.06 away after two epochs (measured), so no
    # tolerance could tell rounding from a bug. These values keep the dynamics well-posed.
    for seed, (decay, sigma, clip) in enumerate(((0.0, 0.0, 0.5), (1e-2, 0.1, 0.3),
                                                 (1e-1, 0.3, 1.0))):
        regularisers = ({"name": "weight-decay", "params": {"value": decay}},
                        {"name": "input-noise", "params": {"sigma": sigma, "clip": False}},
                        {"name": "grad-clip", "params": {"value": clip, "mode": "norm"}})
        requests.append(RunRequest(SpuriousSpec.build("mnist", "v8", 2, target, seed),
                                   TrainConfig(arch="MLP", epochs=2, batch_size=16, seed=seed,
                                               regularisers=regularisers)))
    results = group(requests, root, tmp_path / "group")
    assert {r.group_size for r in results} == {3}
    for result, request in zip(results, requests):
        assert max_difference(result.outcome.run, single(request, root, tmp_path / "s")) \
            < ADAM_TOLERANCE


def test_resnet_members_with_batch_norm_and_augmentation_match(tmp_path, dataset_writers):
    """Two steps of altResNet20Norm02 with aug01 (BatchNorm running statistics included)."""
    root = tmp_path / "data"
    written = dataset_writers.cifar10(root, per_batch=2, n_test=4)
    target = int(written.train.labels[0])
    requests = [RunRequest(SpuriousSpec.build("cifar10", "v8", 1, target, seed),
                           TrainConfig(arch="altResNet20Norm02", aug="aug01", optimizer="sgd",
                                       lr=0.1, momentum=0.9, epochs=2, batch_size=10,
                                       seed=seed)) for seed in (0, 1)]
    results = group(requests, root, tmp_path / "group")
    for result, request in zip(results, requests):
        # A group trains contiguous (vmap); its single run alone would default to
        # channels-last, whose rounding comes on top: compare like with like.
        alone = single(request, root, tmp_path / "s", memory_format="contiguous")
        assert max_difference(result.outcome.run, alone) < ADAM_TOLERANCE


def test_members_see_only_their_own_patched_rows_and_the_data_is_held_once(data):
    from rsc_plugins.trainers.erm_group import _Batches

    root, target = data
    bundle = load_dataset("mnist", root)
    specs = [SpuriousSpec.build("mnist", "v20", 5, target, seed) for seed in (0, 1)] + [
        SpuriousSpec.build("mnist")]
    planted = [plant(bundle, spec) for spec in specs]
    from rsc_core.data.planting import patched_rows

    members = []
    for spec in specs:
        indices, rows = patched_rows(bundle, spec)
        members.append(GroupMember(TrainConfig(), torch.from_numpy(indices), rows))
    batches = _Batches(bundle.train, members, torch.device("cpu"))
    assert batches.images.data_ptr() == bundle.train.images.data_ptr()  # no copy of the base
    assert batches.patched.shape[0] == 10  # only the patched rows, 5 + 5 + 0
    everything = torch.arange(len(bundle.train)).expand(3, -1)
    x, y = batches.gather(everything)
    for k, dataset in enumerate(planted):
        assert torch.equal(x[k], dataset.train.images), k
        assert torch.equal(y[k], dataset.train.labels)


def two_members(target: int) -> list[RunRequest]:
    return [RunRequest(SpuriousSpec.build("mnist", "v8", 1, target, seed),
                       TrainConfig(arch="MLP", epochs=3, batch_size=16, seed=seed))
            for seed in (0, 1)]


def interrupt_group_after(epoch: int, requests, root: Path, runs: Path, monkeypatch) -> None:
    """Train the group until both members have saved ``epoch``, then interrupt it."""
    from rsc_core.runs import groups as group_runs

    real_save = group_runs.save_checkpoint_states

    def save_then_crash(path, *args):
        real_save(path, *args)
        if args[3] == epoch and "-1_" in str(path):  # the second member saved it too
            raise KeyboardInterrupt

    monkeypatch.setattr(group_runs, "save_checkpoint_states", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_runs(requests, runs_dir=runs, data_dir=root, progress=False, device="cpu")
    monkeypatch.setattr(group_runs, "save_checkpoint_states", real_save)


def test_group_runs_are_reused_and_resumed_like_single_runs(data, tmp_path, monkeypatch):
    root, target = data
    requests = two_members(target)
    uninterrupted = group(requests, root, tmp_path / "a")
    interrupt_group_after(2, requests, root, tmp_path / "b", monkeypatch)
    resumed = group(requests, root, tmp_path / "b")
    for before, after in zip(uninterrupted, resumed):
        assert after.outcome.resumed_from == 2 and after.group_size == 2
        assert max_difference(before.outcome.run, after.outcome.run) == 0.0
    again = group(requests, root, tmp_path / "b")
    assert all(r.outcome.reused for r in again)


def test_a_single_run_resumes_a_group_members_checkpoint(data, tmp_path, monkeypatch):
    """The member checkpoints are in the single-model format: train_run can continue one."""
    root, target = data
    requests = two_members(target)
    interrupt_group_after(1, requests, root, tmp_path / "runs", monkeypatch)
    outcome = train_run(requests[0].spec, requests[0].config, runs_dir=tmp_path / "runs",
                        data_dir=root, progress=False, device="cpu")
    assert outcome.resumed_from == 1
    reference = single(requests[0], root, tmp_path / "single")
    assert max_difference(outcome.run, reference) < ADAM_TOLERANCE


def test_incompatible_runs_train_alone_and_a_diverging_member_fails_alone(data, tmp_path):
    root, target = data
    base = TrainConfig(arch="MLP", epochs=1, batch_size=16)
    noisy = TrainConfig(arch="MLP", epochs=1, batch_size=16, regularisers=(
        {"name": "input-noise", "params": {"sigma": 1e38, "clip": False}},))
    calm = TrainConfig(arch="MLP", epochs=1, batch_size=16, seed=1, regularisers=(
        {"name": "input-noise", "params": {"sigma": 0.1, "clip": False}},))
    other = TrainConfig(arch="MLP", epochs=1, batch_size=32)  # another recipe: alone
    spec = SpuriousSpec.build("mnist", "v8", 1, target, 0)
    results = train_runs([RunRequest(spec, c) for c in (base, noisy, calm, other)],
                         runs_dir=tmp_path / "runs", data_dir=root, progress=False,
                         device="cpu")
    assert [r.group_size for r in results] == [1, 2, 2, 1]
    assert "diverged" in str(results[1].error) and results[1].outcome is None
    assert results[2].outcome.run.finished
    assert not find_run(spec, noisy, tmp_path / "runs").finished


def test_dropout_and_dp_sgd_runs_are_never_grouped():
    trainer = registry("trainers").create("erm")
    assert trainer.group_key(TrainConfig(regularisers=(
        {"name": "dp-sgd", "params": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}},))) is None
    from rsc_plugins.trainers.erm_group import has_dropout

    model = registry("architectures").create("CNN002").build((1, 28, 28), 10)
    assert has_dropout(model)


def test_bad_group_sizes_and_names_are_one_line_errors():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="group size"):
            check_group_size(bad)
    assert expand_names("mnist{v8,v20}-3-0-{0..1}") == [
        "mnistv8-3-0-0", "mnistv8-3-0-1", "mnistv20-3-0-0", "mnistv20-3-0-1"]
    assert parse_int_list("0-2,5,1") == [0, 1, 2, 5]
    for bad in ("mnist{v8", "mnist-{3..1}", "mnist{}"):
        with pytest.raises(SpecError):
            expand_names(bad)
    for bad in ("a", "3-1", "-1", "0-99999999999999999999"):
        with pytest.raises(SpecError):
            parse_int_list(bad)


def test_rsc_train_takes_several_specs_and_seeds(data, tmp_path):
    root, target = data
    args = ["train", "--spec", f"mnistv8-1-{target}-{{0..1}}", "--train-seed", "0-1",
            "--arch", "MLP", "--epochs", "1", "--batch-size", "16", "--quiet",
            "--data-dir", str(root), "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"]
    result = CliRunner().invoke(cli, args + ["--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["spec"]["name"], r["train_seed"]) for r in rows] == [
        (f"mnistv8-1-{target}-0", 0), (f"mnistv8-1-{target}-0", 1),
        (f"mnistv8-1-{target}-1", 0), (f"mnistv8-1-{target}-1", 1)]
    assert {r["group_size"] for r in rows} == {4}
    table = CliRunner().invoke(cli, args + ["--group-size", "3"])
    assert table.exit_code == 0 and table.stdout.count("reused") == 4
    bad = CliRunner().invoke(cli, args + ["--group-size", "0"])
    assert bad.exit_code == 2 and "group size" in bad.output
    checkpoint = read_checkpoint(Path(rows[0]["run"]) / "model.pt")
    assert checkpoint["optimizer_state_dict"]["state"][0]["exp_avg"].shape == \
        checkpoint["model_state_dict"]["hidden.weight"].shape


def test_a_group_larger_than_memory_is_refused_before_training(data, tmp_path, monkeypatch):
    from rsc_plugins.trainers import erm_group

    root, target = data
    monkeypatch.setattr(erm_group, "free_memory", lambda device: 1024)
    requests = [RunRequest(SpuriousSpec.build("mnist", "v8", 1, target, seed),
                           TrainConfig(arch="MLP", epochs=1, batch_size=16, seed=seed))
                for seed in (0, 1)]
    with pytest.raises(ConfigError, match=r"group of 2 runs needs at least .* smaller "
                                          r"--group-size"):
        train_runs(requests, runs_dir=tmp_path / "runs", data_dir=root, progress=False,
                   device="cpu")
    assert not any((tmp_path / "runs").glob("mnist*"))  # no half-created run folders


def test_an_explicit_channels_last_trains_every_run_alone_and_auto_still_groups(data, tmp_path):
    """A group stacks weights under vmap in the contiguous layout, so ``channels-last`` (the
    old ``--channels-last``) trains each run alone; ``auto``, the default, keeps grouping."""
    root, target = data
    requests = [RunRequest(SpuriousSpec.build("mnist", "v20", 3, target, seed),
                           TrainConfig(arch="LargeMLP", optimizer="sgd", lr=0.1, epochs=1,
                                       batch_size=50))
                for seed in (0, 1)]
    alone = group(requests, root, tmp_path / "alone", memory_format="channels-last")
    assert [r.group_size for r in alone] == [1, 1]
    grouped = group(requests, root, tmp_path / "grouped")
    assert [r.group_size for r in grouped] == [2, 2]
    with pytest.raises(ConfigError, match="unknown memory format 'nhwc'"):
        train_runs(requests, runs_dir=tmp_path / "bad", data_dir=root, memory_format="nhwc")
