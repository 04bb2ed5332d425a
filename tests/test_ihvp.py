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
from rsc_core.influence.conjugate_gradient import conjugate_gradient
from rsc_core.influence.hessian import HessianError, LossHessian
from rsc_core.influence.lissa import LissaSettings, draw_samples, lissa

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


# --------------------------------------------------------------------------- EK-FAC (Kronfluence)
def flat(pieces: dict[str, torch.Tensor], hessian: LossHessian) -> torch.Tensor:
    return torch.cat([pieces[name].reshape(-1) for name in hessian.names])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() @ b.double() / (a.double().norm() * b.double().norm())).item()


def test_ekfac_is_near_exact_where_the_gauss_newton_matrix_is_kronecker():
    """A zero-initialised softmax regression predicts the uniform distribution for every
    input, so its Hessian (= its Gauss-Newton matrix: the model is linear) is exactly
    E[a a^T] (x) (diag(1/C) - 1/C^2): Kronecker, which EK-FAC represents exactly. Left: the
    Monte-Carlo error of the sampled labels (2000 rows). At damp 1e-4 the damping hardly
    matters, so a wrong scale, sign, damping or weight/bias layout would show."""
    pytest.importorskip("kronfluence")
    from rsc_core.influence.ekfac import EkfacSettings, ekfac_ihvp

    torch.manual_seed(0)
    images, labels = torch.randn(2000, 1, 2, 4) + 0.5, torch.randint(0, 3, (2000,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    hessian = LossHessian(model, images, labels)
    explicit = torch.func.hessian(lambda f: hessian.loss(f, images, labels))(hessian.theta)
    v = hessian.gradient_sum(torch.arange(5))
    damp = 1e-4
    exact = torch.linalg.solve(explicit.double() + damp * torch.eye(len(v), dtype=torch.float64),
                               v.double())
    solved, facts = ekfac_ihvp(model, images, labels, hessian.unflatten(v),
                               EkfacSettings(damp=damp), torch.device("cpu"))
    assert relative_error(flat(solved, hessian).double(), exact) < 0.1
    assert facts["ekfac_fit_rows"] == 2000 and facts["ekfac_layers"] == 1


@pytest.mark.filterwarnings("ignore::FutureWarning")  # Kronfluence's use of torch.cuda.amp
def test_ekfac_preconditioning_is_kronfluences_own():
    """rsc applies the fitted factors itself; Kronfluence's pairwise scores apply them its
    own way (q^T (G + damp I)^-1 g for a query gradient q and a training gradient g). The two
    must agree, on Linear and Conv2d layers, with and without bias."""
    pytest.importorskip("kronfluence")
    import copy
    import logging
    import tempfile

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    from rsc_core.influence.ekfac import _classification_task, precondition

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 2, bias=False),
                          nn.Flatten(), nn.Linear(18, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    images, labels = torch.randn(64, 1, 6, 6), torch.randint(0, 3, (64,))
    data = torch.utils.data.TensorDataset(images, labels)
    task = _classification_task(0)
    with tempfile.TemporaryDirectory() as folder:
        analyzer = Analyzer("t", prepare_model(copy.deepcopy(model), task), task, cpu=True,
                            log_level=logging.WARNING, disable_tqdm=True, output_dir=folder)
        analyzer.fit_all_factors("f", data, per_device_batch_size=16,
                                 factor_args=FactorArguments(covariance_max_examples=None,
                                                             lambda_max_examples=None))
        factors = analyzer.load_all_factors("f")
        analyzer.compute_pairwise_scores(
            "s", "f", torch.utils.data.Subset(data, range(4)),
            torch.utils.data.Subset(data, range(10, 15)), per_device_query_batch_size=4,
            per_device_train_batch_size=5,
            score_args=ScoreArguments(damping_factor=0.01, aggregate_query_gradients=True))
        scores = analyzer.load_pairwise_scores("s")["all_modules"][0]
    hessian = LossHessian(model, images, labels)
    query = hessian.gradient_sum(torch.arange(4))
    preconditioned = flat(precondition(hessian.unflatten(query), model, factors, 0.01), hessian)
    ours = torch.stack([preconditioned @ hessian.gradient_sum(torch.tensor([i]))
                        for i in range(10, 15)])
    torch.testing.assert_close(ours, scores, rtol=1e-3, atol=1e-4 * scores.abs().max().item())


def small_trained(arch: str, side: int, n: int = 200) -> tuple[nn.Module, torch.Tensor,
                                                                torch.Tensor]:
    """An rsc architecture after one epoch of Adam on n noisy class-prototype images."""
    import rsc_core

    generator = torch.Generator().manual_seed(0)
    prototypes = torch.rand(10, 1, side, side, generator=generator)
    labels = torch.arange(n) % 10
    images = 0.3 * prototypes[labels] + 0.7 * torch.rand(n, 1, side, side, generator=generator)
    torch.manual_seed(0)
    model = rsc_core.create("architectures", arch).build((1, side, side), 10)
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    for rows in torch.randperm(n).split(32):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images[rows]), labels[rows]).backward()
        optimiser.step()
    return model.eval(), images, labels


