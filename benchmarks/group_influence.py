"""Group influence cost (issues 8 and 20, "Performance"): rsc's LiSSA against the reference's
procedure, and CG, on MNIST with a trained LargeMLP.

(a) rsc: ONE LiSSA estimate for the summed gradient of S (``--compat correct`` and
    ``paper``), r chains in one pass, Hessian samples of batch 1 picked by index from the
    training tensor; HVPs by rsc's hand-written MLP products (what rsc uses for LargeMLP)
    and, for comparison, by torch.func under vmap in both forms (what every other
    architecture gets). Timed on ``--steps`` steps and extrapolated to the reference depth;
    the chains-one-after-another form is timed too. Also rsc's ``--compat reference``
    emulation (one chain per example of S, two products and a gradient per step, constant
    cost per step), timed on ``--steps`` steps and extrapolated to the depth.
(b) the reference's procedure, one LiSSA estimate PER example of S and r chains each, every
    step drawing one example through a shuffled DataLoader and computing the HVP with
    autograd's double backward on per-parameter tensors, in two forms:
    (b1) ``detached``: the iterate detached each step (what the reference meant): constant
         cost per step, timed on ``--ref-steps`` steps and extrapolated to |S| x r x depth;
    (b2) ``as run``: v built with create_graph=True and the iterate never detached, as the
         reference code does, so each product back-propagates through a graph one node
         longer per step and the step cost grows with the step index t. Timed over
         ``--ref-graph-steps`` steps of one chain; the per-step seconds are fitted by a + b t
         (least squares) and the total is EXTRAPOLATED by that fit: each chain costs
         a D + b D (D - 1) / 2 for depth D, times |S| x r chains. The output says so, with
         the fit, its R^2 and a quadratic fit's total for comparison.
(c) CG on (H + damp I) x = v to a 1e-3 relative residual with exact HVPs over
    ``--cg-rows`` training rows (one full-set HVP is timed too, for the full-set estimate).
(d) with ``--ekfac`` (or ``--ekfac-only``, which skips (a)-(c)): EK-FAC through Kronfluence
    (``rsc[influence]``) fitted on ``--ekfac-fit-samples`` rows, timed, and its update
    compared with CG's on the same right-hand side and damping: cosine, norm ratio, and the
    same for the curvature parts v - damp x (which the damping alone cannot make agree).

Run with OMP_NUM_THREADS=1 (one core of a shared machine); prints one JSON document.
  OMP_NUM_THREADS=1 python benchmarks/group_influence.py --run RUN --data-dir DATA
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from rsc_core.errors import DivergenceError
from rsc_core.runs.folder import Run
from rsc_core.data.planting import build_spurious_dataset
from rsc_core.influence.conjugate_gradient import conjugate_gradient
from rsc_plugins.removal.group_influence import REFERENCE_SCALE, reference_depth
from rsc_core.influence.hessian import LossHessian
from rsc_core.influence.lissa import LissaSettings, draw_samples, lissa
from rsc_plugins.removal.reference_lissa import (ReferenceSettings, draw_reference_samples,
                                                 reference_ihvp_sum)

REFERENCE_STEP_SECONDS = 0.033  # PROTOCOL.md section 7, 2-core CPU
hessian_mlp = None  # the model's layers for the hand-written products (set in main)


def time_rsc(hessian: LossHessian, forget: np.ndarray, scale: float, steps: int,
             repeats: int, vectorise: bool, mode: str) -> dict[str, Any]:
    """``mode``: "mlp" (the hand-written products rsc uses for its MLPs) or a torch.func
    form (the path every other model takes)."""
    hessian.mlp = hessian_mlp if mode == "mlp" else None
    hessian.mode = mode if mode != "mlp" else "forward-over-reverse"
    started = time.perf_counter()
    v = hessian.gradient_sum(torch.as_tensor(forget))
    gradient_seconds = time.perf_counter() - started
    settings = LissaSettings(damp=0.01, scale=scale, depth=steps, repeats=repeats,
                             compat="paper", vectorise=vectorise, max_norm_factor=1e30)
    samples = draw_samples(hessian.num_rows, settings, torch.Generator().manual_seed(0),
                           hessian.device)
    lissa(hessian.hvp_rows_batched, v, samples[:2], settings)  # warm-up (jvp rules built)
    started = time.perf_counter()
    lissa(hessian.hvp_rows_batched, v, samples, settings)
    per_step = (time.perf_counter() - started) / steps
    depth = reference_depth(len(forget))
    return {"forget_size": len(forget), "mode": "rsc one solve (--compat correct/paper)",
            "vectorised": vectorise, "hvp": mode, "repeats": repeats,
            "measured_steps": steps, "seconds_per_step_all_chains": per_step,
            "seconds_per_chain_step": per_step / repeats, "gradient_seconds": gradient_seconds,
            "depth": depth, "estimated_total_seconds": gradient_seconds + per_step * depth,
            "rhs_norm": v.norm().item()}


def time_reference(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   scale: float, steps: int, keep_graph: bool = False) -> list[float]:
    """Seconds of each of ``steps`` LiSSA steps of the reference's procedure (one chain for
    one example). ``keep_graph``: v keeps its graph and the iterate is never detached, as in
    the reference code (the step cost then grows with the step index); otherwise both are
    detached (what the reference meant; constant cost per step)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    loader = DataLoader(TensorDataset(images, labels), batch_size=1, shuffle=True)
    z_loss = F.cross_entropy(model(images[:1]), labels[:1])
    v = list(torch.autograd.grad(z_loss, params, create_graph=keep_graph))
    h = [x.detach().clone() for x in v]
    v = v if keep_graph else [x.detach() for x in v]
    damp = 0.01
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        x, y = next(iter(loader))  # a fresh shuffle per step, its first example, as there
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params, retain_graph=True, create_graph=True)
        dot = sum((g * e).sum() for g, e in zip(grads, h))
        hv = [g.detach() for g in torch.autograd.grad(dot, params, create_graph=True)]
        h = [a + (1 - damp) * b - c / scale for a, b, c in zip(v, h, hv)]
        seconds.append(time.perf_counter() - started)
    return seconds


