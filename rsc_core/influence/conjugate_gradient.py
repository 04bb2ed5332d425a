"""Conjugate gradient for (H + shift I) x = b with exact Hessian-vector products.

Why not ``scipy.sparse.linalg.cg``: it works on NumPy arrays (a device round trip per
iteration on CUDA) and carries on silently when the operator is not positive definite, which
for a network's Hessian (indefinite away from a minimum) is the case that matters. This
version runs on torch tensors on any device and stops with one line when it meets a
direction of non-positive curvature."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from rsc_core.errors import DivergenceError

Matvec = Callable[[torch.Tensor], torch.Tensor]


def conjugate_gradient(hvp: Matvec, b: torch.Tensor, shift: float, *, tol: float = 1e-3,
                       max_iter: int = 100,
                       on_iteration: Callable[[int, float], None] | None = None
                       ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve (H + shift I) x = b from x = 0 until |r| <= tol |b| or ``max_iter`` iterations.
    ``b`` is one vector, or a block of right-hand sides (one per row, B x P) solved together:
    then ``hvp`` maps B x P to B x P, every row keeps its own step sizes, and the iteration
    stops when every row has converged (the residual reported is the worst row's). Returns x
    and facts: iterations, the final relative residual, whether it converged."""
    started = time.perf_counter()
    block = b if b.dim() == 2 else b.unsqueeze(0)
    matvec = hvp if b.dim() == 2 else (lambda p: hvp(p[0]).unsqueeze(0))
    x = torch.zeros_like(block)
    r = block.clone()
    p = r.clone()
    # float64 norms: tiny right-hand sides must not underflow
    b_norm = torch.linalg.vector_norm(block, dim=1, dtype=torch.float64)
    rr = (r * r).sum(1)
    relative = _relative(rr, b_norm)
    iterations = 0
    while relative.max() > tol and iterations < max_iter:
        ap = matvec(p) + shift * p
        curvature = (p * ap).sum(1)
        active = relative > tol  # converged rows stay as they are
        bad = active & ~(curvature > 0)  # also catches NaN
        if bad.any():
            value = curvature[bad][0].item()
            raise DivergenceError(
                f"CG met non-positive curvature ({value:.3g}) at iteration "
                f"{iterations + 1}: H + damp I is not positive definite here; use a larger "
                f"--damp (now {shift:g})")
        alpha = torch.where(active, rr / torch.where(active, curvature, 1), 0).unsqueeze(1)
        x += alpha * p
        r -= alpha * ap
        rr_new = (r * r).sum(1)
        p = r + torch.where(active, rr_new / torch.where(active, rr, 1), 0).unsqueeze(1) * p
        rr = rr_new
        iterations += 1
        relative = _relative(rr, b_norm)
        if on_iteration is not None:
            on_iteration(iterations, float(relative.max()))
    residual = float(relative.max())
    return (x if b.dim() == 2 else x[0]), {
        "cg_iterations": iterations, "cg_relative_residual": residual,
        "cg_converged": residual <= tol, "cg_seconds": time.perf_counter() - started}


def _relative(rr: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
    """Each row's relative residual |r| / |b| (0 for a zero right-hand side)."""
    return torch.where(b_norm > 0, rr.double().sqrt() / b_norm.clamp_min(1e-300), 0.0)
