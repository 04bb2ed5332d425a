"""Inverse Hessian-vector products (group influence's solvers) against an explicit Hessian.

A tiny MLP on a tiny dataset in float64, small enough for ``torch.func.hessian``. Stated
tolerances (relative L2 error against ``torch.linalg.solve``): CG and deterministic LiSSA
(every step's Hessian sample = the whole set) 1e-6; LiSSA with batch-1 samples, 150 chains,
0.1 (its Monte-Carlo error)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rsc_core.errors import DivergenceError
from rsc_plugins.removal.cg import conjugate_gradient
from rsc_plugins.removal.hessian import HessianError, LossHessian
from rsc_plugins.removal.lissa import LissaSettings, draw_samples, lissa

N = 12


@pytest.fixture(scope="module")
def problem():
    """A float64 LossHessian, its explicit Hessian H, eigenvalues and a right-hand side."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    images = torch.randn(N, 1, 2, 2, dtype=torch.float64)
    labels = torch.randint(0, 3, (N,))
    hessian = LossHessian(model, images, labels)
    explicit = torch.func.hessian(lambda flat: hessian.loss(flat, images, labels))(hessian.theta)
    eigenvalues = torch.linalg.eigvalsh(explicit)
    v = hessian.gradient_sum(torch.tensor([0, 3, 7]))
    return hessian, explicit, eigenvalues, v


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def full_samples(depth: int, repeats: int) -> torch.Tensor:
    """Every step of every chain samples the whole set: LiSSA becomes deterministic."""
    return torch.arange(N).expand(depth, repeats, N).clone()


def test_both_hvp_forms_equal_the_explicit_product(problem):
    hessian, explicit, _, v = problem
    rows = torch.arange(N)
    for mode in ("reverse-over-forward", "forward-over-reverse"):
        hessian.mode = mode
        assert torch.allclose(hessian.hvp_rows(v, rows), explicit @ v, atol=1e-12)
        assert torch.allclose(hessian.hvp_mean(v), explicit @ v, atol=1e-12)
    hessian.mode = "forward-over-reverse"
    hessian.chunk = 5  # chunked mean over uneven chunks
    assert torch.allclose(hessian.hvp_mean(v), explicit @ v, atol=1e-12)
    hessian.chunk = 4096


def test_gradient_sum_is_the_sum_of_per_example_gradients(problem):
    hessian, _, _, v = problem
    parts = sum(hessian.gradient_sum(torch.tensor([i])) for i in (0, 3, 7))
    assert torch.allclose(v, parts, atol=1e-12)
    # and it is the gradient of the flat-parameter loss (``loss``, the function the HVPs
    # differentiate), computed here independently through torch.func, in small chunks too
    rows = torch.tensor([0, 3, 7])
    images, labels = hessian.images[rows], hessian.labels[rows]
    expected = torch.func.grad(lambda flat: hessian.loss(flat, images, labels, "sum"))(
        hessian.theta)
    assert torch.allclose(v, expected, atol=1e-12)
    hessian.chunk = 2
    assert torch.allclose(hessian.gradient_sum(rows), expected, atol=1e-12)


def test_cg_matches_the_damped_solve(problem):
    hessian, explicit, eigenvalues, v = problem
    damp = max(0.0, -eigenvalues.min().item()) + 0.05
    exact = torch.linalg.solve(explicit + damp * torch.eye(len(v), dtype=v.dtype), v)
    x, facts = conjugate_gradient(hessian.hvp_mean, v, damp, tol=1e-12, max_iter=500)
    assert facts["cg_converged"]
    assert relative_error(x, exact) < 1e-6


def test_cg_refuses_negative_curvature():
    matrix = torch.diag(torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64))
    with pytest.raises(DivergenceError, match="non-positive curvature.*iteration 1.*--damp"):
        conjugate_gradient(lambda p: matrix @ p, torch.tensor([0.0, 1.0, 0.0],
                                                               dtype=torch.float64), 0.0)


def test_lissa_correct_mode_matches_the_damped_solve(problem):
    hessian, explicit, eigenvalues, v = problem
    damp = max(0.0, -eigenvalues.min().item()) + 1.0
    scale = eigenvalues.max().item() + damp
    settings = LissaSettings(damp=damp, scale=scale, depth=100, repeats=2, batch=N)
    estimate, facts = lissa(hessian.hvp_rows_batched, v, full_samples(100, 2), settings)
    exact = torch.linalg.solve(explicit + damp * torch.eye(len(v), dtype=v.dtype), v)
    assert relative_error(estimate, exact) < 1e-6
    assert facts["last_step_relative_change"] < 1e-8


