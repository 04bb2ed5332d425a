"""``dp-sgd`` (alias ``dp``): differentially private SGD (Abadi et al. 2016, "Deep learning
with differential privacy") with Opacus.

Each example's gradient is clipped to ``max_grad_norm`` and Gaussian noise is added to their
sum, so no single training example, such as one of the few that carry a planted pattern, can
move the model by more than a bounded amount; the accountant reports the (epsilon, delta) each
epoch reaches. The reference's mitigations (PROTOCOL.md section 6) do not include it; rsc adds
it because bounding each example's influence is the standard defence against memorisation.
Opacus is the optional extra ``rsc[dp]``; docs/regularisers.md describes the wiring (ghost
clipping, Poisson sampling, resume)."""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterator

import torch

from rsc_core.errors import ConfigError, OptionalDependencyError
from rsc_core.training.regularisers import TrainContext

from .exclusions import dp_with_grad_clip
from .params import Param, ParamRegulariser, choice, number


def _import_opacus() -> Any:
    try:
        from opacus.accountants import create_accountant
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping
    except ImportError:
        raise OptionalDependencyError("dp-sgd needs Opacus: pip install 'rsc[dp]'") from None
    return GradSampleModuleFastGradientClipping, DPOptimizerFastGradientClipping, create_accountant


def _plain_state_gsm(GradSampleModule: type) -> type:
    """A GradSampleModule whose state_dict is the wrapped model's (no ``_module.`` prefix), so
    the trainer's checkpoints load into the plain architecture and resume loads plain keys."""

    class PlainStateGradSampleModule(GradSampleModule):
        def state_dict(self, *args: Any, **kwargs: Any) -> Any:
            return self._module.state_dict(*args, **kwargs)

        def load_state_dict(self, state_dict: Any, strict: bool = True,
                            assign: bool = False) -> Any:
            return self._module.load_state_dict(state_dict, strict=strict, assign=assign)

    return PlainStateGradSampleModule


