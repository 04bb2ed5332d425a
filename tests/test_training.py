"""The erm trainer and runs: learning, exact resume, NaN handling, reuse and --force."""
from __future__ import annotations

import json

import pytest
import torch

import rsc_core
from rsc_core.runs import training as runs_module
from rsc_core.data.datasets import ImageData
from rsc_core.errors import ConfigError, DivergenceError
from rsc_core.runs.folder import Run
from rsc_core.runs.training import find_run, train_run
from rsc_core.data.spec import SpuriousSpec
from rsc_core.training.trainer import (TrainConfig, augment_aug01, parse_model_spec,
    reference_milestones)


def separable(n: int = 64, seed: int = 0) -> ImageData:
    """Two classes told apart by the mean brightness of a 1x4x4 image."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 1, 4, 4, generator=generator) * 0.5 + labels.view(-1, 1, 1, 1) * 0.5
    return ImageData(images, labels.long())


def fit(config: TrainConfig, data: ImageData, **kwargs):
    torch.manual_seed(config.seed)
    model = rsc_core.create("architectures", config.arch).build((1, 4, 4), 2)
    state = rsc_core.create("trainers", "erm").fit(model, data, data, config, **kwargs)
    return model, state


def test_tiny_model_learns_tiny_dataset():
    model, state = fit(TrainConfig(arch="MLP", epochs=15, batch_size=16, lr=0.01), separable())
    assert state.history[-1]["train_accuracy"] == 1.0
    assert state.history[-1]["test_accuracy"] == 1.0
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]
    assert [h["epoch"] for h in state.history] == list(range(1, 16))


def test_history_records_learning_rate_schedule():
    _, state = fit(TrainConfig(arch="MLP", epochs=4, batch_size=32, milestones=(2, 3)),
                   separable())
    assert [h["lr"] for h in state.history] == pytest.approx([0.01, 0.01, 0.001, 0.0001])


def test_same_seed_same_weights_other_seed_differs():
    config = TrainConfig(arch="MLP", epochs=2, batch_size=16)
    a, _ = fit(config, separable())
    b, _ = fit(config, separable())
    c, _ = fit(TrainConfig(arch="MLP", epochs=2, batch_size=16, seed=1), separable())
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values()))
    assert not torch.equal(a.hidden.weight, c.hidden.weight)


def test_nan_loss_stops_with_clear_error():
    config = TrainConfig(arch="MLP", optimizer="sgd", lr=1e38, epochs=3, batch_size=8)
    with pytest.raises(DivergenceError, match=r"epoch 1.*lower learning rate"):
        fit(config, separable())


def test_reference_milestone_table():
    assert reference_milestones(70) == (40, 50, 60)
    assert reference_milestones(30) == (15, 25)
    assert reference_milestones(140) == (60, 100, 120)
    assert reference_milestones(180) == (80, 140, 180)
    assert reference_milestones(500) == (60, 120)


def test_model_spec_parsing():
    spec = parse_model_spec("aug01-ce-tor-altResNet20Norm02")
    assert (spec.aug, spec.loss, spec.arch) == ("aug01", "ce", "altResNet20Norm02")
    assert parse_model_spec("ce-tor-LargeMLP").aug is None
    with pytest.raises(ConfigError, match="cannot parse model spec"):
        parse_model_spec("LargeMLP")
    with pytest.raises(ConfigError, match="unknown optimizer"):
        TrainConfig(optimizer="lbfgs")


def test_aug01_crops_and_flips_whole_batches():
    images = torch.randint(0, 256, (64, 3, 32, 32)).float() / 255  # 8-bit pixels (aug01 rounds
    # other values down to 1/255 steps, as the reference does: tests/test_cifar.py)
    out = augment_aug01(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert not torch.equal(out, images)
    # Every output is a shifted (and maybe mirrored) window of the zero-padded input.
    padded = torch.nn.functional.pad(images[0], (4, 4, 4, 4))
    windows = [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
    assert any(torch.equal(out[0], w) or torch.equal(out[0], w.flip(2)) for w in windows)


@pytest.mark.parametrize("loss", ["ce", "mse", "kld"])
def test_losses_train(loss):
    _, state = fit(TrainConfig(arch="MLP", loss=loss, epochs=2, batch_size=16), separable())
    assert state.history[-1]["train_loss"] >= 0


# --- runs ---------------------------------------------------------------------------------


def tiny_spec(tiny_data) -> SpuriousSpec:
    target = int(tiny_data["mnist"].train.labels[0])
    return SpuriousSpec.build("mnist", "v8", 1, target, 0)


def train(tiny_data, tmp_path, **kwargs):
    config = kwargs.pop("config", TrainConfig(arch="MLP", epochs=4, batch_size=2))
    return train_run(tiny_spec(tiny_data), config, runs_dir=tmp_path / "runs",
                     data_dir=tiny_data.root, progress=False, device="cpu", **kwargs)


def weights(run: Run) -> dict[str, torch.Tensor]:
    return run.load_model().state_dict()


def test_run_folder_contents(tiny_data, tmp_path):
    outcome = train(tiny_data, tmp_path)
    run = outcome.run
    assert not outcome.reused and run.finished
    assert {p.name for p in run.path.iterdir()} >= {"config.json", "metrics.json", "model.pt",
                                                    "log.txt", "scores"}
    assert not (run.path / "checkpoint.pt").exists()
    assert run.path.name.startswith("mnistv8-1-")
    metrics = run.metrics
    assert len(metrics["history"]) == 4 and metrics["status"] == "finished"
    assert metrics["spurious_indices"] == [0] or len(metrics["spurious_indices"]) == 1
    assert 0 <= metrics["score"]["score"] <= 1
    assert json.loads((run.path / "config.json").read_text())["train"]["arch"] == "MLP"


def test_identical_config_is_reused_and_force_retrains(tiny_data, tmp_path):
    first = train(tiny_data, tmp_path).run
    stamp = first.metrics["finished_at"]
    again = train(tiny_data, tmp_path)
    assert again.reused and again.run.path == first.path
    forced = train(tiny_data, tmp_path, force=True)
    assert not forced.reused and forced.run.path == first.path
    assert all(torch.equal(a, b) for a, b in zip(weights(first).values(),
                                                 weights(forced.run).values()))
    assert stamp  # finished_at recorded


def test_different_configs_get_different_folders(tiny_data, tmp_path):
    a = find_run(tiny_spec(tiny_data), TrainConfig(arch="MLP", lr=0.01), tmp_path)
    b = find_run(tiny_spec(tiny_data), TrainConfig(arch="MLP", lr=0.001), tmp_path)
    assert a.path != b.path


def test_resume_after_interruption_matches_uninterrupted(tiny_data, tmp_path, monkeypatch):
    reference = train(tiny_data, tmp_path / "a").run
    real_save = runs_module.save_checkpoint

    def save_then_crash(path, model, optimizer, scheduler, epoch, history, meta):
        real_save(path, model, optimizer, scheduler, epoch, history, meta)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs_module, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, tmp_path / "b")
    interrupted = find_run(tiny_spec(tiny_data), TrainConfig(arch="MLP", epochs=4, batch_size=2),
                           tmp_path / "b" / "runs")
    assert (interrupted.path / "checkpoint.pt").is_file() and not interrupted.finished
    monkeypatch.setattr(runs_module, "save_checkpoint", real_save)
    resumed = train(tiny_data, tmp_path / "b")
    assert resumed.resumed_from == 2
    for (key, a), b in zip(weights(reference).items(), weights(resumed.run).values()):
        assert torch.equal(a, b), key
    assert [h["epoch"] for h in resumed.run.metrics["history"]] == [1, 2, 3, 4]


def test_diverging_run_is_not_recorded_as_finished(tiny_data, tmp_path):
    config = TrainConfig(arch="MLP", optimizer="sgd", lr=1e38, epochs=2, batch_size=2)
    with pytest.raises(DivergenceError):
        train(tiny_data, tmp_path, config=config)
    run = find_run(tiny_spec(tiny_data), config, tmp_path / "runs")
    assert not run.finished and not (run.path / "metrics.json").exists()


def test_failed_force_keeps_the_finished_run(tiny_data, tmp_path, monkeypatch):
    first = train(tiny_data, tmp_path).run
    before = weights(first)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_module, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, tmp_path, force=True)
    assert first.finished
    assert all(torch.equal(a, b) for a, b in zip(before.values(), weights(first).values()))


def test_compare_loads_the_test_split_once_and_not_at_all_when_cached(tiny_data, tmp_path,
                                                                      monkeypatch):
    from rsc_core.analysis import compare as compare_module

    spurious = train(tiny_data, tmp_path).run
    baselines = [train_run(SpuriousSpec("mnist"),
                           TrainConfig(arch="MLP", epochs=4, batch_size=2, seed=seed),
                           runs_dir=tmp_path / "runs", data_dir=tiny_data.root, progress=False,
                           device="cpu").run for seed in (0, 1, 2)]
    loads = []
    real_load = compare_module.load_dataset
    monkeypatch.setattr(compare_module, "load_dataset",
                        lambda *args, **kw: loads.append(args) or real_load(*args, **kw))
    first = compare_module.compare_runs([spurious], baselines, data_dir=tiny_data.root,
                                        device="cpu", download=False)
    assert loads == [("mnist", tiny_data.root, False)]  # three uncached scores, one load
    again = compare_module.compare_runs([spurious], baselines, data_dir=tiny_data.root,
                                        device="cpu")
    assert len(loads) == 1  # every score cached now: no load at all
    assert json.dumps(again.as_dict()) == json.dumps(first.as_dict())  # NaN SEMs included
    with pytest.warns(UserWarning, match="pass clean runs with --baseline"):
        misplaced = compare_module.compare_runs([spurious, baselines[2]], baselines[:2],
                                                data_dir=tiny_data.root, device="cpu")
    assert misplaced.rows[0].runs == 2  # the stray clean run was not silently pooled