def test_lissa_paper_mode_is_scale_times_the_solve_damped_by_damp_times_scale(problem):
    """PROTOCOL 7: without the final division, h* = scale (H + scale damp I)^-1 v."""
    hessian, explicit, eigenvalues, v = problem
    shift = max(0.0, -eigenvalues.min().item()) + 1.0  # damp * scale
    scale = eigenvalues.max().item() + shift
    damp = shift / scale
    settings = LissaSettings(damp=damp, scale=scale, depth=100, repeats=1, batch=N,
                             compat="paper")
    estimate, _ = lissa(hessian.hvp_rows_batched, v, full_samples(100, 1), settings)
    eye = torch.eye(len(v), dtype=v.dtype)
    exact = scale * torch.linalg.solve(explicit + damp * scale * eye, v)
    assert relative_error(estimate, exact) < 1e-6
    # and the correct mode with the same numbers is exactly that divided by scale
    correct = LissaSettings(damp=damp * scale, scale=scale, depth=100, repeats=1, batch=N)
    estimate_correct, _ = lissa(hessian.hvp_rows_batched, v, full_samples(100, 1), correct)
    assert relative_error(estimate_correct * scale, exact) < 1e-6


def test_stochastic_lissa_with_batch_one_samples_approaches_the_solve(problem):
    hessian, explicit, eigenvalues, v = problem
    damp = max(0.0, -eigenvalues.min().item()) + 0.5
    # one-example Hessians are larger than the mean: scale above the largest of them
    singles = [torch.linalg.eigvalsh(torch.func.hessian(
        lambda f: hessian.loss(f, hessian.images[i:i + 1], hessian.labels[i:i + 1]))(
        hessian.theta)) for i in range(N)]
    scale = 2 * max(s.abs().max().item() for s in singles)
    settings = LissaSettings(damp=damp, scale=scale, depth=120, repeats=150, batch=1)
    samples = draw_samples(N, settings, torch.Generator().manual_seed(1), hessian.device)
    estimate, _ = lissa(hessian.hvp_rows_batched, v, samples, settings)
    exact = torch.linalg.solve(explicit + damp * torch.eye(len(v), dtype=v.dtype), v)
    assert relative_error(estimate, exact) < 0.1


def test_summed_gradient_ihvp_is_the_sum_of_per_example_ihvps(problem):
    hessian, _, eigenvalues, _ = problem
    settings = LissaSettings(damp=0.5, scale=50.0, depth=25, repeats=4, batch=1)
    samples = draw_samples(N, settings, torch.Generator().manual_seed(3), hessian.device)
    forget = (0, 3, 7)
    whole, _ = lissa(hessian.hvp_rows_batched, hessian.gradient_sum(torch.tensor(forget)),
                     samples, settings)
    parts = sum(lissa(hessian.hvp_rows_batched, hessian.gradient_sum(torch.tensor([i])),
                      samples, settings)[0] for i in forget)
    assert relative_error(whole, parts) < 1e-10


def test_vectorised_chains_equal_sequential_chains(problem):
    hessian, _, _, v = problem
    settings = LissaSettings(damp=0.5, scale=50.0, depth=20, repeats=3, batch=2)
    samples = draw_samples(N, settings, torch.Generator().manual_seed(4), hessian.device)
    together, _ = lissa(hessian.hvp_rows_batched, v, samples, settings)
    apart, _ = lissa(hessian.hvp_rows_batched, v, samples,
                     LissaSettings(**{**settings.__dict__, "vectorise": False}))
    assert relative_error(together, apart) < 1e-12


