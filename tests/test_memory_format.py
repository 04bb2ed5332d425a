"""Channels-last is the default layout for convolutional models (``rsc_core.memory_format``):
it must give the same logits as NCHW up to rounding, leave MLPs alone, stay out of a run's
identity (runs trained in either layout are found and reused), and be switchable off."""
from __future__ import annotations

import pytest
import torch
import copy

from click.testing import CliRunner

import rsc_core
from rsc_core.errors import ConfigError
from rsc_core.training.memory_format import (MEMORY_FORMATS, check_memory_format, is_convolutional,
    use_channels_last)

CIFAR_SHAPE = (3, 32, 32)


@pytest.mark.parametrize("arch", ["altResNet20Norm02", "CNN002"])
def test_conv_logits_in_channels_last_equal_nchw_up_to_rounding(arch):
    torch.manual_seed(0)
    model = rsc_core.create("architectures", arch).build(CIFAR_SHAPE, 10).eval()
    # A fresh CNN002 outputs zeros (its last layer is zero): compare its conv features.
    net = model.feature_extractor if arch == "CNN002" else model
    x = torch.rand(8, *CIFAR_SHAPE)
    with torch.no_grad():
        expected = net(x)
        model.to(memory_format=torch.channels_last)
        got = net(x.contiguous(memory_format=torch.channels_last))
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _resnet_gradients(channels_last: bool, dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(1)
    model = rsc_core.create("architectures", "altResNet20Norm02").build(CIFAR_SHAPE, 10)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(dtype=dtype, memory_format=fmt)
    x = torch.rand(16, *CIFAR_SHAPE).to(dtype).contiguous(memory_format=fmt)
    y = torch.arange(16) % 10
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten().double() for p in model.parameters()])


def test_training_gradients_in_channels_last_are_as_close_to_exact_as_rounding_allows():
    """Gradients too, not only the forward pass, judged against float64 (exact here): a
    layout bug (wrong strides, a mis-ordered reduction) is off by O(1). Measured at batch 8-128
    on this CPU: NCHW float32 1e-6 to 8e-4 from float64 (relative norm), channels-last 4e-6 to
    8e-3: its BatchNorm reductions round more, amplified through the residual blocks' BN
    backward passes (docs/performance.md, "Is channels-last faithful?")."""
    exact = _resnet_gradients(False, torch.float64)
    assert torch.allclose(_resnet_gradients(True, torch.float64), exact, rtol=1e-9, atol=1e-12)
    for channels_last in (False, True):
        error = (_resnet_gradients(channels_last, torch.float32) - exact).norm() / exact.norm()
        assert error < 1e-2, (channels_last, float(error))


@pytest.mark.parametrize("arch", ["LargeMLP", "MLP"])
def test_mlps_are_not_convolutional_and_unaffected_by_the_layout(arch):
    torch.manual_seed(0)
    model = rsc_core.create("architectures", arch).build(CIFAR_SHAPE, 10).eval()
    assert not is_convolutional(model)
    assert not use_channels_last("auto", model)
    x = torch.rand(4, *CIFAR_SHAPE)
    with torch.no_grad():
        assert torch.equal(model(x.contiguous(memory_format=torch.channels_last)), model(x))


def test_auto_picks_channels_last_for_every_convolutional_builtin():
    for arch in ("CNN002", "altResNet20", "altResNet20Norm02", "altResNet32Norm02"):
        model = rsc_core.create("architectures", arch).build(CIFAR_SHAPE, 10)
        assert use_channels_last("auto", model), arch
        assert not use_channels_last("contiguous", model), arch
        assert use_channels_last("channels-last", model), arch


def test_an_unknown_memory_format_is_one_clear_error():
    assert check_memory_format("auto") == "auto" and "contiguous" in MEMORY_FORMATS
    with pytest.raises(ConfigError, match="unknown memory format 'nhwc'; use one of auto, "
                                          "contiguous, channels-last"):
        check_memory_format("nhwc")


def _tiny_cifar_run(tiny_data, tmp_path, memory_format):
    from rsc_core.runs.training import train_run
    from rsc_core.data.spec import SpuriousSpec
    from rsc_core.training.trainer import TrainConfig

    config = TrainConfig(arch="altResNet20Norm02", aug="aug01", optimizer="adam", lr=0.01,
                         batch_size=4, epochs=1)
    return train_run(SpuriousSpec.build("cifar10"), config, runs_dir=tmp_path / "runs",
                     data_dir=tiny_data.root, progress=False, device="cpu",
                     memory_format=memory_format)


