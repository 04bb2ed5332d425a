"""Input saliency: where in an image a model's evidence for its label lies, per pixel.

The statistic is the example's logit margin phi = z_y - logsumexp_{j != y} z_j (the log-odds
of its true class, the quantity LiRA also reads). Its gradient does not vanish on an example
the model fits with certainty, where the loss's gradient underflows to 0 in float32 (a
memorised planted image is exactly such an example).

Two maps (``kind``), both summed over channels and absolute:

* ``gradient-x-input`` (default): |x * d phi / d x|, the first-order contribution of each
  pixel; zero where the image is zero, so on MNIST-like data the mass sits on ink (and on a
  trigger, when one is drawn) rather than on background weights no example ever used.
* ``gradient``: |d phi / d x|, the plain sensitivity.

Used by the saliency-concentration auditor and by the top-k figure of ``rsc audit``."""
from __future__ import annotations

import torch
from torch import nn

from rsc_core.errors import ConfigError

KINDS = ("gradient-x-input", "gradient")


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """phi = z_y - logsumexp of the other logits, per row."""
    others = logits.scatter(1, labels.unsqueeze(1), float("-inf"))
    return logits.gather(1, labels.unsqueeze(1)).squeeze(1) - torch.logsumexp(others, dim=1)


def input_saliency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   device: torch.device | str = "cpu", kind: str = KINDS[0],
                   batch: int = 1000) -> torch.Tensor:
    """The saliency map of every image (N x C x H x W) for its label: N x H x W, float32, on
    the CPU, with the model in eval mode on ``device`` (where it stays)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown saliency {kind!r}; use one of {', '.join(KINDS)}")
    was_training = model.training
    model.to(device).eval()
    maps = []
    try:
        for start in range(0, images.shape[0], batch):
            x = images[start:start + batch].to(device).requires_grad_(True)
            y = labels[start:start + batch].to(device)
            (gradient,) = torch.autograd.grad(logit_margin(model(x), y).sum(), x)
            value = gradient * x if kind == "gradient-x-input" else gradient
            maps.append(value.detach().abs().sum(1).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(maps) if maps else torch.empty(0, *images.shape[2:])
