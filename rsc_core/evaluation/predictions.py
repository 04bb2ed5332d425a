"""Batched inference on tensors: logits, softmax probabilities, loss and accuracy. Always in
eval mode and without gradients, so evaluation never sees training-only behaviour."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu",
                   batch_size: int = 2000) -> torch.Tensor:
    """Logits for every image, on the CPU, in input order."""
    was_training = model.training
    model.eval()
    try:
        chunks = [model(images[i:i + batch_size].to(device)).float().cpu()
                  for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0)


def predict_proba(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu",
                  batch_size: int = 2000) -> torch.Tensor:
    return torch.softmax(predict_logits(model, images, device, batch_size), dim=1)


def loss_and_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      device: torch.device | str = "cpu",
                      batch_size: int = 2000) -> tuple[float, float]:
    """Mean per-example loss and accuracy over the whole split."""
    logits = predict_logits(model, images, device, batch_size)
    labels = labels.cpu()
    loss = loss_fn(logits, labels).mean().item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy
