"""``neural-cleanse``: trigger reconstruction (Wang et al. 2019, "Neural Cleanse").

For every class c, find the smallest mask m (H x W) and pattern p (C x H x W) that move clean
test images of the other classes to c:

    minimise  CE(f((1 - m) x + m p), c) + cost * |m|_1     over m, p in [0, 1],

by Adam on tanh-parametrised m and p (the authors' parametrisation and betas), with their
adaptive cost: every ``phase`` steps, if the phase's attack success reached ``success``, the
cost grows by 1.5, otherwise it shrinks by 1.5^1.5 (from ``init_cost``), and the smallest mask
that reached the success rate is kept. A class that a few training images tied to a small
trigger needs a much smaller mask than the others; the anomaly index of class c is
(median(L) - L_c) / (1.4826 MAD(L)) over the classes' mask norms L (norm H x W where the
success rate was never reached), and a class is flagged when it exceeds 2 (the authors'
threshold).

Budget (bounded on purpose, CPU): ``steps`` optimisation steps per class on batches of
``batch`` images drawn from ``images`` clean test images of the other classes (one fixed
sample per class, seeded).

Per training example i of class c, the score is the class's anomaly index plus how unusually
well the example already carries its class's trigger: with match_i = 1 - sum m |x_i - p| /
sum m (mask-weighted agreement, channel mean), the robust z-score (match_i - median) /
(1.4826 MAD) within class c. Proposed patterns: every class's (m, p).

Where it cannot work: a trigger with no small support (the full-image noise patterns R1-R3),
since any mask that reproduces it is the whole image; and a class whose natural features
already give a small mask (a low anomaly index for the planted class)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rsc_core.audit.auditor import AuditRequest, AuditResult, Auditor, PatternProposal, require

MAD_SCALE = 1.4826  # makes the MAD of a normal sample estimate its standard deviation
FLAG_INDEX = 2.0    # the authors' anomaly threshold


class NeuralCleanseAuditor(Auditor):
    """Neural Cleanse: per class the smallest mask and pattern moving other classes to it."""

    name = "neural-cleanse"
    aliases = ("nc",)
    description = ("Neural Cleanse (Wang et al. 2019): smallest trigger per class, anomaly "
                   "index across classes, proposed patterns")
    defaults: dict[str, Any] = {"steps": 300, "images": 500, "batch": 128, "lr": 0.1,
                                "init_cost": 1e-3, "success": 0.99, "phase": 10, "seed": 0}

    def resolve_options(self, options: Any) -> dict[str, Any]:
        resolved = super().resolve_options(options)
        require(self.name, resolved, ("steps", "images", "batch", "phase"), lambda v: v >= 1,
                "at least 1")
        require(self.name, resolved, ("success",), lambda v: 0 < v <= 1,
                "an attack success rate in (0, 1]")
        require(self.name, resolved, ("lr", "init_cost"), lambda v: v > 0, "positive")
        return resolved

    def audit(self, request: AuditRequest) -> AuditResult:
        started = time.perf_counter()
        options = request.options
        model = request.model.to(request.device).eval()
        flags = [p.requires_grad for p in model.parameters()]
        try:  # gradients for the trigger only
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            triggers = [_reverse(model, request.test.images, request.test.labels, c, options,
                                 request.device) for c in range(request.num_classes)]
        finally:
            for parameter, flag in zip(model.parameters(), flags):
                parameter.requires_grad_(flag)
        norms = np.array([t["norm"] for t in triggers])
        index = anomaly_index(norms)
        scores = _example_scores(request.train.images, request.train.labels, triggers, index)
        proposals = [PatternProposal(f"class{c}", c, t["mask"], t["pattern"],
                                     {"norm": t["norm"], "anomaly_index": float(index[c]),
                                      "flagged": bool(index[c] > FLAG_INDEX),
                                      "success": t["success"]})
                     for c, t in enumerate(triggers)]
        facts = {"norms": norms.tolist(), "anomaly_index": index.tolist(),
                 "flagged": [c for c in range(len(index)) if index[c] > FLAG_INDEX],
                 "seconds": time.perf_counter() - started}
        return AuditResult(scores, proposals, facts)


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    """(median - norm) / (1.4826 MAD) per class: large for a class whose trigger is unusually
    small (0 everywhere when the MAD is 0)."""
    median = np.median(norms)
    mad = MAD_SCALE * np.median(np.abs(norms - median))
    return (median - norms) / mad if mad > 0 else np.zeros_like(norms, dtype=np.float64)


def _reverse(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, target: int,
             options: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The smallest trigger for ``target`` that reached the success rate (or the last one,
    with norm H x W, if none did)."""
    generator = torch.Generator().manual_seed(options["seed"] * 1000 + target)
    pool = torch.nonzero(labels != target).flatten()
    pool = pool[torch.randperm(pool.numel(), generator=generator)[:options["images"]]]
    height, width = images.shape[-2:]
    if pool.numel() == 0:
        return {"norm": float(height * width), "success": 0.0,
                "mask": np.zeros((height, width), np.float32),
                "pattern": np.zeros(images.shape[1:], np.float32)}
    pool_images = images[pool].to(device)
    mask_param = _atanh(torch.rand(height, width, generator=generator)).to(device)
    pattern_param = _atanh(torch.rand(images.shape[1:], generator=generator)).to(device)
    mask_param.requires_grad_(True)
    pattern_param.requires_grad_(True)
    optimiser = torch.optim.Adam([mask_param, pattern_param], lr=options["lr"],
                                 betas=(0.5, 0.9))
    wanted = torch.full((min(options["batch"], pool.numel()),), target, device=device)
    cost, hits, seen = 0.0, 0, 0
    best: dict[str, Any] = {"norm": float(height * width), "success": 0.0}
    for step in range(options["steps"]):
        rows = torch.randint(pool.numel(), (wanted.numel(),), generator=generator)
        mask = (torch.tanh(mask_param) + 1) / 2
        pattern = (torch.tanh(pattern_param) + 1) / 2
        logits = model(pool_images[rows] * (1 - mask) + mask * pattern)
        loss = F.cross_entropy(logits, wanted) + cost * mask.sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        hits += int((logits.argmax(1) == target).sum())
        seen += wanted.numel()
        if (step + 1) % options["phase"] == 0:
            success = hits / seen
            norm = float(mask.detach().sum())
            if success >= options["success"] and norm < best["norm"]:
                best = {"norm": norm, "success": success,
                        "mask": mask.detach().cpu().numpy(),
                        "pattern": pattern.detach().cpu().numpy()}
            if success >= options["success"]:
                cost = options["init_cost"] if cost == 0 else cost * 1.5
            else:
                cost /= 1.5 ** 1.5
            hits, seen = 0, 0
    if "mask" not in best:  # never reached the success rate: the last trigger, full norm
        best.update(mask=((torch.tanh(mask_param) + 1) / 2).detach().cpu().numpy(),
                    pattern=((torch.tanh(pattern_param) + 1) / 2).detach().cpu().numpy())
    best["mask"] = best["mask"].astype(np.float32)
    best["pattern"] = best["pattern"].astype(np.float32)
    return best


def _atanh(values: torch.Tensor) -> torch.Tensor:
    """The tanh parameter of values in (0, 1) (kept off the ends)."""
    return torch.atanh((values * 2 - 1).clamp(-0.999, 0.999))


def _example_scores(images: torch.Tensor, labels: torch.Tensor, triggers: list[dict[str, Any]],
                    index: np.ndarray) -> np.ndarray:
    """Each example's class anomaly index plus its robust within-class z-score of trigger
    match (see the module docstring)."""
    scores = np.zeros(labels.shape[0])
    for c, trigger in enumerate(triggers):
        rows = torch.nonzero(labels == c).flatten()
        if rows.numel() == 0:
            continue
        mask = torch.from_numpy(trigger["mask"])
        pattern = torch.from_numpy(trigger["pattern"])
        distance = ((images[rows] - pattern).abs().mean(1) * mask).sum((1, 2))
        match = (1 - distance / mask.sum().clamp_min(1e-12)).double().numpy()
        median = np.median(match)
        mad = MAD_SCALE * np.median(np.abs(match - median))
        z = (match - median) / mad if mad > 0 else np.zeros_like(match)
        scores[rows.numpy()] = index[c] + z
    return scores