def fit_step_cost(seconds: list[float], skip: int = 0, degree: int = 1) -> list[float]:
    """Least-squares polynomial coefficients (constant first) of the step seconds against
    the step index t, over steps ``skip``.. (the first ones are warm-up): [a, b] for a + b t."""
    t = np.arange(skip, len(seconds), dtype=np.float64)
    return [float(c) for c in np.polynomial.polynomial.polyfit(t, seconds[skip:], degree)]


def r_squared(seconds: list[float], skip: int, coefficients: list[float]) -> float:
    """How much of the variation of the step seconds (steps ``skip``..) the fit explains."""
    t = np.arange(skip, len(seconds), dtype=np.float64)
    y = np.asarray(seconds[skip:], dtype=np.float64)
    residual = y - np.polynomial.polynomial.polyval(t, coefficients)
    return float(1 - residual.dot(residual) / max(((y - y.mean()) ** 2).sum(), 1e-300))


def chain_seconds(coefficients: list[float], depth: int) -> float:
    """sum_{t < depth} of the fitted polynomial: one chain's cost for ``depth`` steps
    (a D + b D (D - 1) / 2 for the linear fit)."""
    t = np.arange(depth, dtype=np.float64)
    return float(np.polynomial.polynomial.polyval(t, coefficients).sum())


