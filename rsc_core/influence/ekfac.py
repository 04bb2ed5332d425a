"""EK-FAC inverse-Hessian-vector products through Kronfluence (``--solver ekfac``, the
optional extra ``rsc[influence]``).

Why a third solver: LiSSA and CG need many exact Hessian-vector products over the training
set for every removal, and on a trained network CG meets negative curvature at small damping.
EK-FAC (George et al. 2018; Grosse et al. 2023) replaces the Hessian of the mean training loss
by a positive semi-definite Gauss-Newton approximation that is block diagonal over layers and
Kronecker-factored within a layer, with its eigenvalues corrected from per-example gradients.
Its inverse is then a few small matrix products per layer, whatever the damping.

Kronfluence fits the factors (``Analyzer.fit_all_factors``: activation and pre-activation
gradient covariances A and S of each Linear and Conv2d layer, their eigenbases Q_A and Q_S,
and Lambda, the mean over training rows of (Q_S^T G_i Q_A)^2 with G_i a row's gradient under
a label SAMPLED from the model's softmax, i.e. the true Fisher = the Gauss-Newton matrix of
the cross entropy). rsc then preconditions the summed forget-set gradient itself, exactly as
Kronfluence preconditions a query gradient (``kronfluence.factor.config.Ekfac``):

    G -> Q_S [ (Q_S^T G Q_A) / (Lambda + damp) ] Q_A^T      per layer,

with G the layer's gradient as an out x (in [+1 for the bias]) matrix (a Conv2d weight
flattened over in_channels x kh x kw, as ``F.unfold`` orders patches). Kronfluence's
covariances and Lambda are divided by the number of rows, so they approximate the curvature
of the MEAN loss, the H the other solvers use; rsc's ``damp`` is therefore Kronfluence's
``damping_factor`` unchanged: the result approximates (H + damp I)^-1 v.

Only parameters of Linear and Conv2d layers are covered; a model with any other trainable
parameter (the ResNets' BatchNorm layers) is refused rather than left half-updated. The
factors are written to a temporary folder that is deleted afterwards."""
from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from rsc_core.errors import ConfigError, OptionalDependencyError

INSTALL_HINT = "pip install 'rsc[influence]'"
_FACTORS_NAME = "rsc"


@dataclass(frozen=True)
class EkfacSettings:
    """``damp``: added to every corrected eigenvalue (Kronfluence's damping_factor).
    ``fit_samples``: training rows the factors are fitted on (0: all). ``fit_batch``: rows per
    batch while fitting (memory only: Lambda needs per-row gradients). ``seed``: draws the
    row sample and the sampled labels."""

    damp: float
    fit_samples: int = 0
    fit_batch: int = 256
    seed: int = 0


def import_kronfluence() -> Any:
    """The kronfluence module, or one line naming the extra that installs it."""
    try:
        import kronfluence
        from kronfluence.analyzer import Analyzer, prepare_model  # noqa: F401
        from kronfluence.arguments import FactorArguments  # noqa: F401
    except ImportError:
        raise OptionalDependencyError(
            f"--solver ekfac needs Kronfluence, which is not installed: {INSTALL_HINT}") from None
    return kronfluence


def unsupported_layers(model: nn.Module) -> list[str]:
    """The types of ``model``'s modules with trainable parameters outside Linear and
    (ungrouped) Conv2d layers, which EK-FAC does not cover (empty: all covered)."""
    supported = {name for name, module in model.named_modules()
                 if isinstance(module, nn.Linear)
                 or (isinstance(module, nn.Conv2d) and module.groups == 1)}
    return sorted({type(module).__name__ for name, module in model.named_modules()
                   if name not in supported and any(
                       p.requires_grad for p in module.parameters(recurse=False))})


def check_supported(model: nn.Module) -> None:
    """Refuse a model whose trainable parameters are not all in Linear or (ungrouped) Conv2d
    layers: EK-FAC would leave the others untouched, which is not the influence update."""
    others = unsupported_layers(model)
    if others:
        raise ConfigError(
            f"--solver ekfac covers only Linear and Conv2d layers, but {type(model).__name__} "
            f"also trains {', '.join(others)} parameters; use --solver cg or lissa for it")


def _classification_task(seed: int) -> Any:
    """A Kronfluence Task for rsc's cross-entropy classifiers (built here because ``Task``
    exists only when Kronfluence is installed). ``sample=True`` draws each row's label from
    the model's softmax, so the fitted factors are of the Gauss-Newton matrix, not the
    empirical Fisher; the draws come from one seeded generator, so fits are repeatable."""
    from kronfluence.task import Task

    class ClassificationTask(Task):
        generator: torch.Generator | None = None

        def compute_train_loss(self, batch: Any, model: nn.Module,
                               sample: bool = False) -> torch.Tensor:
            images, labels = batch
            logits = model(images)
            if sample:
                if self.generator is None or self.generator.device != logits.device:
                    self.generator = torch.Generator(logits.device).manual_seed(seed)
                with torch.no_grad():
                    probs = torch.softmax(logits.detach().double(), dim=-1)
                    labels = torch.multinomial(probs, 1, generator=self.generator).flatten()
            return F.cross_entropy(logits, labels, reduction="sum")  # Kronfluence wants sums

        def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
            return self.compute_train_loss(batch, model)

    return ClassificationTask()