def test_runs_train_channels_last_by_default_and_keep_their_identity(tiny_data, tmp_path,
                                                                     monkeypatch):
    """A run trained contiguous (as every run before the default changed) is found and
    reused by a default (auto) call: the layout is not part of the run's folder or hash."""
    import shutil

    from rsc_plugins.trainers import erm

    seen: list = []
    real_fit = erm.ErmTrainer.fit

    def recording_fit(self, *args, **kwargs):
        seen.append(kwargs.get("channels_last"))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(erm.ErmTrainer, "fit", recording_fit)
    first = _tiny_cifar_run(tiny_data, tmp_path, "contiguous")
    assert seen == [False] and not first.reused
    again = _tiny_cifar_run(tiny_data, tmp_path, "auto")
    assert again.reused and again.run.path == first.run.path
    assert seen == [False]  # reused: not trained again
    shutil.rmtree(first.run.path)
    fresh = _tiny_cifar_run(tiny_data, tmp_path, "auto")
    assert seen == [False, True] and fresh.run.path == first.run.path


def test_cli_memory_format_option_and_its_old_spelling(tiny_data, tmp_path):
    from rsc_cli.main import cli

    base = ["train", "--spec", "cifar10", "--model", "aug01-ce-tor-altResNet20Norm02",
            "--epochs", "1", "--batch-size", "4", "--data-dir", str(tiny_data.root),
            "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "-q"]
    result = CliRunner().invoke(cli, base + ["--memory-format", "nhwc"])
    assert result.exit_code != 0 and "nhwc" in result.output
    result = CliRunner().invoke(cli, base + ["--channels-last", "--memory-format",
                                             "contiguous"])
    assert result.exit_code != 0
    assert "--channels-last contradicts --memory-format contiguous" in result.output
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert "--memory-format" in result.output and "--channels-last" in result.output


def _adam_resumed(param_format, state_format) -> torch.Tensor:
    """One fused Adam step, its state re-laid in ``state_format``, then a resumed second
    step on a parameter in ``param_format``."""
    from rsc_core.training.memory_format import match_state_layouts

    torch.manual_seed(0)
    weight, grad = torch.randn(16, 8, 3, 3), torch.randn(16, 8, 3, 3)
    first = weight.clone().requires_grad_()
    optimizer = torch.optim.Adam([first], lr=0.01, fused=True)
    first.grad = grad.clone()
    optimizer.step()
    saved = optimizer.state_dict()
    for state in saved["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = state[key].contiguous(memory_format=state_format)
    second = first.detach().contiguous(memory_format=param_format).requires_grad_()
    resumed = torch.optim.Adam([second], lr=0.01, fused=True)
    resumed.load_state_dict(saved)
    match_state_layouts(resumed)
    second.grad = (grad * 0.5).contiguous(memory_format=param_format)
    resumed.step()
    return second.detach()


@pytest.mark.parametrize("param_format, state_format", [
    (torch.contiguous_format, torch.channels_last), (torch.channels_last, torch.contiguous_format)])
def test_fused_adam_resumed_across_layouts_takes_the_same_step(param_format, state_format):
    """Without ``match_state_layouts`` torch's fused Adam applies a checkpoint's moments saved
    in the other layout to the wrong elements (off by the full learning rate); a run trained
    NCHW and resumed channels-last (or the other way) must continue exactly."""
    same = _adam_resumed(param_format, param_format)
    assert torch.equal(_adam_resumed(param_format, state_format), same)


def test_a_run_saved_nchw_resumes_channels_last_in_step_with_the_nchw_continuation():
    """The trainer end to end: epoch 1 in NCHW, then epoch 2 resumed in either layout; the two
    continuations differ by rounding only (a mis-laid optimizer state is off by ~lr)."""
    from rsc_core.data.datasets import ImageData
    from rsc_core.training.trainer import TrainConfig

    torch.manual_seed(0)
    train = ImageData(torch.rand(12, *CIFAR_SHAPE), torch.arange(12) % 10)
    config = TrainConfig(arch="altResNet20Norm02", optimizer="adam", lr=0.01, batch_size=4,
                         epochs=2)
    trainer = rsc_core.create("trainers", "erm")
    saved: dict = {}

    def keep(state, model, optimizer, scheduler):
        saved.update(epoch=state.epoch, history=list(state.history),
                     model_state_dict={k: v.clone() for k, v in model.state_dict().items()},
                     optimizer_state_dict=optimizer.state_dict(),
                     scheduler_state_dict=scheduler.state_dict())

    def build():
        torch.manual_seed(0)
        return rsc_core.create("architectures", "altResNet20Norm02").build(CIFAR_SHAPE, 10)

    trainer.fit(build(), train, None, _one_epoch(config), on_epoch=keep)

    weights = []
    for channels_last in (False, True):
        model = build()
        trainer.fit(model, train, None, config, resume=copy.deepcopy(saved),
                    channels_last=channels_last)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    difference = (weights[1] - weights[0]).abs()
    assert difference.mean() < 1e-3


def _one_epoch(config):
    from dataclasses import replace

    return replace(config, epochs=1)
