"""Group influence cost (issue 8, "Performance"): rsc's LiSSA against a faithful
re-implementation of the reference's procedure, and CG, on MNIST with a trained LargeMLP.

(a) rsc: ONE LiSSA estimate for the summed gradient of S, r chains in one pass, Hessian
    samples of batch 1 picked by index from the training tensor; HVPs by rsc's hand-written
    MLP products (what rsc uses for LargeMLP) and, for comparison, by torch.func under vmap
    in both forms (what every other architecture gets). Timed on
    ``--steps`` steps and extrapolated to the reference depth (2000 for |S| < 100, else 1000);
    the chains-one-after-another form is timed too.
(b) the reference's procedure: one LiSSA estimate PER example of S, each step drawing one
    example through a shuffled DataLoader and computing the HVP with autograd's double
    backward, per-parameter tensors; timed on ``--ref-steps`` steps and extrapolated to
    |S| x r x depth steps.
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
from rsc_core.runs import Run
from rsc_core.spurious import build_spurious_dataset
from rsc_plugins.removal.cg import conjugate_gradient
from rsc_plugins.removal.group_influence import REFERENCE_SCALE, reference_depth
from rsc_plugins.removal.hessian import LossHessian
from rsc_plugins.removal.lissa import LissaSettings, draw_samples, lissa

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
                             compat="reference", vectorise=vectorise, max_norm_factor=1e30)
    samples = draw_samples(hessian.num_rows, settings, torch.Generator().manual_seed(0),
                           hessian.device)
    lissa(hessian.hvp_rows_batched, v, samples[:2], settings)  # warm-up (jvp rules built)
    started = time.perf_counter()
    lissa(hessian.hvp_rows_batched, v, samples, settings)
    per_step = (time.perf_counter() - started) / steps
    depth = reference_depth(len(forget))
    return {"forget_size": len(forget), "vectorised": vectorise, "hvp": mode, "repeats": repeats,
            "measured_steps": steps, "seconds_per_step_all_chains": per_step,
            "seconds_per_chain_step": per_step / repeats, "gradient_seconds": gradient_seconds,
            "depth": depth, "estimated_total_seconds": gradient_seconds + per_step * depth,
            "rhs_norm": v.norm().item()}


def time_reference(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   scale: float, steps: int) -> float:
    """Seconds per LiSSA step of the reference's procedure (one example's estimate)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    loader = DataLoader(TensorDataset(images, labels), batch_size=1, shuffle=True)
    z_loss = F.cross_entropy(model(images[:1]), labels[:1])
    v = [g.detach() for g in torch.autograd.grad(z_loss, params)]
    h = [x.clone() for x in v]
    damp = 0.01
    batches = iter(loader)
    started = time.perf_counter()
    for _ in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * e).sum() for g, e in zip(grads, h))
        hv = torch.autograd.grad(dot, params)
        h = [a + (1 - damp) * b - c / scale for a, b, c in zip(v, h, hv)]
    return (time.perf_counter() - started) / steps


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
    from rsc_plugins.removal.ekfac import EkfacSettings, ekfac_ihvp

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
    parser.add_argument("--ref-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cg-rows", type=int, default=10000)
    parser.add_argument("--cg-max-iter", type=int, default=300)
    parser.add_argument("--cg-damp", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--skip-cg", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
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
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "scale": scale}
    if args.ekfac_only:
        report["ekfac"] = time_ekfac(hessian, args.ekfac_damp, args.ekfac_fit_samples,
                                     args.cg_rows, 1e-3, args.cg_max_iter)
        print(json.dumps(report, indent=2))
        return
    reference_step = REFERENCE_STEP_SECONDS if args.skip_reference else time_reference(
        source.load_model(), data.train.images, data.train.labels, scale, args.ref_steps)
    print(json.dumps({"reference_procedure_seconds_per_step": reference_step}), flush=True)
    report["reference_procedure"] = {"measured_steps": args.ref_steps,
                                     "seconds_per_step": reference_step,
                                     "reference_code_seconds_per_step": REFERENCE_STEP_SECONDS}
    report["rsc"] = []
    for forget in (spurious, hundred):
        for vectorise, steps, mode in ((True, args.steps, "mlp"),
                                       (True, args.steps, "forward-over-reverse"),
                                       (True, args.steps, "reverse-over-forward"),
                                       (False, args.sequential_steps, "mlp"),
                                       (False, args.sequential_steps, "forward-over-reverse")):
            row = time_rsc(hessian, forget, scale, steps, args.repeats, vectorise, mode)
            total_ref = len(forget) * args.repeats * row["depth"] * reference_step
            row["reference_procedure_total_seconds"] = total_ref
            row["speedup"] = total_ref / row["estimated_total_seconds"]
            row["speedup_vs_33ms"] = (len(forget) * args.repeats * row["depth"]
                                      * REFERENCE_STEP_SECONDS / row["estimated_total_seconds"])
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


if __name__ == "__main__":
    main()