@pytest.mark.slow
@pytest.mark.parametrize("arch, side", [("LargeMLP", 8), ("CNN002", 16)])
def test_ekfac_update_agrees_with_cg(arch, side):
    """Against CG's (H + damp I)^-1 v on the same small trained model. damp 0.5 is the
    smallest of {0.3, 0.5, 1} at which both agree closely (measured: cosine 0.98-0.99,
    norm ratio 0.99-1.12); CG converges there. The curvature part v - damp x (= H x for
    CG's x) is compared too, because the damping alone would already make the updates
    look alike: a factor N in Lambda (v / damp) or a layer-layout error shows there."""
    pytest.importorskip("kronfluence")
    from rsc_core.influence.ekfac import EkfacSettings, ekfac_ihvp

    model, images, labels = small_trained(arch, side)
    hessian = LossHessian(model, images, labels)
    v = hessian.gradient_sum(torch.arange(5))
    v = v / v.norm()
    damp = 0.5
    cg, facts = conjugate_gradient(hessian.hvp_mean, v, damp, tol=1e-4, max_iter=200)
    assert facts["cg_converged"]
    solved, _ = ekfac_ihvp(model, images, labels, hessian.unflatten(v),
                           EkfacSettings(damp=damp), torch.device("cpu"))
    ekfac = flat(solved, hessian)
    assert cosine(ekfac, cg) > 0.9
    assert 0.8 < (ekfac.norm() / cg.norm()).item() < 1.25
    assert (damp * cg.norm()).item() < 0.9  # not damping-dominated: H shrinks x by > 10%
    curvature_cg, curvature_ekfac = v - damp * cg, v - damp * ekfac
    assert cosine(curvature_ekfac, curvature_cg) > 0.5
    assert 0.4 < (curvature_ekfac.norm() / curvature_cg.norm()).item() < 2.5


def test_ekfac_paper_mode_is_scale_times_the_solve_damped_by_damp_times_scale():
    """--compat paper with --solver ekfac: scale (G + damp scale I)^-1 v, as for CG."""
    pytest.importorskip("kronfluence")
    from rsc_plugins.removal.group_influence import GroupInfluenceRemover

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    hessian = LossHessian(model, torch.randn(40, 1, 2, 2), torch.randint(0, 3, (40,)))
    v = hessian.gradient_sum(torch.arange(3))
    common = {"seed": 0, "fit_samples": 0, "fit_batch": 16}
    solve = GroupInfluenceRemover._ekfac
    paper, _ = solve(hessian, v, {**common, "compat": "paper", "damp": 0.01,
                                      "scale": 25.0}, torch.Generator(), False)
    correct, _ = solve(hessian, v, {**common, "compat": "correct", "damp": 0.25},
                       torch.Generator(), False)
    assert relative_error(paper, 25.0 * correct) < 1e-6
