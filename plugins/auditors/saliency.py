"""``saliency``: how much of an example's input saliency falls in a small region where
almost no training example puts any, and whether other suspicious examples share that region.

A planted trigger is a small region that carries the evidence for the label in the planted
images and in (almost) no other image, so their saliency (``rsc_core.saliency``:
|x * d phi / d x| by default) piles up where the usual example has none. Per example i, with
s_i its saliency map normalised to sum 1:

1. M_i(W): the share of s_i in each ``window`` x ``window`` region W (every position);
2. q(W): the ``quantile`` (0.99) of M(W) over the training set, what all but the most unusual
   1% of examples put there; z_i(W) = (M_i(W) - q(W)) / (q(W) + ``floor``): the excess over
   that, relative to it (``floor``, a share, keeps regions nobody uses from dividing by 0);
3. local_i = max_W z_i(W), and W_i where;
4. the shared region R: among the ``top`` examples by local_i, the region chosen most often
   (weighted by local_i);
5. score_i = local_i + max(z_i(R), 0): concentrated somewhere unusual, and the more so in the
   shared region.

The proposed pattern is R as a mask with, as picture, the mean of the images of those top
examples whose own region is R, targeting their most common class.

(Measured on MNIST S3 n = 100: a class-wise baseline, mean or median and MAD, ranked unusual
but natural strokes (thin ones, shifted digits) above the planted images; the global upper
quantile does not, because a region some digits use is not empty at the 99th percentile.)

Where it cannot work: a trigger spread over the whole image (the noise patterns R1-R3) has no
small region to pile into; a trigger on more than 1 - ``quantile`` of the training set raises
the baseline itself; and a single planted image (n = 1) has no other example to share its
region with (it then relies on local_i alone)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rsc_core.audit.auditor import (AuditRequest, AuditResult, Auditor, PatternProposal, require,
    require_choice)
from rsc_core.evaluation.saliency import KINDS, input_saliency


class SaliencyConcentrationAuditor(Auditor):
    """Saliency mass in a small region almost no example uses, shared with other suspects."""

    name = "saliency"
    aliases = ("saliency-concentration",)
    defaults: dict[str, Any] = {"window": 5, "top": 50, "quantile": 0.99, "floor": 0.01,
                                "saliency": "gradient-x-input", "batch": 1000}

    def resolve_options(self, options: Any) -> dict[str, Any]:
        resolved = super().resolve_options(options)
        require_choice(self.name, resolved, "saliency", KINDS)
        require(self.name, resolved, ("quantile",), lambda v: 0 < v < 1, "in (0, 1)")
        require(self.name, resolved, ("floor",), lambda v: v > 0, "positive")
        require(self.name, resolved, ("window", "top", "batch"), lambda v: v >= 1, "at least 1")
        return resolved

    def audit(self, request: AuditRequest) -> AuditResult:
        started = time.perf_counter()
        options = request.options
        images, labels = request.train.images, request.train.labels
        height, width = images.shape[-2:]
        window = min(options["window"], height, width)
        maps = input_saliency(request.model, images, labels, request.device,
                              options["saliency"], options["batch"])
        shares = maps / maps.sum((1, 2), keepdim=True).clamp_min(1e-30)
        mass = F.avg_pool2d(shares.unsqueeze(1), window, stride=1).squeeze(1) * window ** 2
        flat = mass.flatten(1)
        usual = torch.from_numpy(np.quantile(flat.numpy(), options["quantile"], axis=0)).to(
            flat.dtype)
        excess = (flat - usual) / (usual + options["floor"])
        local, where = excess.max(1)
        top = torch.topk(local, min(options["top"], local.numel())).indices
        votes = torch.zeros(flat.shape[1], dtype=local.dtype).index_add_(
            0, where[top], local[top].clamp_min(0))
        region = int(votes.argmax())
        scores = (local + excess[:, region].clamp_min(0)).double()
        proposal = _proposal(images, labels, top[where[top] == region], region,
                             mass.shape[-1], window)
        facts = {"window": window, "region_row": region // mass.shape[-1],
                 "region_col": region % mass.shape[-1],
                 "region_votes": float(votes[region]), "seconds": time.perf_counter() - started}
        return AuditResult(scores.numpy(), [proposal], facts)


def _proposal(images: torch.Tensor, labels: torch.Tensor, members: torch.Tensor, region: int,
              columns: int, window: int) -> PatternProposal:
    """The shared region as a mask, with the mean of its members' images as the picture."""
    row, col = divmod(region, columns)
    mask = np.zeros(images.shape[-2:], dtype=np.float32)
    mask[row:row + window, col:col + window] = 1.0
    picture = images[members].mean(0).numpy() if members.numel() else np.zeros(
        images.shape[1:], dtype=np.float32)
    target = int(torch.mode(labels[members]).values) if members.numel() else 0
    return PatternProposal("region", target, mask, np.clip(picture, 0, 1).astype(np.float32),
                           {"row": row, "col": col, "window": window,
                            "members": int(members.numel())})
