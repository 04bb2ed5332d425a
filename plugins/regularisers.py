"""The mitigations studied (PROTOCOL.md section 6) as regulariser plugins: ``weight-decay``,
``grad-clip``, ``input-noise`` and ``dp-sgd``, plus two that change the loss,
``label-smoothing`` and ``confidence-penalty``. Each one only uses the hooks of
``rsc_core.regularisers.Regulariser``; docs/regularisers.md describes them.

Parameters are validated and normalised in ``__init__``: numbers become floats, flags bools,
and ``spec()`` records the required parameters plus every optional one that differs from its
default, so equivalent spellings (``value=1`` / ``value=1.0``, ``decoupled=false`` / nothing)
name the same run."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F

from rsc_core import hookimpl
from rsc_core.errors import ConfigError, OptionalDependencyError
from rsc_core.training.regularisers import Regulariser, TrainContext
from rsc_core.training.trainer import TrainConfig

_REQUIRED = object()


class _Param:
    """One declared parameter: a converter (raising ``ValueError`` with the reason) and a
    default (``_REQUIRED`` when it has none)."""

    def __init__(self, convert: Callable[[Any], Any], default: Any = _REQUIRED,
                 doc: str = "") -> None:
        self.convert, self.default, self.doc = convert, default, doc


def _number(low: float | None = None, *, strict: bool = False,
            high: float | None = None, strict_high: bool = False) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"must be finite, got {value!r}")
        if low is not None and (number <= low if strict else number < low):
            raise ValueError(f"must be {'>' if strict else '>='} {low:g}, got {value!r}")
        if high is not None and (number >= high if strict_high else number > high):
            raise ValueError(f"must be {'<' if strict_high else '<='} {high:g}, got {value!r}")
        return number
    return convert


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise ValueError(f"must be true or false, got {value!r}")


def _choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value).lower() if isinstance(value, str) else None
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return text
    return convert


class ParamRegulariser(Regulariser):
    """A regulariser whose parameters are declared in ``PARAMS`` (name -> ``_Param``).

    ``__init__`` rejects unknown names, converts every value, fills in defaults and sets each
    parameter as an attribute; ``self.params`` (what ``spec()`` records) keeps the required
    parameters and the optional ones that differ from their defaults."""

    PARAMS: ClassVar[dict[str, _Param]] = {}

    def __init__(self, **params: Any) -> None:
        accepted = ", ".join(self.PARAMS) or "none"
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise ConfigError(f"{self.name}: unknown parameter{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown))}; accepted: {accepted}")
        recorded: dict[str, Any] = {}
        for key, param in self.PARAMS.items():
            if key not in params:
                if param.default is _REQUIRED:
                    raise ConfigError(f"{self.name} needs {key}=... ({param.doc}); "
                                      f"accepted: {accepted}")
                setattr(self, key, param.default)
                continue
            try:
                value = param.convert(params[key])
            except ValueError as exc:
                raise ConfigError(f"{self.name}: {key} {exc} ({param.doc}); "
                                  f"accepted: {accepted}") from None
            setattr(self, key, value)
            if param.default is _REQUIRED or value != param.default:
                recorded[key] = value
        super().__init__(**recorded)


def _optimized_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class WeightDecay(ParamRegulariser):
    """L2 weight decay: the optimizer's coupled term (the reference), or decoupled (AdamW)."""

    name = "weight-decay"
    aliases = ("l2",)
    description = ("L2 weight decay: the optimizer's coupled weight_decay (reference) or "
                   "AdamW-style decoupled shrinking")
    PARAMS = {
        "value": _Param(_number(0.0), doc="decay coefficient, >= 0"),
        "decoupled": _Param(_flag, False, doc="true: p <- p * (1 - lr * value) before each "
                                               "step, as AdamW"),
    }
    value: float
    decoupled: bool

    def optimizer_options(self, options: dict[str, Any]) -> dict[str, Any]:
        if self.decoupled:
            return options
        # Add to, not replace, what is there: the caller's options are the base.
        return {**options, "weight_decay": options.get("weight_decay", 0.0) + self.value}

    def after_backward(self, ctx: TrainContext) -> None:
        # Decoupled decay runs after backward, i.e. just before optimizer.step(), exactly where
        # torch.optim.AdamW applies it: Adam + decoupled weight-decay == AdamW.
        if not self.decoupled or self.value == 0.0:
            return
        with torch.no_grad():
            for group in ctx.optimizer.param_groups:
                # Like AdamW, parameters without a gradient this step are left alone.
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    torch._foreach_mul_(params, 1.0 - group["lr"] * self.value)


