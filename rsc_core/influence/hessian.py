"""Hessian-vector products of a model's cross-entropy training loss, for the IHVP solvers.

Why this shape: the reference computed each LiSSA step by drawing one example through a
DataLoader and running autograd's double backward. Here the training set stays one tensor on
the device, rows are picked by index (no per-step data loading), and H v is exact.
Two generic HVP forms are offered (``mode``): ``forward-over-reverse`` (``jvp`` of ``grad``, the
textbook choice and the default) and ``reverse-over-forward`` (``grad`` of the directional
derivative ``jvp`` gives, which never materialises the gradient itself). They agree to float64
rounding (tests); which is faster varied between measurements on the shared benchmark machine
(docs/performance.md). rsc's ReLU MLPs take hand-written products instead (``mlp_hvp.py``,
measured 2-3.5x faster than either for LiSSA's one-example samples).

Parameters are handled as ONE flat vector so the solvers are plain vector recursions, and the
batched form (``hvp_rows_batched``) runs many independent LiSSA chains, each with its own
Hessian sample, in one pass (``torch.func.vmap`` on the generic path).

The model is in eval mode (dropout off, batch-norm statistics frozen), the loss is the mean
cross entropy over the chosen rows, as PROTOCOL.md section 7 prescribes."""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from rsc_core.errors import RscError

from rsc_core.influence.mlp_hvp import mlp_gradient_batched, mlp_hvp_batched, mlp_layers

with warnings.catch_warnings():
    # torch's forward-mode rules for some backward ops are built with torch.jit.script on
    # first use, which warns that jit is deprecated: torch's own business, not the user's.
    warnings.simplefilter("ignore", FutureWarning)
    import torch._decomp.decompositions_for_jvp  # noqa: F401


HVP_MODES = ("forward-over-reverse", "reverse-over-forward")


class HessianError(RscError):
    """The model's Hessian-vector products cannot be computed (an unsupported operation)."""


