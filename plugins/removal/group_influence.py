"""``group-influence``: first-order group influence (Basu et al.), PROTOCOL.md section 7:

    theta_new = theta + 1 / ((1 - p) N) * IHVP( sum_{z in S} grad loss(z) ),   p = |S| / N,

model in eval mode, cross-entropy loss, H the Hessian of the mean training loss.

``compat`` chooses what is computed:
* ``correct`` (default): IHVP = (H + damp I)^-1 v, what the formula needs. Linear in v, so it
  is solved ONCE for the summed gradient of S (the reference solved once per example).
* ``paper``: IHVP = scale (H + damp scale I)^-1 v, what the reference's LiSSA was meant to
  converge to (no final division by scale); also solved once for the summed gradient.
* ``reference``: what the reference's code computes as it runs, defects included
  (``reference_lissa.py``): one chain per example of S whose product keeps autograd's graph,
  chain 0 / r applied. The only mode that reproduces the reference's numbers; LiSSA only.

Solvers (``solver``): ``lissa`` (the stochastic recursion, ``rsc_core.lissa``), ``cg``
(conjugate gradient with exact HVPs over the training set, ``rsc_core.conjugate_gradient``)
and ``ekfac`` (Kronfluence's EK-FAC Gauss-Newton approximation, ``rsc_core.ekfac``, extra
``rsc[influence]``); ``cg`` and ``ekfac`` for ``correct`` and ``paper`` only."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rsc_core.runs.checkpoints import build_model_from_checkpoint, read_checkpoint
from rsc_core.errors import ConfigError, DivergenceError
from rsc_core.removal.remover import RemovalRequest, RemovalResult, Remover

from rsc_core.influence.conjugate_gradient import conjugate_gradient
from rsc_core.influence.ekfac import EkfacSettings, check_supported, ekfac_ihvp, import_kronfluence
from rsc_core.influence.lissa import LissaSettings, draw_samples, lissa
from .reference_lissa import (CHAINS_PER_PASS, ReferenceSettings, draw_reference_samples,
                              reference_ihvp_sum)

if TYPE_CHECKING:
    from rsc_core.influence.hessian import LossHessian

#: The reference's LiSSA scale per dataset (PROTOCOL.md section 7).
REFERENCE_SCALE = {"mnist": 25.0, "fashion": 100.0, "cifar10": 100.0}
SOLVERS = ("lissa", "cg", "ekfac")
COMPAT_MODES = ("correct", "paper", "reference")
#: options that belong to one solver only (refused with another)
_SOLVER_ONLY = {"lissa": ("depth", "repeats", "hvp_batch", "vectorise", "max_norm_factor"),
                "cg": ("tol", "max_iter", "hvp_samples"),
                "ekfac": ("fit_samples", "fit_batch")}
#: LiSSA options the reference emulation has no use for: it samples one example per step,
#: runs one chain per example of S, and its guard checks finiteness only.
_NOT_REFERENCE = ("hvp_batch", "vectorise", "max_norm_factor")
#: Recorded in a ``compat=reference`` removal's options, hence in its identity: removal
#: folders made before issue 20 say ``compat: reference`` for what is now ``paper``, and this
#: key keeps them from being reused as the emulation. Bump it if the emulation changes.
REFERENCE_EMULATION = 2


def reference_depth(forget_size: int, dataset: str = "mnist") -> int:
    """The reference's recursion depth: CIFAR-10 1000 steps; otherwise 2000 for |S| < 100,
    else 1000."""
    if dataset == "cifar10":
        return 1000
    return 2000 if forget_size < 100 else 1000


class GroupInfluenceRemover(Remover):
    """First-order group influence with a LiSSA, CG or EK-FAC inverse-HVP: computed once for
    S, or once per example of S as the reference code runs it (``compat=reference``)."""

    name = "group-influence"
    description = ("theta + IHVP(sum of the forget set's gradients) / ((1-p)N) (LiSSA, CG or "
                   "EK-FAC)")
    defaults: dict[str, Any] = {
        "solver": "lissa", "compat": "correct", "damp": 0.01, "scale": None, "seed": 0,
        "depth": None, "repeats": 10, "hvp_batch": 1, "vectorise": True,
        "max_norm_factor": 10.0, "tol": 1e-3, "max_iter": 100, "hvp_samples": 0,
        "fit_samples": 0, "fit_batch": 256,
    }
    types = {"scale": float, "depth": int}

    def resolve_options(self, options: Mapping[str, Any], source: Any,
                        forget: np.ndarray) -> dict[str, Any]:
        resolved = super().resolve_options(options, source, forget)
        if resolved["solver"] not in SOLVERS:
            raise ConfigError(f"unknown solver {resolved['solver']!r}; use one of "
                              f"{', '.join(SOLVERS)}")
        if resolved["compat"] not in COMPAT_MODES:
            raise ConfigError(f"unknown --compat {resolved['compat']!r}; use one of "
                              f"{', '.join(COMPAT_MODES)}")
        solver, compat = resolved["solver"], resolved["compat"]
        if solver != "lissa" and compat == "reference":
            name = {"cg": "CG", "ekfac": "EK-FAC"}[solver]
            raise ConfigError(f"--compat reference emulates the reference's LiSSA and has no "
                              f"{name} form; use --solver lissa, or --compat paper for {name} "
                              f"on the reference's intended scale (H + damp scale I)^-1 v")
        for key in (k for other, keys in _SOLVER_ONLY.items() if other != solver for k in keys):
            if options.get(key) is not None:
                raise ConfigError(f"option {key!r} does not apply to solver {solver}")
            resolved.pop(key)
        if solver == "ekfac":
            import_kronfluence()  # a missing extra fails here, before any work
            check_supported(source.load_model())
        if compat == "reference":
            self._drop_unused_by_reference(options, resolved)
        # scale enters LiSSA's recursion, and the paper's quantity with every solver
        if solver == "lissa" or compat == "paper":
            resolved["scale"] = self._scale(resolved["scale"], source.spec.dataset)
        elif options.get("scale") is not None:
            raise ConfigError(f"option 'scale' does not apply to solver {solver} in the correct "
                              f"mode (it solves (H + damp I) x = v); drop it or use --compat "
                              f"paper")
        else:
            resolved.pop("scale")
        if solver == "lissa" and resolved["depth"] is None:
            resolved["depth"] = reference_depth(len(forget), source.spec.dataset)
        self._check_numbers(resolved)
        return resolved

    @staticmethod
    def _drop_unused_by_reference(options: Mapping[str, Any], resolved: dict[str, Any]) -> None:
        """The emulation has no use for ``_NOT_REFERENCE``: refuse them when given, drop
        their defaults, and record the emulation's version (part of the identity)."""
        for key in _NOT_REFERENCE:
            if options.get(key) is not None:
                raise ConfigError(f"option {key!r} does not apply to --compat reference (the "
                                  f"reference samples one example per step, runs one chain "
                                  f"per example and has no divergence bound); drop it or use "
                                  f"--compat paper")
            resolved.pop(key)
        resolved["emulation"] = REFERENCE_EMULATION

    @staticmethod
    def _check_numbers(resolved: dict[str, Any]) -> None:
        """Every number in range, or one line naming the option and what it must be."""
        for key in ("damp", "scale", "tol", "max_norm_factor"):
            if key in resolved and not (math.isfinite(resolved[key]) and resolved[key] > 0):
                raise ConfigError(f"option {key!r} must be a positive number, got "
                                  f"{resolved[key]!r}; give e.g. --{_flag(key)} "
                                  f"{GroupInfluenceRemover.defaults[key] or 25}")
        for key in ("depth", "repeats", "hvp_batch", "max_iter", "fit_batch"):
            if key in resolved and resolved[key] < 1:
                raise ConfigError(f"option {key!r} must be a positive whole number, got "
                                  f"{resolved[key]!r}; give e.g. --{_flag(key)} "
                                  f"{GroupInfluenceRemover.defaults[key] or 1000}")
        for key in ("hvp_samples", "fit_samples"):
            if resolved.get(key, 0) < 0:
                raise ConfigError(f"option {key!r} cannot be negative (0 means all rows)")
        if "depth" in resolved:  # LiSSA multiplies h by 1 - c each step: c must be below 1
            c, bound = ((resolved["damp"], "1") if resolved["compat"] != "correct" else
                        (resolved["damp"] / resolved["scale"], f"scale ({resolved['scale']:g})"))
            if not c < 1:
                raise ConfigError(f"option 'damp' must be below {bound} for LiSSA with "
                                  f"--compat {resolved['compat']}, got {resolved['damp']!r}")

    def tag(self, options: Mapping[str, Any]) -> str:
        """e.g. ``lissa-reference``, ``lissa-paper`` or ``cg-correct``."""
        return f"{options['solver']}-{options['compat']}"

    @staticmethod
    def _scale(scale: float | None, dataset: str) -> float:
        if scale is not None:
            return scale
        if dataset not in REFERENCE_SCALE:
            raise ConfigError(f"the reference has no LiSSA scale for dataset {dataset!r}; "
                              f"give one with --scale")
        return REFERENCE_SCALE[dataset]

    def remove(self, request: RemovalRequest) -> RemovalResult:
        options = request.options
        checkpoint = read_checkpoint(request.source.path / "model.pt")
        model = build_model_from_checkpoint(checkpoint)
        from rsc_core.influence.hessian import LossHessian  # here: torch.func is slow to import

        hessian = LossHessian(model, request.data.train.images, request.data.train.labels,
                              request.device)
        hessian.check()
        forget = torch.as_tensor(request.forget, dtype=torch.long, device=request.device)
        v = hessian.gradient_sum(forget)
        generator = torch.Generator().manual_seed(int(options["seed"]))
        if options["compat"] == "reference":
            ihvp, facts = self._reference(hessian, forget, options, generator,
                                          request.progress)
        else:
            ihvp, facts = self._linear(hessian, v, options, generator, request.progress)
        n = hessian.num_rows
        p = len(request.forget) / n
        theta = hessian.theta + ihvp / ((1 - p) * n)
        if not torch.isfinite(theta).all():
            raise DivergenceError("group influence produced non-finite weights; use a larger "
                                  "--damp or --scale")
        state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
        for name, value in hessian.unflatten(theta).items():
            state[name] = value.detach().cpu().clone()
        facts.update({"gradient_norm": v.double().norm().item(), "update_norm":
                      (ihvp / ((1 - p) * n)).double().norm().item(), "p": p, "num_train": n,
                      "loss": "ce"})
        return RemovalResult(state, facts)

    def _linear(self, hessian: LossHessian, v: torch.Tensor, options: Mapping[str, Any],
                generator: torch.Generator, progress: bool) -> tuple[torch.Tensor, dict]:
        """The correct and paper modes: one solve for the summed gradient ``v``."""
        if not v.abs().max().item() > 0:
            # Memorised examples can have a float32 loss of exactly 0 and so a gradient of
            # exactly 0: the influence update is 0 whatever the solver; say so, skip the work.
            return torch.zeros_like(v), {"zero_gradient": True}
        # The IHVP is linear in v: solve for the unit vector and scale back. A memorised
        # example's gradient can be ~1e-23 per entry, where float32 iterates lose their
        # precision to subnormals and squared norms underflow to 0 (measured on real runs).
        v_norm = v.double().norm().item()
        unit = (v.double() / v_norm).to(v.dtype)
        solve = {"lissa": self._lissa, "cg": self._cg, "ekfac": self._ekfac}[options["solver"]]
        ihvp, facts = solve(hessian, unit, options, generator, progress)
        return (ihvp.double() * v_norm).to(v.dtype), facts

    @staticmethod
    def _reference(hessian: LossHessian, forget: torch.Tensor, options: Mapping[str, Any],
                   generator: torch.Generator, progress: bool) -> tuple[torch.Tensor, dict]:
        """The reference code's computation as it runs: not linear in v (its product keeps
        the graph), so one chain per example of S, each on its own gradient, as there."""
        settings = ReferenceSettings(damp=options["damp"], scale=options["scale"],
                                     depth=options["depth"], repeats=options["repeats"])
        samples = draw_reference_samples(hessian.num_rows, settings.depth, forget.numel(),
                                         generator, hessian.device)
        passes = -(-forget.numel() // CHAINS_PER_PASS)
        with steps_bar(f"LiSSA as the reference runs it ({forget.numel()} chains)",
                       settings.depth * passes, progress) as advance:
            return reference_ihvp_sum(hessian, forget, samples, settings,
                                      on_step=lambda _: advance())

    @staticmethod
    def _lissa(hessian: LossHessian, v: torch.Tensor, options: Mapping[str, Any],
               generator: torch.Generator, progress: bool) -> tuple[torch.Tensor, dict]:
        settings = LissaSettings(
            damp=options["damp"], scale=options["scale"], depth=options["depth"],
            repeats=options["repeats"], batch=options["hvp_batch"], compat=options["compat"],
            vectorise=options["vectorise"], max_norm_factor=options["max_norm_factor"])
        samples = draw_samples(hessian.num_rows, settings, generator, hessian.device)
        with steps_bar(f"LiSSA ({settings.repeats} chains)", settings.depth,
                       progress) as advance:
            return lissa(hessian.hvp_rows_batched, v, samples, settings,
                         on_step=lambda _: advance())

    @staticmethod
    def _cg(hessian: LossHessian, v: torch.Tensor, options: Mapping[str, Any],
            generator: torch.Generator, progress: bool) -> tuple[torch.Tensor, dict]:
        rows = None
        if options["hvp_samples"] and options["hvp_samples"] < hessian.num_rows:
            rows = torch.randperm(hessian.num_rows, generator=generator)[
                :options["hvp_samples"]].sort().values.to(hessian.device)
        # correct: (H + damp I) x = v; paper: scale (H + damp scale I)^-1 v
        scale = options.get("scale", 1.0) if options["compat"] == "paper" else 1.0
        with steps_bar("CG iterations (at most)", options["max_iter"], progress) as advance:
            x, facts = conjugate_gradient(lambda p: hessian.hvp_mean(p, rows), v,
                                          options["damp"] * scale, tol=options["tol"],
                                          max_iter=options["max_iter"],
                                          on_iteration=lambda *_: advance())
        return x * scale, facts

    @staticmethod
    def _ekfac(hessian: LossHessian, v: torch.Tensor, options: Mapping[str, Any],
               generator: torch.Generator, progress: bool) -> tuple[torch.Tensor, dict]:
        # correct: (G + damp I)^-1 v; paper: scale (G + damp scale I)^-1 v, as for CG
        scale = options.get("scale", 1.0) if options["compat"] == "paper" else 1.0
        settings = EkfacSettings(damp=options["damp"] * scale,
                                 fit_samples=options["fit_samples"],
                                 fit_batch=options["fit_batch"], seed=int(options["seed"]))
        solved, facts = ekfac_ihvp(hessian.model, hessian.images, hessian.labels,
                                   hessian.unflatten(v), settings, hessian.device, progress)
        x = torch.cat([solved[name].reshape(-1) for name in hessian.names])
        return x * scale, facts


def _flag(key: str) -> str:
    """The CLI flag of option ``key`` (its name with dashes)."""
    return key.replace("_", "-")


@contextmanager
def steps_bar(what: str, total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """A one-line progress bar on stderr (nothing when disabled); yields ``advance()``."""
    if not enabled:
        yield lambda: None
        return
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)