def test_chains_draw_their_own_samples():
    settings = LissaSettings(damp=0.01, scale=25.0, depth=50, repeats=3, batch=1)
    samples = draw_samples(1000, settings, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert samples.shape == (50, 3, 1)
    assert not torch.equal(samples[:, 0], samples[:, 1])


def matrix_hvp(matrix: torch.Tensor):
    """A ``BatchedHvp`` for a fixed Hessian ``matrix`` (every sample the same): plus + alpha H h."""
    def hvp(h, rows, out=None, alpha=1.0, plus=None):
        product = alpha * (h @ matrix)
        return product if plus is None else product + plus
    return hvp


def test_divergence_guard_names_the_step_and_suggests_scale_or_damp():
    """Curvature 10 with scale 2: each step multiplies h by (1 - c - 5), so |h| explodes."""
    matrix = torch.diag(torch.tensor([10.0, 0.1], dtype=torch.float64))
    settings = LissaSettings(damp=0.01, scale=2.0, depth=100, repeats=2, batch=1)
    samples = torch.zeros(100, 2, 1, dtype=torch.long)
    with pytest.raises(DivergenceError) as info:
        lissa(matrix_hvp(matrix), torch.tensor([1.0, 1.0], dtype=torch.float64), samples,
              settings)
    message = str(info.value)
    assert "\n" not in message
    assert "diverged by step" in message and "--scale" in message and "--damp" in message


def test_divergence_guard_catches_a_nan_product():
    settings = LissaSettings(damp=0.01, scale=2.0, depth=10, repeats=3, batch=1)

    def poisoned(h, rows, out=None, alpha=1.0, plus=None):
        product = alpha * h + plus
        product[1, 0] = float("nan")  # chain 2 only
        return product

    with pytest.raises(DivergenceError, match="diverged by step 10 of 10 \\(chain 2\\)"):
        lissa(poisoned, torch.ones(4), torch.zeros(10, 3, 1, dtype=torch.long), settings)


def test_architecture_torch_func_cannot_differentiate_is_one_line():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum().item() > 1e9:  # data-dependent control flow: vmap cannot batch it
                return self.fc(x.flatten(1)) * 2
            return self.fc(x.flatten(1))

    hessian = LossHessian(DataDependent(), torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(HessianError, match="cannot compute Hessian-vector products of "
                                           "DataDependent.*incremental-retraining"):
        hessian.check()


@pytest.mark.parametrize("batch", [1, 3])
def test_hand_written_mlp_products_equal_torch_func(batch):
    """rsc's ReLU MLPs take the hand-written path (mlp_hvp.py); it must give the generic
    torch.func products exactly (float64 rounding), batched over chains and over a mean."""
    import rsc_core

    torch.manual_seed(1)
    model = rsc_core.create("architectures", "LargeMLP").build((1, 4, 4), 5).double()
    images = torch.rand(30, 1, 4, 4, dtype=torch.float64)
    labels = torch.randint(0, 5, (30,))
    fast = LossHessian(model, images, labels)
    generic = LossHessian(model, images, labels, specialised=False)
    assert fast.mlp is not None and generic.mlp is None
    vectors = torch.randn(4, fast.theta.numel(), dtype=torch.float64)
    rows = torch.randint(0, 30, (4, batch))
    expected = generic.hvp_rows_batched(vectors, rows)
    assert torch.allclose(fast.hvp_rows_batched(vectors, rows), expected, atol=1e-12)
    plus = torch.randn(fast.theta.numel(), dtype=torch.float64)
    for hessian in (fast, generic):  # the affine form LiSSA's step uses: plus + alpha H v
        buffer = torch.empty_like(vectors)
        affine = hessian.hvp_rows_batched(vectors, rows, out=buffer, alpha=-0.3, plus=plus)
        assert affine.data_ptr() == buffer.data_ptr()
        assert torch.allclose(affine, plus - 0.3 * expected, atol=1e-12)
        assert torch.allclose(hessian.hvp_rows_batched(vectors, rows, alpha=2.0),
                              2 * expected, atol=1e-12)
    fast.chunk = generic.chunk = 7
    assert torch.allclose(fast.hvp_mean(vectors[0]), generic.hvp_mean(vectors[0]), atol=1e-12)


def test_models_outside_the_mlp_family_take_the_generic_path(problem):
    hessian = problem[0]
    assert hessian.mlp is None  # an nn.Sequential: torch.func products


def test_tiny_gradients_neither_underflow_nor_trip_the_divergence_guard():
    """A memorised example's float32 gradient can be ~1e-23 per entry, whose squared norm
    underflows float32 to 0: the guard's bound (proportional to |v|) was then 0 and the first
    step "diverged" (seen on a real run). The bound is a float64 norm and the guard checks
    the iterate's largest entry (no squares), and LiSSA stays linear in v."""
    matrix = torch.diag(torch.tensor([1.0, 0.5]))
    settings = LissaSettings(damp=0.01, scale=2.0, depth=50, repeats=2, batch=1)
    samples = torch.zeros(50, 2, 1, dtype=torch.long)
    ones = torch.tensor([1.0, 1.0])
    assert (ones * 1e-23).norm().item() == 0.0  # the float32 underflow itself

    hvp = matrix_hvp(matrix)
    reference, _ = lissa(hvp, ones, samples, settings)
    estimate, facts = lissa(hvp, ones * 1e-23, samples, settings)
    assert facts["rhs_norm"] == pytest.approx(2 ** 0.5 * 1e-23)
    torch.testing.assert_close(estimate, reference * 1e-23, rtol=1e-5, atol=0)