def reference_as_run(seconds: list[float], skip: int) -> dict[str, Any]:
    """The graph-kept procedure's measured step costs, summarised, with both fits."""
    linear, quadratic = fit_step_cost(seconds, skip, 1), fit_step_cost(seconds, skip, 2)
    near = {str(t): float(np.median(seconds[max(t - 5, 0):t + 5]))
            for t in (10, 50, 100, 150, 250, 350, 450) if t + 5 <= len(seconds)}
    return {"measured_steps": len(seconds), "fit_skips_first_steps": skip,
            "mean_seconds_per_step": float(np.mean(seconds)),
            "median_seconds_per_step_near_t": near,
            "linear_fit": {"a_seconds": linear[0], "b_seconds_per_step_index": linear[1],
                           "r_squared": r_squared(seconds, skip, linear)},
            "quadratic_fit": {"coefficients": quadratic,
                              "r_squared": r_squared(seconds, skip, quadratic)},
            "extrapolation": "total = |S| x r x sum_{t < depth} (a + b t), by the linear fit "
                             "of the measured step seconds (quadratic fit's total also given)"}


def time_rsc_reference(hessian: LossHessian, forget: np.ndarray, scale: float, steps: int,
                       repeats: int) -> dict[str, Any]:
    """rsc's --compat reference emulation: |S| chains together, constant cost per step."""
    hessian.mlp, hessian.mode = hessian_mlp, "forward-over-reverse"
    depth = reference_depth(len(forget))
    rows = torch.as_tensor(forget)
    settings = ReferenceSettings(damp=0.01, scale=scale, depth=steps, repeats=repeats)
    generator = torch.Generator().manual_seed(0)
    samples = draw_reference_samples(hessian.num_rows, steps, len(forget), generator,
                                     hessian.device)
    reference_ihvp_sum(hessian, rows, samples[:2], ReferenceSettings(0.01, scale, 2, repeats))
    started = time.perf_counter()
    reference_ihvp_sum(hessian, rows, samples, settings)
    per_step = (time.perf_counter() - started) / steps
    return {"forget_size": len(forget), "mode": "rsc --compat reference", "depth": depth,
            "measured_steps": steps, "seconds_per_step_all_examples": per_step,
            "seconds_per_chain_step": per_step / len(forget),
            "estimated_total_seconds": per_step * depth}


def time_cg(hessian: LossHessian, rows: int, tol: float, max_iter: int,
            damp: float) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    rhs_rows = torch.randperm(hessian.num_rows, generator=generator)[:100]
    v = hessian.gradient_sum(rhs_rows)
    sample = None
    if rows < hessian.num_rows:
        sample = torch.randperm(hessian.num_rows, generator=generator)[:rows].sort().values
    started = time.perf_counter()
    hessian.hvp_mean(v)
    full_hvp = time.perf_counter() - started
    started = time.perf_counter()
    result: dict[str, Any] = {"rows": rows, "tol": tol, "damp": damp,
                              "full_set_hvp_seconds": full_hvp}
    try:
        _, facts = conjugate_gradient(lambda p: hessian.hvp_mean(p, sample), v, damp, tol=tol,
                                      max_iter=max_iter)
        result.update(facts)
        result["estimated_full_set_seconds"] = facts["cg_iterations"] * full_hvp
    except Exception as exc:  # negative curvature: record it, it is a result too
        result["error"] = str(exc)
    result["seconds"] = time.perf_counter() - started
    return result