def fit_factors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                settings: EkfacSettings, device: torch.device,
                progress: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Kronfluence's EK-FAC factors of ``model`` on the given rows (a copy of the model is
    prepared, so the caller's stays as it was), fitted in a temporary folder deleted after.
    Returns {factor name: {layer name: tensor}} on the CPU."""
    import_kronfluence()
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments

    rows = _fit_rows(labels.shape[0], settings)
    dataset = torch.utils.data.TensorDataset(images[rows], labels[rows])
    task = _classification_task(settings.seed)
    prepared = prepare_model(copy.deepcopy(model).to(device).eval(), task)
    arguments = FactorArguments(strategy="ekfac", covariance_max_examples=None,
                                lambda_max_examples=None)
    with tempfile.TemporaryDirectory(prefix="rsc-ekfac-") as folder, warnings.catch_warnings():
        # Kronfluence builds torch.cuda.amp.GradScaler, which torch deprecates: its business
        warnings.simplefilter("ignore", FutureWarning)
        analyzer = Analyzer("group-influence", prepared, task, cpu=device.type == "cpu",
                            log_level=logging.WARNING, disable_tqdm=not progress,
                            output_dir=folder)
        with eigh_with_fallback():
            analyzer.fit_all_factors(_FACTORS_NAME, dataset,
                                     per_device_batch_size=settings.fit_batch,
                                     factor_args=arguments, overwrite_output_dir=True)
        return analyzer.load_all_factors(_FACTORS_NAME)


@contextlib.contextmanager
def eigh_with_fallback() -> Iterator[None]:
    """While fitting, ``torch.linalg.eigh`` falls back to SciPy's ``evr`` driver where torch's
    fails to converge.

    Why: a covariance with many identical zero eigenvalues (the activations of a layer whose
    ReLU units are mostly dead on the fitted rows) can make torch's CPU LAPACK routine fail
    on one thread (measured: the clean MNIST LargeMLP's last hidden layer, 232 of 257 rows of
    its activation covariance zero, fails with OMP_NUM_THREADS=1 and succeeds with 2), while
    SciPy's relatively robust representation driver decomposes it. Kronfluence calls
    ``torch.linalg.eigh`` itself, so the fallback is installed for the duration of the fit
    and removed after; a matrix torch can decompose is decomposed by torch, as before."""
    original = torch.linalg.eigh

    def eigh(matrix: torch.Tensor, UPLO: str = "L", *, out: Any = None) -> Any:
        try:
            return original(matrix, UPLO=UPLO, out=out)
        except torch.linalg.LinAlgError:
            values, vectors = scipy.linalg.eigh(matrix.detach().cpu().numpy(),
                                                lower=UPLO == "L", driver="evr")
            as_torch = [torch.from_numpy(a).to(matrix.device, matrix.dtype)
                        for a in (values, vectors)]
            return torch.return_types.linalg_eigh(as_torch)

    torch.linalg.eigh = eigh
    try:
        yield
    finally:
        torch.linalg.eigh = original


def _fit_rows(num_rows: int, settings: EkfacSettings) -> torch.Tensor:
    """All rows, or ``fit_samples`` of them drawn without replacement (sorted)."""
    if not settings.fit_samples or settings.fit_samples >= num_rows:
        return torch.arange(num_rows)
    generator = torch.Generator().manual_seed(settings.seed)
    return torch.randperm(num_rows, generator=generator)[:settings.fit_samples].sort().values


def precondition(gradient: Mapping[str, torch.Tensor], model: nn.Module,
                 factors: Mapping[str, Mapping[str, torch.Tensor]],
                 damp: float) -> dict[str, torch.Tensor]:
    """(EK-FAC + damp I)^-1 applied to ``gradient`` ({parameter name: tensor} of ``model``'s
    Linear and Conv2d parameters), layer by layer, in float64."""
    result: dict[str, torch.Tensor] = {}
    for layer, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        names = [f"{layer}.weight"] + ([f"{layer}.bias"] if module.bias is not None else [])
        pieces = [gradient[name] for name in names]
        matrix = torch.cat([pieces[0].reshape(pieces[0].shape[0], -1)]
                           + [p.reshape(-1, 1) for p in pieces[1:]], dim=1).double()
        q_a, q_s, lam = (factors[key][layer].to(matrix.device, torch.float64) for key in
                         ("activation_eigenvectors", "gradient_eigenvectors", "lambda_matrix"))
        count = factors["num_lambda_processed"][layer].to(matrix.device, torch.float64)
        rotated = q_s.t() @ matrix @ q_a
        solved = q_s @ (rotated / (lam / count + damp)) @ q_a.t()
        result[names[0]] = solved[:, :pieces[0][0].numel()].reshape(pieces[0].shape)
        if len(names) == 2:
            result[names[1]] = solved[:, -1].reshape(pieces[1].shape)
    return {name: value.to(gradient[name].dtype) for name, value in result.items()}


def ekfac_ihvp(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               gradient: Mapping[str, torch.Tensor], settings: EkfacSettings,
               device: torch.device, progress: bool = False
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fit the factors on the training rows and return (EK-FAC + damp I)^-1 ``gradient``
    and facts (rows fitted, layers, seconds)."""
    check_supported(model)
    started = time.perf_counter()
    factors = fit_factors(model, images, labels, settings, device, progress)
    fitted = time.perf_counter()
    result = precondition(gradient, model, factors, settings.damp)
    return result, {"ekfac_fit_rows": len(_fit_rows(labels.shape[0], settings)),
                    "ekfac_layers": len(factors["lambda_matrix"]),
                    "ekfac_fit_seconds": fitted - started,
                    "ekfac_precondition_seconds": time.perf_counter() - fitted}


