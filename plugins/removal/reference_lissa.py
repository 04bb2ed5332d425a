"""Group influence's inverse-HVP as the reference code computes it (``--compat reference``,
issue 20): an exact emulation of what its LiSSA does when it runs, defects included, so that
rsc can reproduce the reference's numbers. ``lissa.py`` computes what the reference meant.

What the reference's code computes (``spurious_ml/influence_utils/influence.py``, read there),
and how rsc emulates each part:

1. **One LiSSA per example.** For every z in S it runs its own recursion on v_z, the gradient
   of z's loss, and sums the results over S. Because of point 2 the estimate is not linear in
   v, so rsc cannot solve once for the summed gradient here: it runs one chain per example
   (all of S advancing together, in groups of ``CHAINS_PER_PASS``).
2. **The product keeps the graph.** v_z is built with ``create_graph=True`` and the iterate
   h_{t+1} = v_z + (1 - damp) h_t - hv_t / scale is never detached (only hv_t is), so
   autograd's Hessian-vector product also differentiates h_t through v_z and returns

       hv_t = H_i h_t + k_t H_z g_i,

   with i the step's sampled example, g_i its loss gradient, H_z the Hessian of z's loss and
   k_t the coefficient of v_z in h_t: k_0 = 0 (h_0 is v_z detached), k_{t+1} = 1 +
   (1 - damp) k_t. The recursion therefore does not converge to scale (H + damp scale I)^-1
   v_z. rsc computes the extra term directly (one gradient at i and one product at z per
   step), which is exact and costs the same at every step; the reference back-propagates
   through a graph that grows by one node per step, so its step cost grows with t.
3. **Only chain 0 counts.** The reference's r chains per example are joined with ``+=`` on
   Python lists, which concatenates them; every block is divided by r and the weight update
   walks only the first block. So the weights move by chain 0 of each example divided by r:
   rsc runs chain 0 only (the others never reach the result) and divides by ``repeats``.

The Hessian samples are one training example per step, drawn uniformly with replacement
(the reference reshuffles a batch-1 DataLoader every step and takes its first example). The
reference draws them from torch's global generator, which rsc does not replay: a run is the
reference's in distribution, and bit for bit given the same samples (tests).

Divergence guard: the extra term has no a-priori bound, so the iterate's size cannot be
bounded as in ``lissa.py``; the guard stops only on a non-finite iterate (the reference would
write non-finite weights there), checked every ``GUARD_EVERY`` steps and after the last."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from rsc_core.errors import DivergenceError

from rsc_core.influence.lissa import GUARD_EVERY

#: Chains (examples of S) advanced together; bounds memory at six such k x P buffers.
CHAINS_PER_PASS = 64


class ReferenceProducts(Protocol):
    """What the emulation needs of a model's loss (``LossHessian`` provides it)."""

    num_rows: int

    def gradient_rows_batched(self, rows: torch.Tensor,
                              out: torch.Tensor | None = None) -> torch.Tensor: ...

    def hvp_rows_batched(self, vectors: torch.Tensor, rows: torch.Tensor,
                         out: torch.Tensor | None = None, alpha: float = 1.0,
                         plus: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class ReferenceSettings:
    """The reference's LiSSA numbers: h <- v + (1 - damp) h - hv / scale for ``depth`` steps;
    ``repeats`` is its r, which only divides the result (point 3 of the module docstring)."""

    damp: float
    scale: float
    depth: int
    repeats: int


def draw_reference_samples(num_rows: int, depth: int, examples: int,
                           generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One sampled training row per step and example: depth x examples x 1."""
    return torch.randint(num_rows, (depth, examples, 1), generator=generator).to(device)


def reference_ihvp_sum(products: ReferenceProducts, forget: torch.Tensor,
                       samples: torch.Tensor, settings: ReferenceSettings,
                       on_step: Callable[[int], None] | None = None
                       ) -> tuple[torch.Tensor, dict[str, Any]]:
    """sum over z in ``forget`` of the reference's chain-0 estimate for z, divided by r: the
    vector the reference adds to the weights times (1 - p) N. ``samples`` (depth x |S| x 1,
    from ``draw_reference_samples``) holds each example's Hessian samples."""
    if not 0 < settings.damp < 1:
        raise DivergenceError(f"the reference's LiSSA needs 0 < damp < 1, got "
                              f"{settings.damp:g}; choose --damp below 1")
    started = time.perf_counter()
    total, change = None, 0.0
    for first in range(0, forget.numel(), CHAINS_PER_PASS):
        part = slice(first, first + CHAINS_PER_PASS)
        h, part_change = _chains(products, forget[part], samples[:, part], settings,
                                 first, on_step)
        piece = h.sum(0)
        total = piece if total is None else total + piece
        change = max(change, part_change)
    estimate = total / settings.repeats
    facts = {"lissa_steps": settings.depth * forget.numel(),
             "reference_chain_steps": settings.depth * forget.numel() * settings.repeats,
             "lissa_seconds": time.perf_counter() - started,
             "estimate_norm": estimate.double().norm().item(),
             "extra_term_coefficient": _coefficient(settings.damp, settings.depth),
             "last_step_relative_change": change}
    return estimate, facts


def _coefficient(damp: float, steps: int) -> float:
    """k_t = sum_{s < t} (1 - damp)^s: the coefficient of v in the reference's h_t."""
    return (1 - (1 - damp) ** steps) / damp


def _chains(products: ReferenceProducts, forget: torch.Tensor, samples: torch.Tensor,
            settings: ReferenceSettings, first: int,
            on_step: Callable[[int], None] | None) -> tuple[torch.Tensor, float]:
    """Chain 0 of every example in ``forget``, advanced together; returns k x P iterates and
    the largest relative change of the last step."""
    damp, scale = settings.damp, settings.scale
    at_z = forget.unsqueeze(1)
    v = products.gradient_rows_batched(at_z)
    h = v.clone()
    # reused buffers: a fresh k x P tensor per step costs page faults (mlp_hvp.py)
    product, sampled, extra = torch.empty_like(h), torch.empty_like(h), torch.empty_like(h)
    coefficient, change = 0.0, math.inf
    for step in range(settings.depth):
        rows = samples[step]
        products.hvp_rows_batched(h, rows, out=product, alpha=-1 / scale)
        if coefficient:  # the graph the reference keeps: + k_t H_z g_i (module docstring)
            products.gradient_rows_batched(rows, out=sampled)
            products.hvp_rows_batched(sampled, at_z, out=extra, alpha=-coefficient / scale)
            product += extra
        last = step == settings.depth - 1
        previous = h.clone() if last else None
        h.mul_(1 - damp).add_(v).add_(product)
        coefficient = 1 + (1 - damp) * coefficient
        if (step + 1) % GUARD_EVERY == 0 or last:
            _check_finite(h, step, first, settings)
        if previous is not None:
            change = _relative_change(h, previous)
        if on_step is not None:
            on_step(step + 1)
    return h, change


def _relative_change(h: torch.Tensor, previous: torch.Tensor) -> float:
    """The largest over chains of |h - previous| / |h| (float64: tiny gradients)."""
    difference = torch.linalg.vector_norm(h - previous, dim=1, dtype=torch.float64)
    size = torch.linalg.vector_norm(h, dim=1, dtype=torch.float64).clamp_min(1e-300)
    return (difference / size).max().item()


def _check_finite(h: torch.Tensor, step: int, first: int,
                  settings: ReferenceSettings) -> None:
    """Stop with one line if any chain's iterate has a non-finite entry."""
    finite = torch.isfinite(h).all(1)
    if bool(finite.all()):
        return
    chain = int((~finite).nonzero()[0])
    raise DivergenceError(
        f"LiSSA (--compat reference) produced a non-finite iterate by step {step + 1} of "
        f"{settings.depth} (forget example {first + chain + 1}), where the reference code "
        f"would write non-finite weights; use a larger --scale (now {settings.scale:g}) or "
        f"--damp (now {settings.damp:g})")
