"""``self-influence``: each training example's gradient through the damped inverse Hessian,
s_i = g_i^T (H + damp I)^-1 g_i, g_i the gradient of its cross entropy (Koh & Liang 2017's
influence of an example on its own loss; Feldman & Zhang's memorisation, first order). An
example the model fitted through a direction no other example supports (a trigger's pixels
feed weights that only the planted images train) has a large s_i, because H has little
curvature there and the inverse amplifies it.

Solvers (``solver``), all over rsc_core's Hessian machinery (the ones group influence uses):

* ``ekfac`` (default; extra ``rsc[influence]``): Kronfluence's EK-FAC factors fitted on
  ``fit_samples`` rows, then every example's score in closed form
  (``rsc_core.ekfac.self_influence_scores``): seconds for 60,000 MNIST rows after the fit.
* ``arnoldi``: a low-rank approximation (Schioppa et al. 2022): the ``rank`` largest
  eigenpairs (lambda_j, u_j) of the exact H over ``hvp_samples`` rows, found by Lanczos
  (``scipy.sparse.linalg.eigsh``) on rsc's exact Hessian-vector products, then
  s_i = sum_j (u_j . g_i)^2 / (lambda_j + damp) + (|g_i|^2 - sum_j (u_j . g_i)^2) / damp:
  directions outside the top eigenspace are treated as flat (only damp), which is where a
  trigger's weights are. Cost: about 3 x rank HVPs plus one pass of per-example gradients.
* ``cg`` and ``lissa``: the exact solve (conjugate gradient, on a block of ``batch``
  right-hand sides at once) or LiSSA's stochastic one, per example. Each costs iterations x
  HVP rows per example: meant for small training sets (and as the reference the two
  approximations are tested against), not for 60,000 rows.

Every solve is done for the unit gradient and scaled back by |g_i|^2: a memorised example's
gradient can be ~1e-23 per entry, whose square underflows float32."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rsc_core.audit.auditor import (AuditRequest, AuditResult, Auditor, AuditorError, require,
    require_choice)

SOLVERS = ("ekfac", "arnoldi", "cg", "lissa")
GRADIENTS = ("loss", "margin")


class SelfInfluenceAuditor(Auditor):
    """Self-influence g^T (H + damp I)^-1 g of every training example (EK-FAC, Arnoldi, CG or
    LiSSA)."""

    name = "self-influence"
    aliases = ("si",)
    description = ("self-influence g^T (H + damp I)^-1 g per training example (EK-FAC, "
                   "Arnoldi, CG or LiSSA)")
    defaults: dict[str, Any] = {
        "solver": "ekfac", "gradient": "margin", "damp": 0.01, "batch": 128, "seed": 0,
        "fit_samples": 1000, "fit_batch": 256,            # ekfac
        "rank": 20, "hvp_samples": 5000,                  # arnoldi (hvp_samples: cg too)
        "tol": 1e-3, "max_iter": 100,                     # cg
        "scale": 25.0, "depth": 1000, "repeats": 1,       # lissa
    }

    def resolve_options(self, options: Any) -> dict[str, Any]:
        resolved = super().resolve_options(options)
        require_choice(self.name, resolved, "solver", SOLVERS)
        require_choice(self.name, resolved, "gradient", GRADIENTS)
        require(self.name, resolved, ("damp", "scale", "tol"), lambda v: v > 0, "positive")
        require(self.name, resolved, ("batch", "fit_batch", "rank", "max_iter", "depth",
                                      "repeats"), lambda v: v >= 1, "at least 1")
        return resolved

    def check(self, model: torch.nn.Module, run: Any = None) -> None:
        """EK-FAC covers Linear and Conv2d layers only; the Hessian solvers find out what
        torch.func cannot differentiate twice when they start (``LossHessian.check``)."""
        if self.options["solver"] != "ekfac":
            return
        from rsc_core.influence.ekfac import import_kronfluence, unsupported_layers

        import_kronfluence()
        others = unsupported_layers(model)
        if others:
            raise AuditorError(
                f"self-influence with solver ekfac covers only Linear and Conv2d layers, but "
                f"{type(model).__name__} also trains {', '.join(others)} parameters; use "
                f"-a self-influence:solver=arnoldi (exact Hessian-vector products) for it")

    def audit(self, request: AuditRequest) -> AuditResult:
        options = request.options
        started = time.perf_counter()
        solver = {"ekfac": _ekfac, "arnoldi": _arnoldi, "cg": _cg, "lissa": _lissa}[
            options["solver"]]
        scores, facts = solver(request, options)
        facts["seconds"] = time.perf_counter() - started
        return AuditResult(scores.double().numpy(), facts=facts)


def _ekfac(request: AuditRequest, options: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    from rsc_core.influence.ekfac import EkfacSettings, fit_factors, self_influence_scores

    settings = EkfacSettings(damp=options["damp"], fit_samples=options["fit_samples"],
                             fit_batch=options["fit_batch"], seed=options["seed"])
    started = time.perf_counter()
    factors = fit_factors(request.model, request.train.images, request.train.labels, settings,
                          request.device, request.progress)
    fitted = time.perf_counter()
    scores = self_influence_scores(request.model, request.train.images, request.train.labels,
                                   factors, options["damp"], request.device, options["batch"],
                                   options["gradient"])
    return scores, {"ekfac_fit_seconds": fitted - started,
                    "score_seconds": time.perf_counter() - fitted}


def _hessian(request: AuditRequest) -> Any:
    from rsc_core.influence.hessian import LossHessian

    hessian = LossHessian(request.model, request.train.images, request.train.labels,
                          request.device)
    hessian.check()
    return hessian


def _hvp_rows(hessian: Any, options: dict[str, Any]) -> torch.Tensor | None:
    """The rows the Hessian is taken over: ``hvp_samples`` drawn with the seed, or all."""
    count = options["hvp_samples"]
    if not count or count >= hessian.num_rows:
        return None
    generator = torch.Generator().manual_seed(options["seed"])
    return torch.randperm(hessian.num_rows, generator=generator)[:count].sort().values.to(
        hessian.device)


def _gradients(hessian: Any, start: int, stop: int, gradient: str) -> torch.Tensor:
    """Rows start..stop's loss (or margin) gradients, B x P."""
    rows = torch.arange(start, stop, device=hessian.device)
    return (hessian.gradient_rows_batched(rows.unsqueeze(1)) if gradient == "loss" else
            hessian.margin_gradient_rows(rows))