def time_ekfac(hessian: LossHessian, damp: float, fit_samples: list[int], cg_rows: int,
               tol: float, max_iter: int) -> dict[str, Any]:
    """(d): EK-FAC against CG on v = the summed gradient of 100 random training rows."""
    from rsc_core.influence.ekfac import EkfacSettings, ekfac_ihvp

    generator = torch.Generator().manual_seed(0)
    v = hessian.gradient_sum(torch.randperm(hessian.num_rows, generator=generator)[:100])
    v = v / v.norm()
    sample = None
    if cg_rows < hessian.num_rows:
        sample = torch.randperm(hessian.num_rows, generator=generator)[:cg_rows].sort().values
    started = time.perf_counter()
    result: dict[str, Any] = {"damp": damp, "cg_rows": cg_rows, "fits": []}
    try:
        cg, facts = conjugate_gradient(lambda p: hessian.hvp_mean(p, sample), v, damp, tol=tol,
                                       max_iter=max_iter)
        result.update(facts, damping_only_cosine=_cosine(v, cg),
                      damping_only_norm_ratio=(1 / damp) / cg.norm().item())
    except DivergenceError as exc:  # negative curvature: a result too; EK-FAC is still timed
        cg, result["cg_error"] = None, str(exc)
    result["cg_seconds"] = time.perf_counter() - started
    for rows in fit_samples:
        started = time.perf_counter()
        solved, ek_facts = ekfac_ihvp(hessian.model, hessian.images, hessian.labels,
                                      hessian.unflatten(v), EkfacSettings(damp, rows),
                                      hessian.device)
        x = torch.cat([solved[name].reshape(-1) for name in hessian.names])
        seconds = time.perf_counter() - started
        result["fits"].append({**ek_facts, "seconds": seconds})
        if cg is not None:
            result["fits"][-1].update(
                cosine=_cosine(x, cg), norm_ratio=(x.norm() / cg.norm()).item(),
                curvature_cosine=_cosine(v - damp * x, v - damp * cg),
                curvature_norm_ratio=((v - damp * x).norm() / (v - damp * cg).norm()).item())
        print(json.dumps(result["fits"][-1]), flush=True)
    return result


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() @ b.double() / (a.double().norm() * b.double().norm())).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished MNIST LargeMLP run folder")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=100, help="rsc LiSSA steps timed")
    parser.add_argument("--sequential-steps", type=int, default=20)
    parser.add_argument("--reference-steps", type=int, default=20,
                        help="steps of rsc's --compat reference emulation timed")
    parser.add_argument("--ref-steps", type=int, default=300,
                        help="(b1) steps of the detached reference procedure timed")
    parser.add_argument("--ref-graph-steps", type=int, default=200,
                        help="(b2) steps of the reference procedure as run (graph kept) "
                             "timed and fitted; the cost grows with this quadratically")
    parser.add_argument("--ref-graph-skip", type=int, default=5,
                        help="(b2) first steps left out of the fit (warm-up)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cg-rows", type=int, default=10000)
    parser.add_argument("--cg-max-iter", type=int, default=300)
    parser.add_argument("--cg-damp", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--skip-cg", action="store_true")
    parser.add_argument("--skip-reference", action="store_true",
                        help="skip (b): (b1) then uses the reference code's 33 ms per step "
                             "and (b2) is not reported")
    parser.add_argument("--ekfac", action="store_true", help="(d): EK-FAC against CG")
    parser.add_argument("--ekfac-only", action="store_true", help="(d) only")
    parser.add_argument("--ekfac-damp", type=float, default=0.1)
    parser.add_argument("--ekfac-fit-samples", type=int, nargs="+", default=[1000, 5000],
                        help="rows the factors are fitted on, one fit each (0: all)")
    args = parser.parse_args()

    source = Run.open(args.run)
    data = build_spurious_dataset(source.spec, args.data_dir)
    scale = REFERENCE_SCALE[source.spec.dataset]
    hessian = LossHessian(source.load_model(), data.train.images, data.train.labels)
    global hessian_mlp
    hessian_mlp = hessian.mlp
    spurious = np.asarray(source.metrics["spurious_indices"])
    hundred = np.random.RandomState(0).choice(len(data.train), 100, replace=False)
    report: dict[str, Any] = {
        "run": source.name, "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "load_average": os.getloadavg(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "scale": scale}
    if args.ekfac_only:
        report["ekfac"] = time_ekfac(hessian, args.ekfac_damp, args.ekfac_fit_samples,
                                     args.cg_rows, 1e-3, args.cg_max_iter)
        print(json.dumps(report, indent=2))
        return
    report["reference_procedure"] = measure_reference(source, data, scale, args)
    print(json.dumps(report["reference_procedure"]), flush=True)
    report["rsc"] = []
    for forget in (spurious, hundred):
        rows = [time_rsc(hessian, forget, scale, steps, args.repeats, vectorise, mode)
                for vectorise, steps, mode in (
                    (True, args.steps, "mlp"), (True, args.steps, "forward-over-reverse"),
                    (True, args.steps, "reverse-over-forward"),
                    (False, args.sequential_steps, "mlp"),
                    (False, args.sequential_steps, "forward-over-reverse"))]
        rows.append(time_rsc_reference(hessian, forget, scale, args.reference_steps,
                                       args.repeats))
        for row in rows:
            row.update(reference_totals(report["reference_procedure"], len(forget),
                                        args.repeats, row["depth"],
                                        row["estimated_total_seconds"]))
            report["rsc"].append(row)
            print(json.dumps(row), flush=True)
    if not args.skip_cg:
        hessian.mode, hessian.mlp = "forward-over-reverse", hessian_mlp
        report["cg"] = []
        for damp in args.cg_damp:
            report["cg"].append(time_cg(hessian, args.cg_rows, 1e-3, args.cg_max_iter, damp))
            print(json.dumps(report["cg"][-1]), flush=True)
    if args.ekfac:
        report["ekfac"] = time_ekfac(hessian, args.ekfac_damp, args.ekfac_fit_samples,
                                     args.cg_rows, 1e-3, args.cg_max_iter)
    print(json.dumps(report, indent=2))


def measure_reference(source: Run, data: Any, scale: float,
                      args: argparse.Namespace) -> dict[str, Any]:
    """(b1) the detached procedure's mean step and (b2) the graph-kept one's fitted steps."""
    if args.skip_reference:
        return {"detached": {"seconds_per_step": REFERENCE_STEP_SECONDS,
                             "source": "the reference code's 33 ms (PROTOCOL 7)"},
                "as_run": None, "reference_code_seconds_per_step": REFERENCE_STEP_SECONDS}
    images, labels = data.train.images, data.train.labels
    detached = time_reference(source.load_model(), images, labels, scale, args.ref_steps)
    kept = time_reference(source.load_model(), images, labels, scale, args.ref_graph_steps,
                          keep_graph=True)
    return {"detached": {"measured_steps": args.ref_steps,
                         "seconds_per_step": float(np.mean(detached))},
            "as_run": reference_as_run(kept, min(args.ref_graph_skip, len(kept) - 3)),
            "reference_code_seconds_per_step": REFERENCE_STEP_SECONDS}


def reference_totals(reference: dict[str, Any], forget_size: int, repeats: int, depth: int,
                     rsc_seconds: float) -> dict[str, Any]:
    """The reference's total for |S| x r chains of ``depth`` steps, detached and as run
    (extrapolated by the fitted step cost), and rsc's speed-up against each."""
    chains = forget_size * repeats
    detached = chains * depth * reference["detached"]["seconds_per_step"]
    totals: dict[str, Any] = {
        "reference_detached_total_seconds": detached,
        "speedup_vs_detached": detached / rsc_seconds,
        "speedup_vs_33ms": chains * depth * REFERENCE_STEP_SECONDS / rsc_seconds}
    as_run = reference["as_run"]
    if as_run is not None:
        fit = as_run["linear_fit"]
        linear = chains * chain_seconds([fit["a_seconds"], fit["b_seconds_per_step_index"]],
                                        depth)
        totals.update({
            "reference_as_run_total_seconds": linear,
            "reference_as_run_total_seconds_quadratic_fit":
                chains * chain_seconds(as_run["quadratic_fit"]["coefficients"], depth),
            "reference_as_run_total_is": "extrapolated by the linear fit of the step cost",
            "speedup_vs_as_run": linear / rsc_seconds})
    return totals


if __name__ == "__main__":
    main()