class LossHessian:
    """The mean cross-entropy loss of ``model`` over rows of ``images``/``labels`` (tensors on
    ``device``) as a function of the flat parameter vector ``theta``."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device | str = "cpu", chunk: int = 4096,
                 mode: str = "forward-over-reverse", specialised: bool = True) -> None:
        if mode not in HVP_MODES:
            raise ValueError(f"mode must be one of {HVP_MODES}, got {mode!r}")
        self.mode = mode
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.parameters = [p for _, p in named]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in named]).to(self.device)
        self.buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.chunk = chunk
        # rsc's ReLU MLPs get hand-written products (mlp_hvp.py, measured several times
        # faster for LiSSA's batch-1 samples); every other model the torch.func ones
        self.mlp = mlp_layers(self.model, self.names) if specialised else None

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameter dict that ``flat`` holds (views, so it works under torch.func)."""
        return {name: piece.view(shape) for name, piece, shape in
                zip(self.names, torch.split(flat, self.numels), self.shapes)}

    def loss(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
        params: dict[str, Any] = {**self.unflatten(flat), **self.buffers}
        logits = functional_call(self.model, params, (x,))
        return F.cross_entropy(logits, y, reduction=reduction)

    def _hvp(self, vector: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """H v of the mean loss over (x, y), exact, in the form ``self.mode`` names."""
        if self.mode == "forward-over-reverse":
            gradient = grad(lambda flat: self.loss(flat, x, y))
            return jvp(gradient, (self.theta,), (vector,))[1]

        def directional(flat: torch.Tensor) -> torch.Tensor:  # grad(L) . v at flat
            return jvp(lambda inner: self.loss(inner, x, y), (flat,), (vector,))[1]

        return grad(directional)(self.theta)

    def hvp_rows(self, vector: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """H v, H the Hessian of the mean loss over the training rows ``rows``."""
        if self.mlp is not None:
            return self.hvp_rows_batched(vector.unsqueeze(0), rows.unsqueeze(0))[0]
        return self._hvp(vector, self.images[rows], self.labels[rows])

    def hvp_rows_batched(self, vectors: torch.Tensor, rows: torch.Tensor,
                         out: torch.Tensor | None = None, alpha: float = 1.0,
                         plus: torch.Tensor | None = None) -> torch.Tensor:
        """plus + alpha H_k v_k per chain k in one vectorised pass: ``vectors`` is r x P,
        ``rows`` is r x b (chain k's Hessian sample), ``plus`` a flat P vector or None; the
        result is r x P (written into ``out`` if given). The affine form lets LiSSA's
        memory-bound step skip passes over the r x P floats (see ``lissa``)."""
        if self.mlp is not None:
            return mlp_hvp_batched(self.mlp, vectors, self.images[rows].flatten(2),
                                   self.labels[rows], out, alpha, plus)
        result = vmap(self._hvp_rows_generic)(vectors, rows)
        if plus is not None:
            return torch.add(plus, result, alpha=alpha, out=out)
        if alpha != 1.0:
            result = result.mul_(alpha)
        return result if out is None else out.copy_(result)

    def _hvp_rows_generic(self, vector: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self._hvp(vector, self.images[rows], self.labels[rows])

    def gradient_rows_batched(self, rows: torch.Tensor,
                              out: torch.Tensor | None = None) -> torch.Tensor:
        """Per chain k, the gradient of the mean loss over the training rows ``rows[k]``
        (``rows`` is r x b): r x P, written into ``out`` when given. The reference emulation
        of group influence needs the sampled example's gradient at every step
        (``reference_lissa.py``)."""
        if self.mlp is not None:
            return mlp_gradient_batched(self.mlp, self.images[rows].flatten(2),
                                        self.labels[rows], out)
        result = vmap(self._gradient_rows_generic)(rows)
        return result if out is None else out.copy_(result)

    def _gradient_rows_generic(self, rows: torch.Tensor) -> torch.Tensor:
        return grad(lambda flat: self.loss(flat, self.images[rows], self.labels[rows]))(
            self.theta)

    def margin_gradient_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Per training row in ``rows`` (a 1-d index tensor), the gradient of its logit margin
        phi = z_y - logsumexp_{j != y} z_j: B x P. Unlike the loss's, it does not vanish on a
        row the model fits with certainty (the self-influence auditor's ``gradient=margin``)."""
        if self.mlp is not None:  # hand-written, as for the loss (mlp_hvp.py)
            return mlp_gradient_batched(self.mlp, self.images[rows].flatten(1).unsqueeze(1),
                                        self.labels[rows].unsqueeze(1), margin=True)
        from rsc_core.evaluation.saliency import logit_margin

        def margin(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            params: dict[str, Any] = {**self.unflatten(flat), **self.buffers}
            logits = functional_call(self.model, params, (x.unsqueeze(0),))
            return logit_margin(logits, y.unsqueeze(0)).sum()

        return vmap(grad(margin), in_dims=(None, 0, 0))(self.theta, self.images[rows],
                                                        self.labels[rows])

    def hvp_mean(self, vector: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """H v, H the Hessian of the mean loss over ``rows`` (all rows when None), computed
        in chunks so memory stays bounded on the whole training set."""
        rows = torch.arange(self.num_rows, device=self.device) if rows is None else rows
        total = torch.zeros_like(self.theta)
        for start in range(0, rows.numel(), self.chunk):
            part = rows[start:start + self.chunk]
            total += self.hvp_rows(vector, part) * (part.numel() / rows.numel())
        return total

    def gradient_sum(self, rows: torch.Tensor) -> torch.Tensor:
        """The SUM over ``rows`` of the per-example loss gradients (the IHVP's right-hand side
        for group influence: one vector for the whole forget set)."""
        total = torch.zeros_like(self.theta)
        for start in range(0, rows.numel(), self.chunk):
            part = rows[start:start + self.chunk]
            # plain autograd on the module (the same function as ``loss`` at theta): torch.func
            # would import torch._dynamo on first use, measured at 2.6 s of a removal's time
            loss = F.cross_entropy(self.model(self.images[part]), self.labels[part],
                                   reduction="sum")
            pieces = torch.autograd.grad(loss, self.parameters)
            total += torch.cat([piece.reshape(-1) for piece in pieces])
        return total

    def check(self) -> None:
        """One HVP on one row, so an architecture torch.func cannot differentiate twice fails
        at once with one line instead of deep inside a solver."""
        probe = torch.zeros_like(self.theta)
        try:
            self.hvp_rows_batched(probe.unsqueeze(0), torch.zeros(1, 1, dtype=torch.long,
                                                                 device=self.device))
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise HessianError(
                f"cannot compute Hessian-vector products of {type(self.model).__name__} with "
                f"torch.func ({first}); use --method incremental-retraining or retrain for "
                f"this architecture") from None
