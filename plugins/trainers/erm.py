"""The ``erm`` trainer: plain empirical risk minimisation, fast by design.

The whole training set lives as one tensor on the device; each epoch's batches are slices of a
seeded permutation (no per-item DataLoader); augmentation runs on whole batches. Every epoch
reseeds its own generators from (seed, epoch), so a run resumed from an epoch checkpoint
produces the same weights as an uninterrupted one."""
from __future__ import annotations

import math
import time
from contextlib import ExitStack
from typing import Any, Sequence

import torch
from torch import nn

from rsc_core.data.datasets import ImageData
from rsc_core.errors import ConfigError, DivergenceError
from rsc_core.evaluation.predictions import loss_and_accuracy
from rsc_core.training.multi_model import GroupTrainer
from rsc_core.training.hardware import precision_autocast
from rsc_core.training.memory_format import match_state_layouts
from rsc_core.progress import EpochProgress
from rsc_core.training.regularisers import Regulariser, TrainContext, iter_batches
from rsc_core.training.trainer import (AUGMENT, EpochCallback, Trainer, TrainConfig, TrainState,
    make_loss, make_optimizer, reference_milestones)

from . import erm_group
from .erm_recipe import adam_impl, epoch_seed, one_image_batch_guard


#: Test images per forward pass of the per-epoch evaluation. Measured on a 2-core AVX2 CPU
#: (ResNet-20, 1,000 images, one thread): 3.1-4.2 s in chunks of 128-250 against 5.5-6.4 s in
#: chunks of 2,000, whose activations (130 MB per layer) do not stay in cache; for an MLP either
#: is a few milliseconds. Logits do not depend on the chunk beyond rounding (eval mode).
EVAL_BATCH = 256


