"""Conjugate gradient for (H + shift I) x = b with exact Hessian-vector products.

Why not ``scipy.sparse.linalg.cg``: it works on NumPy arrays (a device round trip per
iteration on CUDA) and carries on silently when the operator is not positive definite, which
for a network's Hessian (indefinite away from a minimum) is the case that matters. This
version runs on torch tensors on any device and stops with one line when it meets a
direction of non-positive curvature."""
from __future__ import annotations

import math
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
    Returns x and facts: iterations, the final relative residual, whether it converged."""
    started = time.perf_counter()
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    b_norm = b.double().norm().item()  # float64: tiny right-hand sides must not underflow
    rr = r.dot(r)
    residual = math.sqrt(rr.item()) / b_norm if b_norm > 0 else 0.0
    iterations = 0
    while residual > tol and iterations < max_iter:
        ap = hvp(p) + shift * p
        curvature = p.dot(ap)
        if not curvature.item() > 0:  # also catches NaN
            raise DivergenceError(
                f"CG met non-positive curvature ({curvature.item():.3g}) at iteration "
                f"{iterations + 1}: H + damp I is not positive definite here; use a larger "
                f"--damp (now {shift:g})")
        alpha = rr / curvature
        x += alpha * p
        r -= alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        iterations += 1
        residual = math.sqrt(rr.item()) / b_norm
        if on_iteration is not None:
            on_iteration(iterations, residual)
    return x, {"cg_iterations": iterations, "cg_relative_residual": residual,
               "cg_converged": residual <= tol, "cg_seconds": time.perf_counter() - started}