def self_influence_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          factors: Mapping[str, Mapping[str, torch.Tensor]], damp: float,
                          device: torch.device, batch: int = 256,
                          gradient: str = "loss") -> torch.Tensor:
    """g_i^T (EK-FAC + damp I)^-1 g_i for every row i, g_i the gradient of row i's cross
    entropy under its true label (``gradient="loss"``) or of its logit margin
    (``"margin"``, ``rsc_core.saliency.logit_margin``), in float64 on the CPU.

    Per layer, with G_i = sum_t d_it a_it^T the row's gradient as an out x (in [+1]) matrix
    (t over a Conv2d's output positions; one position for a Linear layer), the score is
    sum (Q_S^T G_i Q_A)^2 / (Lambda + damp), the same inverse ``precondition`` applies. Where
    a layer has one position, Q_S^T G_i Q_A = (Q_S^T d)(Q_A^T a)^T is an outer product and the
    sum is (u^2)^T M (w^2) with M = 1 / (Lambda + damp): a row costs about one forward pass
    through the layer instead of forming and rotating its out x in gradient (what makes all
    60,000 MNIST rows take seconds). The loss is taken in float64, so a memorised row's tiny
    gradient keeps its true-class entry instead of rounding to 0."""
    check_supported(model)
    model = model.to(device).eval()
    layers = [(name, module) for name, module in model.named_modules()
              if isinstance(module, (nn.Linear, nn.Conv2d))]
    inverse = {}
    for layer, _ in layers:
        q_a, q_s, lam = (factors[key][layer].to(device, torch.float64) for key in
                         ("activation_eigenvectors", "gradient_eigenvectors", "lambda_matrix"))
        count = factors["num_lambda_processed"][layer].to(device, torch.float64)
        inverse[layer] = (q_a.float(), q_s.float(), 1.0 / (lam / count + damp))
    scores = []
    for start in range(0, labels.shape[0], batch):
        x = images[start:start + batch].to(device)
        y = labels[start:start + batch].to(device)
        inputs, outputs = _capture(model, layers, x, y, gradient)
        total = torch.zeros(y.shape[0], dtype=torch.float64, device=device)
        for (layer, module), a, out in zip(layers, inputs, outputs):
            q_a, q_s, m = inverse[layer]
            acts, grads = _layer_rows(module, a, out)
            u = (grads @ q_s).double()  # B x T x out; squared below in float64, where a
            w = (acts @ q_a).double()   # B x T x in'; memorised row's 1e-23 entries survive
            if u.shape[1] == 1:
                total += ((u[:, 0] ** 2) @ m * w[:, 0] ** 2).sum(1)
            else:
                rotated = u.transpose(1, 2) @ w  # B x out x in'
                total += (rotated ** 2 * m).sum((1, 2))
        scores.append(total.cpu())
    return torch.cat(scores)


def _capture(model: nn.Module, layers: list[tuple[str, nn.Module]], x: torch.Tensor,
             y: torch.Tensor, gradient: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each layer's input and the gradient of the summed float64 cross entropy (or logit
    margin) with respect to its output, for one batch (the per-row gradients are built from
    these)."""
    from rsc_core.evaluation.saliency import logit_margin

    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        inputs.append(args[0].detach())
        outputs.append(output)

    handles = [module.register_forward_hook(keep) for _, module in layers]
    try:
        logits = model(x).double()
        loss = (F.cross_entropy(logits, y, reduction="sum") if gradient == "loss" else
                logit_margin(logits, y).sum())
    finally:
        for handle in handles:
            handle.remove()
    # only the layer outputs' gradients: autograd skips the parameters' entirely
    return inputs, [g.detach() for g in torch.autograd.grad(loss, outputs)]


def _layer_rows(module: nn.Module, a: torch.Tensor,
                grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the layer's inputs (B x T x in, with a column of ones for the bias) and the
    output gradients (B x T x out), T positions, in the layout ``precondition`` uses."""
    if isinstance(module, nn.Conv2d):
        a = F.unfold(a, module.kernel_size, module.dilation, module.padding,
                     module.stride).transpose(1, 2)
        grad = grad.flatten(2).transpose(1, 2)
    else:
        a, grad = a.reshape(a.shape[0], -1, a.shape[-1]), grad.reshape(grad.shape[0], -1,
                                                                         grad.shape[-1])
    if module.bias is not None:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    return a, grad