class DPSGD(ParamRegulariser):
    """DP-SGD with Opacus: per-example clipping, Gaussian noise, privacy accounting."""

    name = "dp-sgd"
    aliases = ("dp",)
    description = ("differentially private training (Opacus): per-example gradient clipping to "
                   "max_grad_norm plus Gaussian noise, Poisson sampling, epsilon per epoch")
    PARAMS = {
        "noise_multiplier": Param(number(0.0), doc="noise std / max_grad_norm, >= 0"),
        "max_grad_norm": Param(number(0.0, strict=True),
                               doc="per-example gradient norm bound C, > 0"),
        "delta": Param(number(0.0, strict=True, high=1.0, strict_high=True), 1e-5,
                       doc="the delta of (epsilon, delta)-DP, in (0, 1)"),
        "sampling": Param(choice("poisson", "uniform"), "poisson",
                          doc="poisson: each example joins each batch with probability B/N; "
                              "uniform: shuffled fixed-size batches"),
        "accountant": Param(choice("rdp", "prv"), "rdp",
                            doc="Opacus privacy accountant"),
    }
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    sampling: str
    accountant: str

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._accountant: Any = None
        self._module: Any = None
        self._prior_steps: int | None = None

    @staticmethod
    def sample_rate(ctx: TrainContext) -> float:
        return min(1.0, ctx.batch_size / ctx.num_train)

    @staticmethod
    def steps_per_epoch(ctx: TrainContext) -> int:
        return math.ceil(ctx.num_train / ctx.batch_size)

    def setup(self, ctx: TrainContext) -> None:
        GradSampleModule, DPOptimizer, create_accountant = _import_opacus()
        if "grad-clip" in ctx.extras:
            raise dp_with_grad_clip()
        if "dp-sgd" in ctx.extras:
            raise ConfigError("dp-sgd is given twice; use one dp-sgd regulariser")
        ctx.extras["dp-sgd"] = self
        # Opacus' backward hooks on the first layer (whose input needs no gradient) make torch
        # warn on every run; the per-sample gradients are right, so silence just that warning.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients "
                                "are computed with respect to module outputs")
        try:
            # Ghost clipping: per-example gradient NORMS from layer activations and output
            # gradients, then a second backward pass of the clipped loss. It never
            # materialises B per-example gradients, which made DP-SGD ~40x slower on a CPU.
            module = _plain_state_gsm(GradSampleModule)(
                ctx.model, loss_reduction="mean", max_grad_norm=self.max_grad_norm,
                use_ghost_clipping=True)
        except NotImplementedError as exc:
            detail = " ".join(str(exc).split())[:200]
            raise ConfigError(f"dp-sgd cannot train this architecture: Opacus needs per-example "
                              f"gradients, which layers with buffers such as BatchNorm do not "
                              f"have ({detail}); use an architecture without batch norm, "
                              f"e.g. LargeMLP") from None
        self._module = module  # from here on, teardown has hooks to remove
        optimizer = DPOptimizer(ctx.optimizer, noise_multiplier=self.noise_multiplier,
                                max_grad_norm=self.max_grad_norm,
                                expected_batch_size=ctx.batch_size, loss_reduction="mean")
        self._accountant = create_accountant(self.accountant)
        optimizer.attach_step_hook(
            self._accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate(ctx)))
        self._prior_steps = None
        ctx.model, ctx.optimizer = module, optimizer

    def backward(self, losses: torch.Tensor, ctx: TrainContext) -> bool:
        """Opacus' two-pass fast gradient clipping: the first pass records each example's
        gradient norm, the second backpropagates sum_i c_i * loss_i with c_i =
        min(1, C / norm_i), which is exactly the sum of the clipped per-example gradients."""
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        # An empty Poisson batch still runs both passes (on a zero loss), so Opacus' hooks see
        # a complete step; its gradient is zero and only the noise moves the model.
        first = losses.mean() if losses.numel() else losses.sum()
        first.backward(retain_graph=True)
        for param in params:
            param.grad = None
        coefficients = self._module.get_clipping_coef().to(losses.device)
        self._module.disable_hooks()
        try:
            (coefficients * losses).sum().backward()
        finally:
            self._module.enable_hooks()
        return True

    def batches(self, ctx: TrainContext) -> Iterator[torch.Tensor] | None:
        if self.sampling != "poisson":
            return None  # the trainer's shuffled fixed-size batches
        return self._poisson_batches(ctx)

    def _poisson_batches(self, ctx: TrainContext) -> Iterator[torch.Tensor]:
        """ceil(N/B) steps; in each, every example joins independently with probability B/N.
        Batches may be empty: Opacus then adds pure noise, and the step is accounted."""
        rate = self.sample_rate(ctx)
        for _ in range(self.steps_per_epoch(ctx)):
            draw = torch.rand(ctx.num_train, generator=ctx.generator, device=ctx.device)
            yield torch.nonzero(draw < rate).flatten()

    def steps_accounted(self) -> int:
        return sum(steps for _, _, steps in self._accountant.history)

    def epsilon(self) -> float:
        if self.noise_multiplier == 0.0:
            return math.inf
        if not self._accountant.history:
            return 0.0
        return float(self._accountant.get_epsilon(delta=self.delta))

    def end_epoch(self, ctx: TrainContext) -> dict[str, float]:
        if self._prior_steps is None:
            # A resumed run restarts the accountant: the epochs before the resume point each
            # took ceil(N/B) steps at the same sample rate, so they are added back here.
            self._prior_steps = (ctx.epoch - 1) * self.steps_per_epoch(ctx)
            if self._prior_steps:
                history = [(self.noise_multiplier, self.sample_rate(ctx), self._prior_steps),
                           *self._accountant.history]
                merged: list[tuple[float, float, int]] = []
                for sigma, rate, steps in history:  # one entry per (sigma, q): half the work
                    if merged and merged[-1][:2] == (sigma, rate):
                        steps += merged.pop()[2]
                    merged.append((sigma, rate, steps))
                self._accountant.history = merged
        return {"epsilon": self.epsilon(), "delta": self.delta}

    def teardown(self, ctx: TrainContext) -> None:
        """Detach Opacus' hooks and per-sample buffers from the caller's model, after the last
        epoch or a failure (the wrapper's state_dict still works for a final checkpoint)."""
        if self._module is None:  # setup did not get as far as wrapping the model
            return
        self._module.to_standard_module()
        for param in self._module.parameters():
            if hasattr(param, "summed_grad"):
                del param.summed_grad
