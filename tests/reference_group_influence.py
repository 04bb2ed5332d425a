"""An independent re-implementation, for tests only, of the reference code's first-order group
influence as it runs (issue 20), written from reading its source: autograd's double backward
with the graph of v kept (the iterate is never detached), one LiSSA per example of S with r
chains each, the chains joined by Python list extension, and the weight update walking only
the first block. rsc's ``--compat reference`` must reproduce it; it shares no code with rsc."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def reference_s_test(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, z: int,
                     rows: Sequence[int], damp: float, scale: float,
                     keep_graph: bool = True) -> list[torch.Tensor]:
    """One chain: h <- v + (1 - damp) h - hv / scale, hv by double backward through a graph
    that still holds v (built with create_graph=True), one sampled row per step.
    ``keep_graph=False`` detaches v: the procedure the reference meant."""
    params = [p for p in model.parameters() if p.requires_grad]
    z_loss = F.cross_entropy(model(images[z:z + 1]), labels[z:z + 1])
    v = list(torch.autograd.grad(z_loss, params, create_graph=True))
    if not keep_graph:
        v = [piece.detach() for piece in v]
    h = [piece.detach() for piece in v]
    for i in rows:
        loss = F.cross_entropy(model(images[i:i + 1]), labels[i:i + 1])
        first = torch.autograd.grad(loss, params, retain_graph=True, create_graph=True)
        dot = sum((g * e).sum() for g, e in zip(first, h))
        hv = [piece.detach() for piece in torch.autograd.grad(dot, params, create_graph=True)]
        h = [a + (1 - damp) * b - c / scale for a, b, c in zip(v, h, hv)]
    return h


def reference_new_weights(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          forget: Sequence[int], samples: Sequence[Sequence[Sequence[int]]],
                          damp: float, scale: float, repeats: int,
                          detach: bool = False) -> torch.Tensor:
    """The flat weights the reference writes. ``samples[j][c]`` is chain c's row sequence for
    example ``forget[j]``. ``detach=True`` cuts the graph of v (what the reference meant),
    to show the kept graph matters."""
    total = None
    for j, z in enumerate(forget):
        chains = []
        for c in range(repeats):
            chains.append(reference_s_test(model, images, labels, z, samples[j][c], damp,
                                           scale, keep_graph=not detach))
        joined = chains[0]
        for other in chains[1:]:
            joined += other  # the reference's `+=` on lists: concatenation, not a sum
        joined = [piece / repeats for piece in joined]
        total = joined if total is None else [a + b for a, b in zip(total, joined)]
    p = len(forget) / len(images)
    update = [-1 / (1 - p) / len(images) * piece for piece in total]
    params = [p for p in model.parameters() if p.requires_grad]
    # zip stops at the parameters: only the first block (chain 0) is applied, as there
    return torch.cat([(param - delta).detach().reshape(-1)
                      for param, delta in zip(params, update)])
