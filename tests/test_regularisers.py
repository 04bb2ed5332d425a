"""Regulariser plugins (PROTOCOL.md section 6): weight decay (coupled and decoupled), gradient
clipping (value and norm), input noise and DP-SGD; the loss and teardown hooks with label
smoothing and the confidence penalty; repeated keys and regularisers. Every test trains a
tiny MLP on 1x4x4 images with the real ``erm`` trainer (or calls the hooks directly) and would
fail if its hook were not applied. DP tests need Opacus (the ``dp`` extra) and are skipped without it."""
from __future__ import annotations

import copy
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rsc_core
from rsc_core.runs.checkpoints import read_checkpoint
from rsc_core.data.datasets import ImageData
from rsc_core.errors import ConfigError, OptionalDependencyError, UnknownNameError
from rsc_core.training.regularisers import (Regulariser, TrainContext, build_regularisers,
    parse_regulariser_option)
from rsc_core.runs.folder import Run
from rsc_core.runs.training import train_run
from rsc_core.data.spec import SpuriousSpec
from rsc_core.data.planting import SpuriousDataset
from rsc_core.training.trainer import TrainConfig
from rsc_cli.train_options import build_train_config

SHAPE = (1, 4, 4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: a second intra-op thread only adds contention (10-100x slower
    on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_data(n: int = 64, seed: int = 0, zero_pixel: bool = False) -> ImageData:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((n, *SHAPE), generator=generator)
    if zero_pixel:
        images[:, 0, 0, 0] = 0.0  # hidden.weight[:, 0] then never gets a loss gradient
    labels = (images.flatten(1).mean(1) > 0.5).long()
    return ImageData(images, labels)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return rsc_core.create("architectures", "MLP").build(SHAPE, 2)


def fit(model: nn.Module, regularisers, train: ImageData, test: ImageData | None = None,
        **config):
    config = TrainConfig(**{"arch": "MLP", "batch_size": 16, "epochs": 1, "lr": 0.01,
                            **config})
    return rsc_core.create("trainers", "erm").fit(model, train, test, config,
                                                  list(regularisers))


def reg(name: str, **params) -> Regulariser:
    return rsc_core.create("regularisers", name, **params)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


class Spy(Regulariser):
    """Records what the hooks after it would see: inputs, gradients, the optimizer."""

    name = "spy"

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.weight_decay: list[float] = []

    def setup(self, ctx: TrainContext) -> None:
        self.weight_decay = [g["weight_decay"] for g in ctx.optimizer.param_groups]

    def before_forward(self, x, y, ctx):
        self.inputs.append(x.detach().clone())
        return x, y

    def after_backward(self, ctx: TrainContext) -> None:
        self.grads.append(flat(p.grad for p in ctx.model.parameters()))


class Recorder(nn.Module):
    """Wraps a model and records every batch it is called on, with the mode it was in."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[bool, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, x.detach().clone()))
        return self.inner(x)

    def batches(self, training: bool) -> torch.Tensor:
        return torch.cat([x for mode, x in self.calls if mode == training])


# --- registry, parameters, specs ------------------------------------------------------------

def test_all_built_ins_are_registered_with_descriptions():
    names = rsc_core.list_names("regularisers")
    for name in ("weight-decay", "grad-clip", "input-noise", "dp-sgd", "label-smoothing",
                 "confidence-penalty"):
        assert name in names
        entry = rsc_core.get("regularisers", name)
        assert entry.description and "\n" not in entry.description
        assert entry.source != "unknown"


def test_specs_are_normalised():
    assert reg("weight-decay", value=1).spec() == reg("weight-decay", value=1.0).spec() \
        == reg("weight-decay", value="1", decoupled=False).spec() \
        == {"name": "weight-decay", "params": {"value": 1.0}}
    assert reg("weight-decay", value=0.1, decoupled=1).spec()["params"] == {
        "value": 0.1, "decoupled": True}
    assert reg("grad-clip", value=1, mode="value").spec() == {
        "name": "grad-clip", "params": {"value": 1.0}}
    assert reg("input-noise", sigma=0, clip="true").spec()["params"] == {"sigma": 0.0,
                                                                         "clip": True}
    # the CLI's NAME:k=v spelling (dashes in keys become underscores), aliases, defaults
    spec = parse_regulariser_option("dp:noise-multiplier=1,max-grad-norm=2,delta=1e-5")
    assert build_regularisers([spec])[0].spec() == {
        "name": "dp-sgd", "params": {"max_grad_norm": 2.0, "noise_multiplier": 1.0}}
    assert isinstance(reg("l2", value=1e-4), type(reg("weight-decay", value=1e-4)))


def test_cli_shortcuts_build_the_same_specs():
    common = dict(model_spec=None, arch="MLP", loss="ce", aug=None, optimizer="adam", lr=0.01,
                  momentum=0.0, batch_size=16, epochs=1, train_seed=0, milestones=None,
                  amp=False)
    short = build_train_config(regularisers=(), weight_decay=1e-4, grad_clip=1,
                               input_noise=0.1, **common)
    long = build_train_config(regularisers=("weight-decay:value=0.0001", "grad-clip:value=1.0",
                                            "input-noise:sigma=0.1,clip=false"),
                              weight_decay=None, grad_clip=None, input_noise=None, **common)
    assert short.regularisers == long.regularisers == (
        {"name": "weight-decay", "params": {"value": 1e-4}},
        {"name": "grad-clip", "params": {"value": 1.0}},
        {"name": "input-noise", "params": {"sigma": 0.1}})
    with pytest.raises(ConfigError, match="grad-clip"):
        build_train_config(regularisers=(), weight_decay=None, grad_clip=0.0, input_noise=None,
                           **common)


@pytest.mark.parametrize("name, params, fragment", [
    ("weight-decay", {"value": -1e-4}, "value must be >= 0"),
    ("weight-decay", {}, "needs value="),
    ("weight-decay", {"vale": 1e-4}, "unknown parameter 'vale'"),
    ("weight-decay", {"value": 1e-4, "decoupled": "maybe"}, "decoupled must be true or false"),
    ("weight-decay", {"value": float("nan")}, "must be finite"),
    ("weight-decay", {"value": True}, "must be a number"),
    ("grad-clip", {"value": 0}, "value must be > 0"),
    ("grad-clip", {"value": -1}, "value must be > 0"),
    ("grad-clip", {"value": 1, "mode": "elementwise"}, "mode must be one of value, norm"),
    ("input-noise", {"sigma": -0.1}, "sigma must be >= 0"),
    ("input-noise", {"sigma": "lots"}, "sigma must be a number"),
    ("input-noise", {"sigma": 0.1, "level": 0.1}, "unknown parameter 'level'"),
    ("dp-sgd", {"noise_multiplier": 1.0}, "needs max_grad_norm="),
    ("dp-sgd", {"noise_multiplier": -1, "max_grad_norm": 1}, "noise_multiplier must be >= 0"),
    ("dp-sgd", {"noise_multiplier": 1, "max_grad_norm": 0}, "max_grad_norm must be > 0"),
    ("dp-sgd", {"noise_multiplier": 1, "max_grad_norm": 1, "delta": 1}, "delta must be < 1"),
    ("dp-sgd", {"noise_multiplier": 1, "max_grad_norm": 1, "delta": 0}, "delta must be > 0"),
    ("dp-sgd", {"noise_multiplier": 1, "max_grad_norm": 1, "sampling": "shuffle"},
     "sampling must be one of poisson, uniform"),
    ("dp-sgd", {"noise_multiplier": 1, "max_grad_norm": 1, "accountant": "gdp"},
     "accountant must be one of rdp, prv"),
    ("label-smoothing", {}, "needs eps="),
    ("label-smoothing", {"eps": 1}, "eps must be < 1"),
    ("label-smoothing", {"eps": -0.1}, "eps must be >= 0"),
    ("confidence-penalty", {"beta": -1}, "beta must be >= 0"),
    ("confidence-penalty", {"beta": 0.1, "eps": 0.1}, "unknown parameter 'eps'"),
])
def test_bad_parameters_are_one_line_config_errors(name, params, fragment):
    with pytest.raises(ConfigError) as info:
        reg(name, **params)
    message = str(info.value)
    assert fragment in message and message.startswith(name) and "\n" not in message
    assert "accepted: " in message


def test_unknown_regulariser_names():
    with pytest.raises(UnknownNameError, match="weight-decay"):
        reg("weight-decy", value=1.0)
    with pytest.raises(UnknownNameError):
        build_regularisers([{"name": "dropout", "params": {}}])


# --- input noise ------------------------------------------------------------------------------

def test_input_noise_changes_training_batches_never_evaluation():
    train, test = make_data(64, seed=0), make_data(16, seed=1)
    clean, noisy = Recorder(make_model()), Recorder(make_model())
    fit(clean, [], train, test)
    fit(noisy, [reg("input-noise", sigma=0.5)], train, test)
    clean_batches, noisy_batches = clean.batches(True), noisy.batches(True)
    # without the regulariser the model sees training images; the batch order is the same
    assert clean_batches.shape == noisy_batches.shape == train.images.shape
    assert torch.equal(clean_batches.sort(0).values, train.images.sort(0).values)
    residual = noisy_batches - clean_batches
    assert residual.abs().min() > 0  # every pixel of every training batch got noise
    assert residual.std().item() == pytest.approx(0.5, rel=0.1)
    assert abs(residual.mean().item()) < 0.05
    assert noisy_batches.min() < 0 and noisy_batches.max() > 1  # not clipped by default
    # evaluation (the trainer's per-epoch test pass) sees the clean test images
    assert torch.equal(noisy.batches(False), test.images)
    assert torch.equal(clean.batches(False), test.images)


def test_input_noise_is_reproducible_clippable_and_zero_is_a_no_op():
    train = make_data(64)
    runs = []
    for regulariser in ([reg("input-noise", sigma=0.5)], [reg("input-noise", sigma=0.5)],
                        [reg("input-noise", sigma=0.5, clip=True)],
                        [reg("input-noise", sigma=0)], []):
        model = Recorder(make_model())
        fit(model, regulariser, train)
        runs.append(model.batches(True))
    assert torch.equal(runs[0], runs[1])  # drawn from the trainer's seeded generator
    assert runs[2].min() >= 0 and runs[2].max() <= 1
    assert torch.equal(runs[2], runs[0].clamp(0, 1))
    assert torch.equal(runs[3], runs[4])


# --- gradient clipping -----------------------------------------------------------------------

def test_value_clipping_bounds_every_gradient_element():
    train = make_data(64)
    baseline, clipped = Spy(), Spy()
    fit(make_model(), [baseline], train)
    fit(make_model(), [reg("grad-clip", value=1e-3), clipped], train)
    assert baseline.grads[0].abs().max() > 1e-2  # so clipping has work to do
    for grads in clipped.grads:
        assert grads.abs().max() <= 1e-3
    # the first step sees the same gradients: clipping is the reference's clip_grad_value_
    assert torch.equal(clipped.grads[0], baseline.grads[0].clamp(-1e-3, 1e-3))


def test_norm_clipping_bounds_the_global_norm():
    train = make_data(64)
    baseline, clipped = Spy(), Spy()
    fit(make_model(), [baseline], train)
    fit(make_model(), [reg("grad-clip", value=1e-2, mode="norm"), clipped], train)
    assert baseline.grads[0].norm() > 0.1
    for grads in clipped.grads:
        assert grads.norm() <= 1e-2 * (1 + 1e-5)
    expected = baseline.grads[0] * (1e-2 / baseline.grads[0].norm())
    torch.testing.assert_close(clipped.grads[0], expected, rtol=1e-4, atol=1e-9)


# --- weight decay ----------------------------------------------------------------------------

def test_coupled_weight_decay_is_the_optimizers_and_decoupled_is_not():
    coupled, decoupled = Spy(), Spy()
    fit(make_model(), [reg("weight-decay", value=0.05), coupled], make_data())
    fit(make_model(), [reg("weight-decay", value=0.05, decoupled=True), decoupled], make_data())
    assert coupled.weight_decay == [0.05]
    assert decoupled.weight_decay == [0.0]


def test_coupled_and_decoupled_differ_under_adam_on_a_gradient_free_weight():
    """Pixel 0 is always 0, so hidden.weight[:, 0] gets no loss gradient. Decoupled decay
    shrinks it by exactly (1 - lr * wd) per step; coupled decay is a gradient wd * w, which Adam
    normalises into a step of about lr, whatever wd is."""
    lr, wd, steps = 1e-3, 0.1, 8  # 64 examples, batch 16, 2 epochs
    train = make_data(64, zero_pixel=True)
    w0 = make_model().hidden.weight[:, 0].detach().clone()
    models = {}
    for decoupled in (False, True):
        models[decoupled] = make_model()
        fit(models[decoupled], [reg("weight-decay", value=wd, decoupled=decoupled)], train,
            epochs=2, lr=lr, optimizer="adam")
    w_decoupled = models[True].hidden.weight[:, 0].detach()
    torch.testing.assert_close(w_decoupled, w0 * (1 - lr * wd) ** steps, rtol=1e-6, atol=0)
    moved = (models[False].hidden.weight[:, 0].detach() - w0).abs()
    far = w0.abs() > 2 * lr * steps  # these cannot cross zero, so each step is ~lr
    assert far.sum() > 50
    assert torch.all(moved[far] > 0.95 * lr * steps) and torch.all(moved[far] <= lr * steps * 1.01)
    assert torch.all(w0[far].abs() - models[False].hidden.weight[:, 0].detach()[far].abs() > 0)


def test_decoupled_weight_decay_with_adam_is_adamw():
    torch.manual_seed(0)
    x, y = torch.randn(5, 32, 16), torch.randint(0, 2, (5, 32))
    ours, reference = make_model(), make_model()
    adam = torch.optim.Adam(ours.parameters(), lr=0.01)
    adamw = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.1)
    decay = reg("weight-decay", value=0.1, decoupled=True)
    ctx = TrainContext(ours, adam, torch.device("cpu"), 160, 32, 1)
    for xb, yb in zip(x, y):
        for model, optimizer in ((ours, adam), (reference, adamw)):
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            if model is ours:
                decay.after_backward(ctx)
            optimizer.step()
    torch.testing.assert_close(flat(ours.parameters()), flat(reference.parameters()),
                               rtol=1e-5, atol=1e-7)
    assert not torch.allclose(flat(ours.parameters()), flat(make_model().parameters()))


def test_coupled_and_decoupled_agree_for_plain_sgd():
    """For momentum-free SGD, p - lr (g + wd p) == p (1 - lr wd) - lr g."""
    train, models = make_data(), {}
    for decoupled in (False, True):
        models[decoupled] = make_model()
        fit(models[decoupled], [reg("weight-decay", value=0.5, decoupled=decoupled)], train,
            optimizer="sgd", lr=0.1, epochs=2)
    none = make_model()
    fit(none, [], train, optimizer="sgd", lr=0.1, epochs=2)
    torch.testing.assert_close(flat(models[True].parameters()),
                               flat(models[False].parameters()), rtol=1e-5, atol=1e-6)
    assert (flat(none.parameters()) - flat(models[True].parameters())).abs().max() > 1e-3


# --- composition and runs --------------------------------------------------------------------

def tiny_spurious(n: int = 64) -> SpuriousDataset:
    return SpuriousDataset("mnist", make_data(n, seed=0), make_data(16, seed=1), ("0", "1"),
                           SpuriousSpec("mnist"), np.zeros(0, dtype=np.int64))


def test_several_regularisers_compose_in_one_run(tmp_path):
    common = dict(model_spec=None, arch="MLP", loss="ce", aug=None, optimizer="adam", lr=0.01,
                  momentum=0.0, batch_size=16, epochs=2, train_seed=0, milestones=None,
                  amp=False)
    config = build_train_config(regularisers=("input-noise:sigma=0.2,clip=true",),
                                weight_decay=1e-3, grad_clip=1e-2, input_noise=None, **common)
    plain = build_train_config(regularisers=(), weight_decay=None, grad_clip=None,
                               input_noise=None, **common)
    outcome = train_run(SpuriousSpec("mnist"), config, runs_dir=tmp_path,
                        dataset=tiny_spurious(), progress=False, device="cpu")
    baseline = train_run(SpuriousSpec("mnist"), plain, runs_dir=tmp_path,
                         dataset=tiny_spurious(), progress=False, device="cpu")
    run = outcome.run
    assert run.finished and run.path != baseline.run.path
    assert [r["name"] for r in run.config["train"]["regularisers"]] == [
        "input-noise", "weight-decay", "grad-clip"]
    assert run.config["train"]["regularisers"][0]["params"] == {"sigma": 0.2, "clip": True}
    for part in ("input-noise", "weight-decay-value0.001", "grad-clip-value0.01"):
        assert part in run.name
    assert all(math.isfinite(r["train_loss"]) for r in run.metrics["history"])
    trained, untouched = flat(run.load_model().parameters()), flat(
        baseline.run.load_model().parameters())
    assert not torch.allclose(trained, untouched)


# --- DP-SGD ----------------------------------------------------------------------------------

def test_dp_sgd_without_opacus_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # "import opacus" now fails
    model = make_model()
    ctx = TrainContext(model, torch.optim.SGD(model.parameters(), lr=0.1),
                       torch.device("cpu"), 64, 16, 1)
    dp = reg("dp-sgd", noise_multiplier=1.0, max_grad_norm=1.0)  # creating it needs no Opacus
    with pytest.raises(OptionalDependencyError, match=r"pip install 'rsc\[dp\]'"):
        dp.setup(ctx)


def dp_context(model: nn.Module, batch_size: int = 8, num_train: int = 64, lr: float = 0.0,
               **params) -> tuple[Regulariser, TrainContext]:
    pytest.importorskip("opacus")
    params = {"noise_multiplier": 0.0, "max_grad_norm": 1.0, **params}
    dp = reg("dp-sgd", **params)
    ctx = TrainContext(model, torch.optim.SGD(model.parameters(), lr=lr), torch.device("cpu"),
                       num_train, batch_size, 1,
                       generator=torch.Generator().manual_seed(0))
    dp.setup(ctx)
    return dp, ctx


def test_dp_sgd_clips_each_examples_gradient():
    """noise_multiplier 0, lr 0: the optimizer step leaves p.grad = (sum of clipped
    per-example gradients) / B and does not move the model."""
    C, B = 1.0, 8
    model = make_model()
    dp, ctx = dp_context(model, batch_size=B, max_grad_norm=C)
    assert ctx.model is not model and ctx.optimizer is not None
    data = make_data(B, seed=3)
    x, y = data.images.clone(), data.labels.clone()
    x[0] *= 1000.0  # one example with a huge loss and gradient
    with torch.no_grad():  # a forward pass without backward would confuse Opacus' hooks
        y[0] = 1 - model(x[:1]).argmax(1)[0]

    def step(xb, yb):
        torch.nn.Module.zero_grad(model, set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()  # the plain model: unclipped gradient
        plain = flat(p.grad for p in model.parameters())
        ctx.optimizer.zero_grad(set_to_none=True)
        losses = F.cross_entropy(ctx.model(xb), yb, reduction="none")
        assert dp.backward(losses, ctx)  # the trainer's backward hook
        ctx.optimizer.step()
        return plain, flat(p.grad for p in ctx.model.parameters()) * B

    singles = [step(x[i:i + 1], y[i:i + 1]) for i in range(B)]
    plain_huge, clipped_huge = singles[0]
    assert plain_huge.norm() > 100 * C
    assert clipped_huge.norm() == pytest.approx(C, rel=1e-4)  # clipped to exactly C...
    torch.testing.assert_close(clipped_huge / C, plain_huge / plain_huge.norm(), rtol=1e-3,
                               atol=1e-6)  # ...in the same direction
    for plain, clipped in singles:
        assert clipped.norm() <= C * (1 + 1e-5)
        if plain.norm() < C:
            torch.testing.assert_close(clipped, plain)  # small gradients are untouched
    plain_batch, summed = step(x, y)
    assert plain_batch.norm() * B > C * B  # the unclipped batch gradient is far too large
    assert summed.norm() <= C * B
    # clip each, then add: the batch's update is the sum of the single examples' updates
    torch.testing.assert_close(summed, torch.stack([c for _, c in singles]).sum(0),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(flat(model.parameters()), flat(make_model().parameters()))


def test_dp_sgd_poisson_batches():
    model = make_model()
    dp, ctx = dp_context(model, batch_size=8, num_train=64)
    batches = list(dp.batches(ctx))
    assert len(batches) == 8
    sizes = [b.numel() for b in batches]
    assert len(set(sizes)) > 1  # variable batch sizes
    for batch in batches:
        assert batch.unique().numel() == batch.numel() and (batch < 64).all()
    ctx.generator = torch.Generator().manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(batches, dp.batches(ctx)))
    sizes = [b.numel() for _ in range(50) for b in dp.batches(ctx)]
    assert np.mean(sizes) == pytest.approx(8, rel=0.1)
    uniform, ctx = dp_context(make_model(), sampling="uniform")
    assert uniform.batches(ctx) is None  # the trainer's shuffled fixed-size batches


def test_dp_sgd_trains_with_empty_batches_and_accounts_every_step():
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    spy = Spy()
    dp = reg("dp-sgd", noise_multiplier=1.0, max_grad_norm=1.0)
    model = make_model()
    before = flat(model.parameters())
    state = fit(model, [dp, spy], make_data(16), make_data(8, seed=1), batch_size=1, epochs=2)
    sizes = [x.shape[0] for x in spy.inputs]
    assert len(sizes) == 32 and 0 in sizes and max(sizes) > 1  # Poisson, q = 1/16
    assert all(math.isfinite(r["train_loss"]) for r in state.history)
    assert dp.steps_accounted() == 32
    reference = RDPAccountant()
    reference.history = [(1.0, 1 / 16, 32)]
    assert state.history[-1]["epsilon"] == pytest.approx(reference.get_epsilon(1e-5))
    assert not torch.allclose(flat(model.parameters()), before)


def test_dp_sgd_epsilon_grows_over_epochs_and_is_recorded():
    pytest.importorskip("opacus")
    dp = reg("dp-sgd", noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-4)
    state = fit(make_model(), [dp], make_data(64), make_data(16, seed=1), epochs=3)
    epsilons = [r["epsilon"] for r in state.history]
    assert all(math.isfinite(e) and e > 0 for e in epsilons)
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert all(r["delta"] == 1e-4 for r in state.history)
    assert all("test_accuracy" in r for r in state.history)
    zero = reg("dp-sgd", noise_multiplier=0, max_grad_norm=1.0)
    assert fit(make_model(), [zero], make_data(64)).history[-1]["epsilon"] == math.inf
    spy, uniform = Spy(), reg("dp-sgd", noise_multiplier=1.1, max_grad_norm=1.0,
                              sampling="uniform")
    state = fit(make_model(), [uniform, spy], make_data(64))
    assert [x.shape[0] for x in spy.inputs] == [16] * 4  # the trainer's permutation batches
    assert 0 < state.history[-1]["epsilon"] < math.inf


def test_dp_sgd_run_checkpoint_loads_into_the_plain_architecture(tmp_path):
    pytest.importorskip("opacus")
    config = TrainConfig(arch="MLP", batch_size=16, epochs=2, lr=0.01, regularisers=(
        {"name": "dp-sgd", "params": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}},))
    run = train_run(SpuriousSpec("mnist"), config, runs_dir=tmp_path, dataset=tiny_spurious(),
                    progress=False, device="cpu").run
    checkpoint = read_checkpoint(run.path / "model.pt")
    assert list(checkpoint["model_state_dict"]) == ["hidden.weight", "hidden.bias",
                                                    "fc.weight", "fc.bias"]
    model = Run.open(run.path).load_model()  # strict load into a fresh MLP
    assert type(model).__name__ != "PlainStateGradSampleModule"
    assert [r["epsilon"] for r in run.metrics["history"]][0] > 0


def test_dp_sgd_leaves_the_callers_model_plain_after_training():
    pytest.importorskip("opacus")
    model = make_model()
    fit(model, [reg("dp-sgd", noise_multiplier=1.0, max_grad_norm=1.0)], make_data())
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    for param in model.parameters():
        assert not hasattr(param, "grad_sample") and not hasattr(param, "summed_grad")


def test_dp_sgd_resumes_exactly():
    """Weights and epsilon after 1 epoch + resume equal those of an uninterrupted run."""
    pytest.importorskip("opacus")

    def regs():
        return [reg("input-noise", sigma=0.1), reg("weight-decay", value=1e-3),
                reg("dp-sgd", noise_multiplier=1.0, max_grad_norm=1.0)]

    config = TrainConfig(arch="MLP", batch_size=16, epochs=2, lr=0.01, milestones=(1,))
    trainer, train = rsc_core.create("trainers", "erm"), make_data()
    saved = {}

    def on_epoch(state, model, optimizer, scheduler):
        saved[state.epoch] = copy.deepcopy({
            "epoch": state.epoch, "history": state.history,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict()})

    full = make_model()
    whole = trainer.fit(full, train, None, config, regs(), on_epoch=on_epoch)
    resumed_model = make_model(seed=1)  # the checkpoint overwrites these weights
    resumed_regs = regs()
    resumed = trainer.fit(resumed_model, train, None, config, resumed_regs, resume=saved[1])
    assert resumed_regs[-1].steps_accounted() == 2 * 4  # epoch 1's steps are added back
    assert torch.equal(flat(full.parameters()), flat(resumed_model.parameters()))
    assert resumed.history[-1]["epsilon"] == pytest.approx(whole.history[-1]["epsilon"])
    assert resumed.history[-1]["lr"] == pytest.approx(1e-3)
    assert whole.history[0]["epsilon"] < whole.history[1]["epsilon"]


@pytest.mark.parametrize("order", ["dp-first", "clip-first"])
def test_dp_sgd_refuses_grad_clip(order):
    pytest.importorskip("opacus")
    regularisers = [reg("dp-sgd", noise_multiplier=1.0, max_grad_norm=1.0),
                    reg("grad-clip", value=1.0)]
    if order == "clip-first":
        regularisers.reverse()
    with pytest.raises(ConfigError, match="dp-sgd cannot be combined with grad-clip"):
        fit(make_model(), regularisers, make_data())


def test_dp_sgd_rejects_batch_norm_models():
    pytest.importorskip("opacus")
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="batch norm"):
        dp_context(model)



# --- repeated keys and repeated regularisers -------------------------------------------------

@pytest.mark.parametrize("text, key", [
    ("weight-decay:value=1e-4,value=2", "value"),
    ("dp:max-grad-norm=1,max_grad_norm=2,noise_multiplier=1", "max_grad_norm"),
    ("input-noise:sigma=0.1,clip=true,clip=false", "clip"),
])
def test_a_key_given_twice_is_an_error(text, key):
    with pytest.raises(ConfigError) as info:
        parse_regulariser_option(text)
    message = str(info.value)
    assert f"{key!r} is given twice" in message and text in message and "\n" not in message


def cli_config(regularisers=(), **options):
    values = dict(model_spec=None, arch="MLP", loss="ce", aug=None, optimizer="adam", lr=0.01,
                  momentum=0.0, batch_size=16, epochs=1, train_seed=0, milestones=None,
                  amp=False, weight_decay=None, grad_clip=None, input_noise=None)
    return build_train_config(regularisers=tuple(regularisers), **{**values, **options})


def test_weight_decay_twice_is_an_error_naming_both(tmp_path):
    with pytest.raises(ConfigError) as info:
        cli_config(["weight-decay:value=1e-4"], weight_decay=1e-3)
    message = str(info.value)
    assert message.startswith("weight-decay is given twice") and "\n" not in message
    assert "weight-decay:value=0.0001" in message and "weight-decay:value=0.001" in message
    with pytest.raises(ConfigError, match=r"\(l2:value=0.0001 and weight-decay:value=0.001,"):
        cli_config(["l2:value=1e-4", "weight-decay:value=1e-3,decoupled=true"])
    with pytest.raises(ConfigError, match="weight-decay is given twice"):  # Python API too
        train_run(SpuriousSpec("mnist"), TrainConfig(arch="MLP", regularisers=(
            {"name": "weight-decay", "params": {"value": 1e-4}},
            {"name": "weight-decay", "params": {"value": 1e-4, "decoupled": True}})),
            runs_dir=tmp_path, dataset=tiny_spurious(), progress=False, device="cpu")


@pytest.mark.parametrize("first, second", [
    ("grad-clip:value=1", "grad-clip:value=2,mode=norm"),
    ("input-noise:sigma=0.1", "gaussian-noise:sigma=0.2"),
    ("dp-sgd:noise_multiplier=1,max_grad_norm=1", "dp:noise_multiplier=2,max_grad_norm=1"),
    ("label-smoothing:eps=0.1", "label-smoothing:eps=0.2"),
    ("confidence-penalty:beta=0.1", "confidence-penalty:beta=0.1"),
])
def test_no_built_in_regulariser_may_be_repeated(first, second):
    with pytest.raises(ConfigError, match=f"given twice .{first}.* and {second}.; keep one"):
        cli_config([first, second])


def test_a_repeatable_regulariser_may_be_repeated(monkeypatch):
    monkeypatch.setattr(type(reg("grad-clip", value=1)), "repeatable", True)
    built = build_regularisers([{"name": "grad-clip", "params": {"value": 1}},
                                {"name": "grad-clip", "params": {"value": 2, "mode": "norm"}}])
    assert [r.spec()["params"] for r in built] == [{"value": 1.0},
                                                   {"value": 2.0, "mode": "norm"}]


# --- the loss hook, label smoothing, confidence penalty ---------------------------------------

class LossSpy(Regulariser):
    """Records each training batch (after earlier hooks) and what its loss hook sees."""

    name = "loss-spy"

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def before_forward(self, x, y, ctx):
        self.inputs.append(x.detach().clone())
        return x, y

    def loss(self, logits, y, losses, ctx):
        self.seen.append((logits.detach().clone(), y.clone(), losses.detach().clone()))
        return losses


class LogitPenalty(Regulariser):
    """A logit regulariser: each example's loss plus weight * its squared logits."""

    name = "logit-penalty"

    def __init__(self, weight: float) -> None:
        super().__init__(weight=weight)
        self.weight = weight

    def loss(self, logits, y, losses, ctx):
        return losses + self.weight * logits.pow(2).sum(1)


class MeanLoss(Regulariser):
    """A broken loss hook: returns the batch mean instead of one loss per example."""

    name = "mean-loss"

    def loss(self, logits, y, losses, ctx):
        return losses.mean()


def test_the_loss_hook_changes_the_optimised_and_logged_loss():
    """One batch of 16, plain SGD: the step and the logged train_loss are those of the mean of
    cross-entropy + 0.5 * sum(logits^2), computed here by hand."""
    data, lr = make_data(16), 0.1
    spy, hooked, reference = LossSpy(), make_model(), make_model()
    state = fit(hooked, [spy, LogitPenalty(0.5)], data, optimizer="sgd", lr=lr)
    logits = reference(data.images)
    losses = F.cross_entropy(logits, data.labels, reduction="none")
    loss = (losses + 0.5 * logits.pow(2).sum(1)).mean()
    loss.backward()
    with torch.no_grad():
        for param in reference.parameters():
            param -= lr * param.grad
    assert state.history[0]["train_loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert state.history[0]["train_loss"] > losses.mean().item() + 0.01  # the penalty counts
    torch.testing.assert_close(flat(hooked.parameters()), flat(reference.parameters()),
                               rtol=1e-5, atol=1e-7)
    # the hook saw float32 logits and the base per-example cross-entropy
    (seen_logits, seen_y, seen_losses), = spy.seen
    assert seen_logits.dtype == torch.float32 and seen_losses.shape == seen_y.shape == (16,)
    assert torch.equal(seen_losses, F.cross_entropy(seen_logits, seen_y, reduction="none"))


def test_no_op_loss_and_teardown_hooks_leave_training_bit_for_bit_unchanged():
    plain, hooked = make_model(), make_model()
    a = fit(plain, [], make_data(), epochs=2)
    b = fit(hooked, [LossSpy(), Lifecycle([], "x"), reg("label-smoothing", eps=0),
                     reg("confidence-penalty", beta=0)], make_data(), epochs=2)
    assert torch.equal(flat(plain.parameters()), flat(hooked.parameters()))
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


def test_a_loss_hook_must_return_one_loss_per_example():
    with pytest.raises(ConfigError, match="mean-loss's loss hook returned shape \\(\\) for a "
                                          "batch of 16 examples"):
        fit(make_model(), [MeanLoss()], make_data())


def replay(batches, loss_fn, lr: float = 0.01) -> nn.Module:
    """Train a fresh model on recorded (x, y) batches with fused Adam, as the trainer does."""
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    for x, y in batches:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return model


def test_label_smoothing_is_torchs_label_smoothing_per_batch():
    eps, spy, model = 0.2, LossSpy(), make_model()
    state = fit(model, [reg("label-smoothing", eps=eps), spy], make_data(64), epochs=2)
    assert len(spy.seen) == 8
    for logits, y, losses in spy.seen:
        assert torch.equal(losses, F.cross_entropy(logits, y, reduction="none",
                                                   label_smoothing=eps))
        assert not torch.allclose(losses, F.cross_entropy(logits, y, reduction="none"))
    for epoch, record in enumerate(state.history):  # train_loss is the smoothed loss
        batches = spy.seen[4 * epoch:4 * epoch + 4]
        assert record["train_loss"] == pytest.approx(
            sum(losses.sum().item() for _, _, losses in batches) / 64, rel=1e-6)
    # training follows the gradient of torch's smoothed cross-entropy
    batches = list(zip(spy.inputs, (y for _, y, _ in spy.seen)))
    smoothed = replay(batches, lambda out, y: F.cross_entropy(out, y, label_smoothing=eps))
    torch.testing.assert_close(flat(model.parameters()), flat(smoothed.parameters()),
                               rtol=1e-4, atol=1e-6)
    plain = replay(batches, F.cross_entropy)
    assert not torch.allclose(flat(model.parameters()), flat(plain.parameters()), atol=1e-4)


def test_confidence_penalty_subtracts_beta_times_the_entropy():
    beta, spy, model = 0.5, LossSpy(), make_model()
    fit(model, [reg("confidence-penalty", beta=beta), spy], make_data(32))
    for logits, y, losses in spy.seen:
        entropy = torch.distributions.Categorical(logits=logits).entropy()
        torch.testing.assert_close(
            losses, F.cross_entropy(logits, y, reduction="none") - beta * entropy)
    batches = list(zip(spy.inputs, (y for _, y, _ in spy.seen)))
    expected = replay(batches, lambda out, y: (
        F.cross_entropy(out, y, reduction="none")
        - beta * torch.distributions.Categorical(logits=out).entropy()).mean())
    torch.testing.assert_close(flat(model.parameters()), flat(expected.parameters()),
                               rtol=1e-4, atol=1e-6)


def test_loss_regularisers_compose_in_either_order():
    runs = []
    for names in (("label-smoothing", "confidence-penalty"),
                  ("confidence-penalty", "label-smoothing")):
        spy = LossSpy()
        regs = [reg(name, **({"eps": 0.1} if name == "label-smoothing" else {"beta": 0.3}))
                for name in names]
        fit(make_model(), [*regs, spy], make_data(32))
        runs.append(spy.seen[0])
    (logits, y, first), (_, _, second) = runs
    expected = (F.cross_entropy(logits, y, reduction="none", label_smoothing=0.1)
                - 0.3 * torch.distributions.Categorical(logits=logits).entropy())
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


@pytest.mark.parametrize("options", [{"loss": "mse"}, {"loss": "kld"},
                                     {"model_spec": "mse-tor-MLP"}])
def test_label_smoothing_needs_the_cross_entropy(options):
    """Refused by the CLI before any data is loaded, and by the trainer before setup."""
    with pytest.raises(ConfigError) as info:
        cli_config(["label-smoothing:eps=0.1"], **options)
    message = str(info.value)
    assert message.startswith("label-smoothing smooths the cross-entropy, but this run's loss "
                              "is ") and "use --loss ce" in message and "\n" not in message
    log: list[str] = []
    with pytest.raises(ConfigError, match="label-smoothing smooths the cross-entropy"):
        fit(make_model(), [Lifecycle(log, "a"), reg("label-smoothing", eps=0.1)], make_data(),
            loss="mse")
    assert log == []  # nothing was set up, so nothing to tear down
    fit(make_model(), [reg("confidence-penalty", beta=0.1)], make_data(), loss="mse")


# --- teardown --------------------------------------------------------------------------------

class Lifecycle(Regulariser):
    """Logs setup and teardown into a shared list; may raise from one hook."""

    name = "lifecycle"

    def __init__(self, log: list[str], tag: str, fail_in: str = "") -> None:
        super().__init__()
        self.log, self.tag, self.fail_in = log, tag, fail_in

    def _maybe_fail(self, hook: str) -> None:
        if self.fail_in == hook:
            raise RuntimeError(f"{self.tag} fails in {hook}")

    def setup(self, ctx):
        self.log.append(f"setup {self.tag}")
        self._maybe_fail("setup")

    def after_step(self, ctx):
        self._maybe_fail("after_step")

    def teardown(self, ctx):
        self.log.append(f"teardown {self.tag}")
        self._maybe_fail("teardown")


def test_teardown_is_called_once_in_reverse_order_after_training():
    log: list[str] = []
    fit(make_model(), [Lifecycle(log, "a"), Lifecycle(log, "b")], make_data(), epochs=2)
    assert log == ["setup a", "setup b", "teardown b", "teardown a"]


def test_teardown_is_called_once_when_training_raises():
    log: list[str] = []
    with pytest.raises(RuntimeError, match="b fails in after_step"):
        fit(make_model(), [Lifecycle(log, "a"), Lifecycle(log, "b", "after_step")], make_data())
    assert log == ["setup a", "setup b", "teardown b", "teardown a"]


def test_teardown_follows_a_failed_setup_and_a_failed_teardown():
    log: list[str] = []
    with pytest.raises(RuntimeError, match="b fails in setup"):
        fit(make_model(), [Lifecycle(log, "a"), Lifecycle(log, "b", "setup"),
                           Lifecycle(log, "c")], make_data())
    assert log == ["setup a", "setup b", "teardown b", "teardown a"]  # c was never set up
    log.clear()
    with pytest.raises(RuntimeError, match="b fails in teardown"):
        fit(make_model(), [Lifecycle(log, "a"), Lifecycle(log, "b", "teardown")], make_data())
    assert log == ["setup a", "setup b", "teardown b", "teardown a"]  # a is still torn down


# --- DP-SGD with the loss and teardown hooks -------------------------------------------------

def test_dp_sgd_optimises_the_hooked_loss():
    """No noise and a bound C no gradient reaches: DP-SGD's update is the plain mean gradient,
    so DP + label smoothing trains like label smoothing alone, and unlike DP alone."""
    pytest.importorskip("opacus")

    def dp():
        return reg("dp-sgd", noise_multiplier=0.0, max_grad_norm=1e6, sampling="uniform")

    models, losses = {}, {}
    for case, regs in {"dp+ls": [dp(), reg("label-smoothing", eps=0.3)],
                       "ls": [reg("label-smoothing", eps=0.3)], "dp": [dp()]}.items():
        models[case] = make_model()
        state = fit(models[case], regs, make_data(64), optimizer="sgd", lr=0.5, epochs=2)
        losses[case] = [r["train_loss"] for r in state.history]
    torch.testing.assert_close(flat(models["dp+ls"].parameters()),
                               flat(models["ls"].parameters()), rtol=1e-4, atol=1e-6)
    assert losses["dp+ls"] == pytest.approx(losses["ls"], rel=1e-5)
    assert not torch.allclose(flat(models["dp+ls"].parameters()),
                              flat(models["dp"].parameters()), atol=1e-4)


def test_dp_sgd_with_loss_regularisers_and_empty_poisson_batches():
    pytest.importorskip("opacus")
    spy = LossSpy()
    state = fit(make_model(), [reg("dp-sgd", noise_multiplier=1.0, max_grad_norm=1.0),
                               reg("label-smoothing", eps=0.1),
                               reg("confidence-penalty", beta=0.1), spy],
                make_data(16), batch_size=1, epochs=2)
    assert 0 in [y.shape[0] for _, y, _ in spy.seen]
    assert all(math.isfinite(r["train_loss"]) and r["epsilon"] > 0 for r in state.history)


def test_dp_sgd_leaves_the_model_plain_when_training_fails():
    pytest.importorskip("opacus")
    model = make_model()
    with pytest.raises(RuntimeError, match="fails in after_step"):
        fit(model, [reg("dp-sgd", noise_multiplier=1.0, max_grad_norm=1.0),
                    Lifecycle([], "x", "after_step")], make_data())
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    for param in model.parameters():
        assert not hasattr(param, "grad_sample") and not hasattr(param, "summed_grad")