def _unit(gradients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients as unit vectors and their squared norms (float64: a memorised example's
    entries of 1e-23 would square to 0 in float32; the norm itself is representable)."""
    norms = torch.linalg.vector_norm(gradients, dim=1, dtype=torch.float64)
    return gradients / norms.clamp_min(1e-300).to(gradients.dtype).unsqueeze(1), norms ** 2


def _arnoldi(request: AuditRequest, options: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    from scipy.sparse.linalg import LinearOperator, eigsh

    hessian = _hessian(request)
    rows = _hvp_rows(hessian, options)
    size = hessian.theta.numel()
    rank = min(options["rank"], size - 1)
    calls = 0

    def matvec(vector: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        v = torch.from_numpy(np.asarray(vector, dtype=np.float32).reshape(-1)).to(hessian.device)
        return hessian.hvp_mean(v, rows).double().cpu().numpy()

    started = time.perf_counter()
    start = np.random.RandomState(options["seed"]).rand(size)
    values, vectors = eigsh(LinearOperator((size, size), matvec=matvec, dtype=np.float64),
                            k=rank, which="LA", v0=start, tol=1e-3)
    eigen_seconds = time.perf_counter() - started
    if values.min() + options["damp"] <= 0:
        raise AuditorError(f"the Hessian's eigenvalue {values.min():.3g} plus damp is not "
                           f"positive; use a larger damp (now {options['damp']:g})")
    basis = torch.from_numpy(vectors.astype(np.float32)).to(hessian.device)  # P x rank
    weights = torch.from_numpy(1.0 / (values + options["damp"]) - 1.0 / options["damp"])
    scores = []
    for begin in range(0, hessian.num_rows, options["batch"]):
        gradients = _gradients(hessian, begin, min(begin + options["batch"], hessian.num_rows),
                               options["gradient"])
        squared = torch.linalg.vector_norm(gradients, dim=1, dtype=torch.float64).cpu() ** 2
        projections = (gradients @ basis).double().cpu()  # squared in float64
        scores.append((projections ** 2 * weights).sum(1) + squared / options["damp"])
    return torch.cat(scores), {"eigenvalues": values.tolist(), "hvp_calls": calls,
                               "hvp_rows": hessian.num_rows if rows is None else rows.numel(),
                               "eigen_seconds": eigen_seconds}


def _block_hvp(hessian: Any, vectors: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """H v for every row of ``vectors`` (B x P), H over ``rows`` (all when None), in chunks
    that keep the gathered images near 64 MB."""
    rows = torch.arange(hessian.num_rows, device=hessian.device) if rows is None else rows
    per_row = hessian.images[0].numel() * vectors.shape[0]
    chunk = max(1, (16 << 20) // per_row)
    total = torch.zeros_like(vectors)
    for start in range(0, rows.numel(), chunk):
        part = rows[start:start + chunk]
        block = part.unsqueeze(0).expand(vectors.shape[0], -1)
        total += hessian.hvp_rows_batched(vectors, block) * (part.numel() / rows.numel())
    return total


def _cg(request: AuditRequest, options: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    from rsc_core.influence.conjugate_gradient import conjugate_gradient

    hessian = _hessian(request)
    rows = _hvp_rows(hessian, options)
    scores, iterations, worst = [], 0, 0.0
    for begin in range(0, hessian.num_rows, options["batch"]):
        unit, squared = _unit(_gradients(hessian, begin,
                                         min(begin + options["batch"], hessian.num_rows),
                                         options["gradient"]))
        solved, facts = conjugate_gradient(lambda p: _block_hvp(hessian, p, rows), unit,
                                           options["damp"], tol=options["tol"],
                                           max_iter=options["max_iter"])
        iterations = max(iterations, facts["cg_iterations"])
        worst = max(worst, facts["cg_relative_residual"])
        scores.append(squared.cpu() * (unit * solved).double().sum(1).cpu())
    return torch.cat(scores), {"cg_max_iterations": iterations,
                               "cg_worst_relative_residual": worst}


def _lissa(request: AuditRequest, options: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    from rsc_core.influence.lissa import LissaSettings, draw_samples, lissa

    hessian = _hessian(request)
    settings = LissaSettings(damp=options["damp"], scale=options["scale"],
                             depth=options["depth"], repeats=options["repeats"])
    generator = torch.Generator().manual_seed(options["seed"])
    samples = draw_samples(hessian.num_rows, settings, generator, hessian.device)
    scores = []
    for row in range(hessian.num_rows):  # one chain set per example: small sets only
        unit, squared = _unit(_gradients(hessian, row, row + 1, options["gradient"]))
        estimate, _ = lissa(hessian.hvp_rows_batched, unit[0], samples, settings)
        scores.append(squared.cpu() * (unit[0] * estimate).double().sum().cpu())
    return torch.cat(scores), {"lissa_depth": settings.depth,
                               "lissa_repeats": settings.repeats}