class LabelSmoothing(ParamRegulariser):
    """Cross-entropy against targets smoothed towards uniform (Szegedy et al. 2016)."""

    name = "label-smoothing"
    description = ("cross-entropy with label smoothing eps, as torch's "
                   "F.cross_entropy(label_smoothing=eps); loss ce only")
    PARAMS = {
        "eps": _Param(_number(0.0, high=1.0, strict_high=True),
                      doc="smoothing: the target is (1 - eps) one-hot + eps uniform, in [0, 1)"),
    }
    eps: float

    def check_config(self, config: TrainConfig) -> None:
        if config.loss != "ce":
            raise ConfigError(f"label-smoothing smooths the cross-entropy, but this run's loss "
                              f"is {config.loss}; use --loss ce or drop label-smoothing")

    def loss(self, logits: torch.Tensor, y: torch.Tensor, losses: torch.Tensor,
             ctx: TrainContext) -> torch.Tensor:
        if self.eps == 0.0:  # exactly "no regulariser"
            return losses
        smoothed = F.cross_entropy(logits, y, reduction="none", label_smoothing=self.eps)
        plain = F.cross_entropy(logits, y, reduction="none")
        # Swap the plain cross-entropy for the smoothed one but keep what earlier loss hooks
        # added, so the order of loss regularisers does not matter. Alone, losses == plain
        # bit for bit and this is exactly ``smoothed``.
        return smoothed + (losses - plain)


class ConfidencePenalty(ParamRegulariser):
    """Penalise confident predictions: loss - beta * entropy of the softmax (Pereyra et al.
    2017); a memorised example is one the network is very confident about."""

    name = "confidence-penalty"
    description = "confidence penalty: the loss minus beta times the softmax's entropy"
    PARAMS = {
        "beta": _Param(_number(0.0), doc="weight of the entropy term, >= 0"),
    }
    beta: float

    def loss(self, logits: torch.Tensor, y: torch.Tensor, losses: torch.Tensor,
             ctx: TrainContext) -> torch.Tensor:
        if self.beta == 0.0:  # exactly "no regulariser"
            return losses
        log_p = F.log_softmax(logits, dim=1)
        entropy = -(log_p.exp() * log_p).sum(1)
        return losses - self.beta * entropy


class GradClip(ParamRegulariser):
    """Gradient clipping after every backward pass: element-wise value (reference) or norm."""

    name = "grad-clip"
    description = ("gradient clipping after backward: element-wise to [-value, value] "
                   "(reference) or the global norm to value")
    PARAMS = {
        "value": _Param(_number(0.0, strict=True), doc="clip threshold, > 0"),
        "mode": _Param(_choice("value", "norm"), "value",
                       doc="value: clip_grad_value_ per element; norm: clip_grad_norm_ of "
                           "the global norm"),
    }
    value: float
    mode: str

    def setup(self, ctx: TrainContext) -> None:
        if "dp-sgd" in ctx.extras:
            raise _dp_with_grad_clip()
        ctx.extras.setdefault("grad-clip", []).append(self)

    def after_backward(self, ctx: TrainContext) -> None:
        params = [p for p in ctx.model.parameters() if p.grad is not None]
        if self.mode == "value":
            torch.nn.utils.clip_grad_value_(params, self.value)
        else:
            torch.nn.utils.clip_grad_norm_(params, self.value)


class InputNoise(ParamRegulariser):
    """Fresh Gaussian noise N(0, sigma^2) added to every training batch (never at evaluation)."""

    name = "input-noise"
    aliases = ("gaussian-noise",)
    description = ("Gaussian noise N(0, sigma^2) added to each training batch, fresh per batch, "
                   "optionally clipped to [0, 1]")
    PARAMS = {
        "sigma": _Param(_number(0.0), doc="noise standard deviation, >= 0"),
        "clip": _Param(_flag, False, doc="true: clip noisy inputs to [0, 1]"),
    }
    sigma: float
    clip: bool

    def before_forward(self, x: torch.Tensor, y: torch.Tensor,
                       ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sigma == 0.0:  # draws nothing, so sigma=0 is exactly "no regulariser"
            return x, y
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        x = x + self.sigma * noise
        if self.clip:
            x = x.clamp(0.0, 1.0)
        return x, y


def _dp_with_grad_clip() -> ConfigError:
    return ConfigError("dp-sgd cannot be combined with grad-clip: DP-SGD already clips each "
                       "example's gradient to max_grad_norm, and grad-clip would only touch the "
                       "summed gradient that DP-SGD then replaces; drop grad-clip")


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
        "noise_multiplier": _Param(_number(0.0), doc="noise std / max_grad_norm, >= 0"),
        "max_grad_norm": _Param(_number(0.0, strict=True),
                                doc="per-example gradient norm bound C, > 0"),
        "delta": _Param(_number(0.0, strict=True, high=1.0, strict_high=True), 1e-5,
                        doc="the delta of (epsilon, delta)-DP, in (0, 1)"),
        "sampling": _Param(_choice("poisson", "uniform"), "poisson",
                           doc="poisson: each example joins each batch with probability B/N; "
                               "uniform: shuffled fixed-size batches"),
        "accountant": _Param(_choice("rdp", "prv"), "rdp",
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
            raise _dp_with_grad_clip()
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


REGULARISERS = (WeightDecay, GradClip, InputNoise, DPSGD, LabelSmoothing, ConfidencePenalty)


@hookimpl
def register_regularisers(register) -> None:
    for regulariser in REGULARISERS:
        register(regulariser)
