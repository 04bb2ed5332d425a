"""Runs on part of a training set (the core of exact unlearning and of membership inference):
the subset is part of the run's identity, a subset run is exactly a run on the reduced dataset,
it never sees a removed row, and grouped subset runs match their single runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rsc_core.errors import SpecError
from rsc_core.runs.groups import RunRequest, train_runs
from rsc_core.runs.folder import Run
from rsc_core.runs.training import find_run, train_run
from rsc_core.data.spec import SpuriousSpec
from rsc_core.data.planting import build_spurious_dataset
from rsc_core.data.subsets import SubsetDataset, TrainSubset, apply_subset
from rsc_core.training.trainer import TrainConfig

SGD_TOLERANCE = 1e-6  # as tests/test_group_training.py: rounding of batched matmuls only


@pytest.fixture
def data(tmp_path, dataset_writers):
    root = tmp_path / "data"
    written = dataset_writers.idx_dataset(root, "MNIST", seed=5, n_train=120, n_test=20)
    return root, int(written.train.labels[0])


def sgd(seed: int = 0, epochs: int = 1) -> TrainConfig:
    return TrainConfig(arch="MLP", optimizer="sgd", lr=0.1, epochs=epochs, batch_size=16,
                       seed=seed)


def weights(run: Run) -> dict[str, torch.Tensor]:
    return run.load_model().state_dict()


@pytest.mark.parametrize("make, message", [
    (lambda: TrainSubset.excluding([]), "empty"),
    (lambda: TrainSubset.keeping([3, -1]), "negative"),
    (lambda: TrainSubset.excluding([1.5]), "whole numbers"),
    (lambda: TrainSubset.excluding([True]), "whole numbers"),
    (lambda: TrainSubset("drop", (1,)), "excludes or keeps"),
])
def test_malformed_subsets_are_one_line_errors(make, message):
    with pytest.raises(SpecError, match=message):
        make()


def test_rows_and_range_checks():
    assert TrainSubset.excluding([4, 1, 1]).indices == (1, 4)
    assert TrainSubset.excluding([1, 4]).rows(6).tolist() == [0, 2, 3, 5]
    assert TrainSubset.keeping([5, 0]).rows(6).tolist() == [0, 5]
    with pytest.raises(SpecError, match="index 6 is out of range.*0-5"):
        TrainSubset.keeping([6]).rows(6)
    with pytest.raises(SpecError, match="leaves no training image"):
        TrainSubset.excluding(range(6)).rows(6)
    assert TrainSubset.from_dict(TrainSubset.keeping([2, 1]).as_dict()) == \
        TrainSubset.keeping([1, 2])


def test_apply_subset_keeps_order_and_maps_the_planted_rows(data):
    root, target = data
    planted = build_spurious_dataset(SpuriousSpec.build("mnist", "v8", 4, target, 0), root)
    drop = int(planted.spurious_indices[1])
    reduced = apply_subset(planted, TrainSubset.excluding([drop, 0 if drop else 1]))
    assert isinstance(reduced, SubsetDataset)
    assert len(reduced.train) == len(planted.train) - 2
    assert torch.equal(reduced.train.images, planted.train.images[reduced.train_rows])
    remaining = [i for i in planted.spurious_indices.tolist() if i != drop]
    assert reduced.original_spurious_indices().tolist() == remaining  # the reference's order
    assert torch.equal(reduced.train.images[reduced.spurious_indices],
                       planted.train.images[remaining])


def test_a_subset_run_is_a_run_on_the_reduced_dataset(data, tmp_path):
    root, target = data
    spec = SpuriousSpec.build("mnist", "v8", 3, target, 0)
    planted = build_spurious_dataset(spec, root)
    forget = TrainSubset.excluding(planted.spurious_indices[:2].tolist())
    run = train_run(spec, sgd(), runs_dir=tmp_path / "runs", data_dir=root, progress=False,
                    device="cpu", subset=forget).run
    assert run.subset == forget
    assert run.name.startswith(f"{spec.name}_") and forget.tag() in run.name
    assert run.config["subset"] == forget.as_dict()
    assert run.metrics["spurious_indices"] == planted.spurious_indices[2:].tolist()
    assert find_run(spec, sgd(), tmp_path / "runs", forget) == run
    full = train_run(spec, sgd(), runs_dir=tmp_path / "runs", data_dir=root, progress=False,
                     device="cpu").run
    assert full != run and full.subset is None and "subset" not in full.config
    # The same recipe given the reduced dataset directly trains to the same weights.
    reduced = apply_subset(planted, forget)
    direct = train_run(spec, sgd(), runs_dir=tmp_path / "direct", data_dir=root,
                       progress=False, device="cpu", dataset=reduced).run
    for name, value in weights(run).items():
        assert torch.equal(value, weights(direct)[name]), name
    assert any(not torch.equal(v, weights(full)[k]) for k, v in weights(run).items())
    again = train_run(spec, sgd(), runs_dir=tmp_path / "runs", data_dir=root, progress=False,
                      device="cpu", subset=forget)
    assert again.reused


def test_a_subset_run_never_sees_a_removed_row(data, tmp_path, monkeypatch):
    """Every batch the trainer draws comes from the kept rows: poison the removed rows with NaN
    and the loss stays finite."""
    root, target = data
    spec = SpuriousSpec.build("mnist", "v8", 3, target, 0)
    planted = build_spurious_dataset(spec, root)
    removed = planted.spurious_indices.tolist()
    planted.train.images[torch.as_tensor(removed)] = float("nan")
    run = train_run(spec, sgd(epochs=2), runs_dir=tmp_path / "runs", data_dir=root,
                    progress=False, device="cpu", dataset=planted,
                    subset=TrainSubset.excluding(removed)).run
    assert all(np.isfinite(h["train_loss"]) for h in run.metrics["history"])


def test_grouped_subset_runs_match_their_single_runs(data, tmp_path):
    root, target = data
    spec = SpuriousSpec.build("mnist", "v20", 3, target, 1)
    rng = np.random.RandomState(0)
    halves = [TrainSubset.keeping(rng.permutation(120)[:60]) for _ in range(3)]
    requests = [RunRequest(spec, sgd(seed=k), half) for k, half in enumerate(halves)]
    results = train_runs(requests, runs_dir=tmp_path / "group", data_dir=root, progress=False,
                         device="cpu")
    assert [r.error for r in results] == [None] * 3
    assert [r.group_size for r in results] == [3, 3, 3]
    for result, request in zip(results, requests):
        alone = train_run(request.spec, request.config, runs_dir=tmp_path / "single",
                          data_dir=root, progress=False, device="cpu",
                          subset=request.subset).run
        assert result.outcome.run.name == alone.name
        a, b = weights(result.outcome.run), weights(alone)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < SGD_TOLERANCE


def test_a_subset_out_of_range_fails_that_run_alone_in_a_group(data, tmp_path):
    root, target = data
    spec = SpuriousSpec.build("mnist", "v20", 3, target, 1)
    good = [RunRequest(spec, sgd(seed=k), TrainSubset.keeping(range(k, 60 + k)))
            for k in range(2)]
    bad = RunRequest(spec, sgd(seed=9), TrainSubset.keeping(range(500, 560)))
    results = train_runs([*good, bad], runs_dir=tmp_path / "runs", data_dir=root,
                         progress=False, device="cpu")
    assert [r.error for r in results[:2]] == [None, None]
    assert isinstance(results[2].error, SpecError) and "out of range" in str(results[2].error)
    assert not find_run(spec, sgd(seed=9), tmp_path / "runs", bad.subset).path.exists()


def _train_cli(root: Path, runs: Path, *args: str):
    from click.testing import CliRunner

    from rsc_cli.main import cli

    return CliRunner().invoke(cli, ["train", "--data-dir", str(root), "--runs-dir", str(runs),
                                    "--arch", "MLP", "--optimizer", "sgd", "--lr", "0.1",
                                    "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                                    "--quiet", "--json", *args])


def test_rsc_train_exclude_spurious_is_the_retraining_baseline(data, tmp_path):
    root, target = data
    spec = SpuriousSpec.build("mnist", "v8", 3, target, 0)
    result = _train_cli(root, tmp_path / "runs", "--spec", spec.name, "--exclude", "spurious")
    assert result.exit_code == 0, result.output
    planted = build_spurious_dataset(spec, root).spurious_indices.tolist()
    run = find_run(spec, sgd(), tmp_path / "runs", TrainSubset.excluding(planted))
    assert run.finished and "_minus3-" in run.name
    assert run.metrics["spurious_indices"] == []
    listed = _train_cli(root, tmp_path / "runs", "--spec", spec.name, "--exclude",
                        ",".join(map(str, planted)))
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["run"] == str(run.path)  # the same run, reused
    assert len([p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.parametrize("value, message", [
    ("bogus", "--exclude set 'bogus' is neither"),
    ("5000", "index 5000 is out of range"),
])
def test_rsc_train_exclude_errors_are_one_line_and_write_nothing(data, tmp_path, value,
                                                                 message):
    root, target = data
    result = _train_cli(root, tmp_path / "runs", "--spec", f"mnistv8-3-{target}-0",
                        "--exclude", value)
    assert result.exit_code == 2 and message in result.output
    assert result.output.count("\n") == 1
    assert not [p for p in (tmp_path / "runs").glob("*") if not p.name.startswith(".")]


def test_rsc_train_exclude_spurious_needs_a_spurious_spec(data, tmp_path):
    root, _ = data
    result = _train_cli(root, tmp_path / "runs", "--spec", "mnist", "--exclude", "spurious")
    assert result.exit_code == 2 and "has no spurious examples" in result.output