class ErmTrainer(Trainer, GroupTrainer):
    """Empirical risk minimisation with the reference's optimizers, losses and LR schedule."""

    name = "erm"

    def group_key(self, config: TrainConfig) -> Any:
        return erm_group.group_key(config)

    def fit_group(self, models, base, members, test, *, device="cpu", resume=None,
                  on_epoch=None, progress=False):
        """K compatible runs in lockstep (``erm_group.py``)."""
        return erm_group.fit_group(models, base, members, test, device=torch.device(device),
                                   resume=resume, on_epoch=on_epoch, progress=progress)

    def fit(self, model: nn.Module, train: ImageData, test: ImageData | None,
            config: TrainConfig, regularisers: Sequence[Regulariser] = (), *,
            device: torch.device | str = "cpu", resume: dict[str, Any] | None = None,
            on_epoch: EpochCallback | None = None, progress: bool = False,
            channels_last: bool = False) -> TrainState:
        device = torch.device(device)
        for regulariser in regularisers:
            regulariser.check_config(config)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model.to(device=device, memory_format=memory_format)
        x_all = train.images.to(device).contiguous(memory_format=memory_format)
        y_all = train.labels.to(device)
        options: dict[str, Any] = {"weight_decay": 0.0}
        for regulariser in regularisers:
            options = regulariser.optimizer_options(options)
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr,
                                   config.momentum, options["weight_decay"],
                                   adam_impl=adam_impl(config.adam_impl, device))
        ctx = TrainContext(model, optimizer, device, len(train), config.batch_size,
                           config.epochs)
        with ExitStack() as teardowns:
            for regulariser in regularisers:
                # Registered first: a setup that raises half-way is torn down too. ExitStack
                # runs every teardown, in reverse order, even if one of them raises.
                teardowns.callback(regulariser.teardown, ctx)
                regulariser.setup(ctx)
            return self._epochs(ctx, x_all, y_all, test, config, regularisers, resume=resume,
                                on_epoch=on_epoch, progress=progress)

    def _epochs(self, ctx: TrainContext, x_all: torch.Tensor, y_all: torch.Tensor,
                test: ImageData | None, config: TrainConfig,
                regularisers: Sequence[Regulariser], *, resume: dict[str, Any] | None,
                on_epoch: EpochCallback | None, progress: bool) -> TrainState:
        """Train from the resume point (or epoch 1) to ``config.epochs``, evaluating and
        calling ``on_epoch`` after each epoch."""
        device = ctx.device
        milestones = config.milestones or reference_milestones(config.epochs)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(ctx.optimizer, list(milestones), 0.1)
        state = TrainState()
        if resume is not None:
            ctx.model.load_state_dict(resume["model_state_dict"])
            ctx.optimizer.load_state_dict(resume["optimizer_state_dict"])
            match_state_layouts(ctx.optimizer)  # saved in another memory format? (fused Adam)
            scheduler.load_state_dict(resume["scheduler_state_dict"])
            state = TrainState(resume["epoch"], list(resume.get("history", [])))
        loss_fn = make_loss(config.loss)
        autocast = precision_autocast(config.precision, device)  # checks bf16 on this CPU
        bar = EpochProgress(config.epochs, math.ceil(ctx.num_train / config.batch_size),
                            enabled=progress, start_epoch=state.epoch)
        with bar:
            for epoch in range(state.epoch + 1, config.epochs + 1):
                ctx.epoch = epoch
                started = time.perf_counter()
                lr = ctx.optimizer.param_groups[0]["lr"]
                train_loss, train_acc = self._train_epoch(
                    ctx, x_all, y_all, config, regularisers, loss_fn, autocast, bar)
                scheduler.step()
                record = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
                          "train_accuracy": train_acc}
                if test is not None:
                    record["test_loss"], record["test_accuracy"] = loss_and_accuracy(
                        ctx.model, test.images, test.labels, loss_fn, device,
                        batch_size=EVAL_BATCH)
                for regulariser in regularisers:
                    record.update(regulariser.end_epoch(ctx))
                record["seconds"] = time.perf_counter() - started
                state.history.append(record)
                state.epoch = epoch
                bar.end_epoch(record)
                if on_epoch is not None:
                    on_epoch(state, ctx.model, ctx.optimizer, scheduler)
        return state

    def _train_epoch(self, ctx: TrainContext, x_all: torch.Tensor, y_all: torch.Tensor,
                     config: TrainConfig, regularisers: Sequence[Regulariser], loss_fn: Any,
                     autocast: Any, bar: EpochProgress) -> tuple[float, float]:
        seed = epoch_seed(config.seed, ctx.epoch)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global generator
        ctx.generator = torch.Generator(device=ctx.device).manual_seed(seed)
        batches = None
        for regulariser in regularisers:
            batches = batches or regulariser.batches(ctx)
        if batches is None:
            order = torch.randperm(x_all.shape[0], generator=ctx.generator, device=ctx.device)
            batches = iter_batches(order, config.batch_size)
        augment = AUGMENT[config.aug] if config.aug else None
        model = ctx.model
        model.train()
        total_loss = torch.zeros((), device=ctx.device, dtype=torch.float64)
        total_correct = torch.zeros((), device=ctx.device, dtype=torch.int64)
        seen = 0
        for index in batches:
            x, y = x_all.index_select(0, index), y_all.index_select(0, index)
            if augment is not None:
                x = augment(x, ctx.generator)
            for regulariser in regularisers:
                x, y = regulariser.before_forward(x, y, ctx)
            ctx.optimizer.zero_grad(set_to_none=True)
            with autocast, one_image_batch_guard(config, x_all.shape[0]):
                logits = model(x).float()
                losses = loss_fn(logits, y)
            for regulariser in regularisers:
                losses = _checked(regulariser, regulariser.loss(logits, y, losses, ctx), y)
            loss = losses.mean()  # what is optimised, and logged as train_loss
            if not any(regulariser.backward(losses, ctx) for regulariser in regularisers):
                loss.backward()
            for regulariser in regularisers:
                regulariser.after_backward(ctx)
            ctx.optimizer.step()
            for regulariser in regularisers:
                regulariser.after_step(ctx)
            if y.shape[0]:  # an empty batch (Poisson sampling, DP-SGD) has a NaN mean loss
                total_loss += loss.detach() * y.shape[0]
            total_correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            bar.advance()
        mean_loss = total_loss.item() / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise DivergenceError(
                f"training diverged in epoch {ctx.epoch}: the loss became "
                f"{'NaN' if math.isnan(mean_loss) else 'infinite'}; try a lower learning rate "
                f"(--lr, now {config.lr})")
        return mean_loss, total_correct.item() / max(seen, 1)


def _checked(regulariser: Regulariser, losses: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss hook must keep one loss per example: a per-example backward (DP-SGD) and the
    logged mean rely on it, and a scalar would otherwise broadcast silently."""
    if losses.shape != y.shape:
        raise ConfigError(f"regulariser {regulariser.name}'s loss hook returned shape "
                          f"{tuple(losses.shape)} for a batch of {y.shape[0]} examples; it must "
                          f"return one loss per example")
    return losses
