"""The ``erm`` trainer for K runs at once: one batched computation over stacked weights.

Every member keeps its own random generator, seeded per epoch exactly as the single trainer
seeds it (``epoch_seed``), and draws from it in the same order (batch order, augmentation,
input noise), so member k sees the batch sequence of the single run with its seeds. The
weights of all members are stacked along a new first axis and the model is evaluated with
``torch.func.functional_call`` under ``torch.func.vmap`` (any architecture). Optimizers,
coupled weight decay and the schedule are element-wise, so one optimizer over the stacked
tensors IS K independent optimizers; per-member regulariser values (weight decay, input noise,
gradient clipping) are applied with per-member factors.

The data is held once: a batch gathers rows of the shared base set for every member, then
overwrites the few rows a member's spec patterned (``GroupMember.patched_*``). Dropout draws
differ from a single run's (vmap draws per member), so architectures with dropout are trained
alone, as is any regulariser this module does not know how to vectorise (DP-SGD, loss hooks)."""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from rsc_core.data.datasets import ImageData
from rsc_core.errors import ConfigError, DivergenceError
from rsc_core.training.multi_model import GroupEpochCallback, GroupMember, saving_together
from rsc_core.training.hardware import precision_autocast
from rsc_core.training.memory_format import match_state_layouts
from rsc_core.progress import EpochProgress
from rsc_core.training.regularisers import iter_batches
from rsc_core.training.trainer import (AUGMENT, TrainConfig, TrainState, make_loss, make_optimizer,
    reference_milestones)

from .erm_recipe import adam_impl, epoch_seed, one_image_batch_guard

#: Regularisers whose numeric values may differ between members of one group.
GROUPABLE_REGULARISERS = {"weight-decay": "value", "input-noise": "sigma", "grad-clip": "value"}
EVAL_CHUNK = 1000


def group_key(config: TrainConfig) -> Any:
    """The recipe without seeds and per-member regulariser values, or None if not groupable."""
    regularisers = []
    for reg in config.regularisers:
        value_key = GROUPABLE_REGULARISERS.get(reg["name"])
        if value_key is None:
            return None
        shared = tuple(sorted((k, v) for k, v in reg.get("params", {}).items() if k != value_key))
        regularisers.append((reg["name"], shared))
    return (config.arch, config.loss, config.aug, config.optimizer, config.lr, config.momentum,
            config.batch_size, config.epochs, config.milestones, config.trainer,
            config.adam_impl, config.precision, tuple(regularisers))


def has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def _value(config: TrainConfig, name: str, default: float = 0.0) -> float:
    for reg in config.regularisers:
        if reg["name"] == name:
            return float(reg["params"][GROUPABLE_REGULARISERS[name]])
    return default


def _param(config: TrainConfig, name: str, key: str, default: Any) -> Any:
    for reg in config.regularisers:
        if reg["name"] == name:
            return reg["params"].get(key, default)
    return default


class _Stack:
    """The group's weights: ``params``/``buffers`` map each name to a (K, ...) tensor."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device) -> None:
        self.skeleton = copy.deepcopy(models[0]).to("meta")
        self.param_names = [name for name, _ in models[0].named_parameters()]
        self.buffer_names = [name for name, _ in models[0].named_buffers()]
        self.persistent = list(models[0].state_dict().keys())
        self.params = {name: torch.stack([dict(m.named_parameters())[name].detach()
                                          for m in models]).to(device).requires_grad_()
                       for name in self.param_names}
        self.buffers = {name: torch.stack([dict(m.named_buffers())[name] for m in models])
                        .to(device) for name in self.buffer_names}

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Logits (K, B, C) for inputs (K, B, ...): the model's own ``forward_stacked`` when it
        has one (a specialised batched path, e.g. MLPs), else the generic ``vmap`` path."""
        self.skeleton.train(train)
        stacked = getattr(self.skeleton, "forward_stacked", None)
        if stacked is not None and not self.buffers:
            return stacked(self.params, x)

        def one(params: dict, buffers: dict, inputs: torch.Tensor) -> torch.Tensor:
            return functional_call(self.skeleton, (params, buffers), (inputs,))

        return vmap(one, randomness="different")(self.params, self.buffers, x)

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's ``state_dict`` (persistent buffers only, in the model's order)."""
        tensors = {**self.params, **self.buffers}
        return {name: tensors[name][k].detach().cpu().clone() for name in self.persistent}

    def load_member(self, k: int, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, tensor in {**self.params, **self.buffers}.items():
                if name in state:
                    tensor[k].copy_(state[name])


class _Batches:
    """Gathers each member's batch from the shared base set plus its own patched rows."""

    def __init__(self, base: ImageData, members: Sequence[GroupMember],
                 device: torch.device) -> None:
        self.images = base.images.to(device)
        self.labels = base.labels.to(device)
        n = self.images.shape[0]
        slots = torch.full((len(members), n), -1, dtype=torch.int64)
        rows, offset = [], 0
        for k, member in enumerate(members):
            count = member.patched_index.numel()
            slots[k, member.patched_index] = torch.arange(offset, offset + count)
            rows.append(member.patched_images)
            offset += count
        self.slots = slots.to(device)
        self.patched = torch.cat(rows).to(device) if offset else None
        # Each member's training rows (a subset run trains on some rows only), as base indices.
        self.rows = [m.rows.to(device) if m.rows is not None else None for m in members]
        sizes = {n if r is None else r.numel() for r in self.rows}
        if len(sizes) != 1:
            raise ConfigError(f"runs on different numbers of training rows ({sorted(sizes)}) "
                              f"cannot share a group; train them in separate groups")
        self.num_rows = sizes.pop()

    def order(self, k: int, generator: torch.Generator) -> torch.Tensor:
        """Member k's epoch order as base indices: a permutation of its own rows, drawn as the
        single run draws it over its (reduced) training set."""
        perm = torch.randperm(self.num_rows, generator=generator, device=self.images.device)
        rows = self.rows[k]
        return perm if rows is None else rows[perm]

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (K, B, ...) and labels (K, B) for per-member indices ``index`` (K, B)."""
        k, b = index.shape
        x = self.images.index_select(0, index.reshape(-1)).view(k, b, *self.images.shape[1:])
        y = self.labels.index_select(0, index.reshape(-1)).view(k, b)
        if self.patched is not None:
            slot = self.slots.gather(1, index)
            hit = slot >= 0
            if bool(hit.any()):
                x = x.clone()
                x[hit] = self.patched.index_select(0, slot[hit])
        return x, y


def fit_group(models: Sequence[nn.Module], base: ImageData, members: Sequence[GroupMember],
              test: ImageData | None, *, device: torch.device,
              resume: Sequence[dict[str, Any] | None] | None = None,
              on_epoch: GroupEpochCallback | None = None,
              progress: bool = False) -> list[TrainState | BaseException]:
    """Train the members in lockstep; see the module docstring."""
    config = members[0].config
    keys = {group_key(m.config) for m in members}
    if None in keys or len(keys) != 1:
        raise ConfigError("these runs cannot share a group: they must share architecture and "
                          "recipe, with only seeds and regulariser values differing")
    if has_dropout(models[0]):
        raise ConfigError(f"{config.arch} uses dropout, whose draws a group cannot reproduce "
                          f"per member; train its runs one at a time")
    check_memory(models[0], len(members), config.batch_size, base, device)
    engine = _GroupEngine(models, base, members, device)
    try:
        return engine.run(test, resume, on_epoch, progress)
    except torch.OutOfMemoryError:
        raise ConfigError(f"a group of {len(members)} runs ran out of memory on {device}; "
                          f"use a smaller --group-size") from None


def check_memory(model: nn.Module, k: int, batch_size: int, base: ImageData,
                 device: torch.device) -> None:
    """Refuse a group that cannot fit before it starts: K copies of the weights, their
    gradients and two optimizer moments, plus K batches of inputs, against the memory the
    device has free (a lower bound: activations come on top)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    sample = base.images[:1]
    need = k * (4 * weights + batch_size * sample.numel() * sample.element_size())
    free = free_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"a group of {k} runs needs at least {need / 2**30:.1f} GiB but "
                          f"{device} has {free / 2**30:.1f} GiB free; use a smaller "
                          f"--group-size")


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (CUDA: the driver's count; CPU: MemAvailable), or None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _GroupEngine:
    """State and loop of one group's training."""

    def __init__(self, models: Sequence[nn.Module], base: ImageData,
                 members: Sequence[GroupMember], device: torch.device) -> None:
        self.members = list(members)
        self.config = members[0].config
        self.device = device
        self.k = len(members)
        self.stack = _Stack(models, device)
        self.data = _Batches(base, members, device)
        self.loss_fn = make_loss(self.config.loss)
        self.autocast = precision_autocast(self.config.precision, device)  # as the single run
        params = [self.stack.params[name] for name in self.stack.param_names]
        weight_decays = [_value(m.config, "weight-decay") for m in members]
        self.decoupled = bool(_param(self.config, "weight-decay", "decoupled", False))
        uniform = len(set(weight_decays)) == 1 and not self.decoupled
        self.optimizer = make_optimizer(self.config.optimizer, params, self.config.lr,
                                        self.config.momentum,
                                        weight_decays[0] if uniform else 0.0,
                                        adam_impl=adam_impl(self.config.adam_impl, device))
        self.manual_decay = None if uniform else self._per_member(weight_decays)
        milestones = self.config.milestones or reference_milestones(self.config.epochs)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(milestones),
                                                              0.1)
        self.noise = self._per_member([_value(m.config, "input-noise") for m in members])
        self.noise_clip = bool(_param(self.config, "input-noise", "clip", False))
        clips = [_value(m.config, "grad-clip", math.inf) for m in members]
        self.clip = None if math.isinf(clips[0]) else self._per_member(clips)
        self.clip_mode = _param(self.config, "grad-clip", "mode", "value")
        self.failed: dict[int, BaseException] = {}

    def _per_member(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def run(self, test: ImageData | None, resume: Sequence[dict | None] | None,
            on_epoch: GroupEpochCallback | None, progress: bool) -> list:
        states = [TrainState() for _ in self.members]
        if resume and any(r is not None for r in resume):
            states = self._resume(resume)
        n = self.data.num_rows
        bar = EpochProgress(self.config.epochs, math.ceil(n / self.config.batch_size),
                            enabled=progress, start_epoch=states[0].epoch)
        with bar:
            for epoch in range(states[0].epoch + 1, self.config.epochs + 1):
                started = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                losses, accuracies = self._train_epoch(epoch, bar)
                self.scheduler.step()
                tests = self._evaluate(test) if test is not None else None
                seconds = time.perf_counter() - started
                with saving_together():  # every member saves this epoch, or none
                    for k, state in enumerate(states):
                        self._end_epoch(k, state, epoch, lr, losses, accuracies, tests,
                                        seconds, on_epoch)
                bar.end_epoch(states[0].history[-1] if states[0].history else {})
        return [self.failed.get(k, state) for k, state in enumerate(states)]

    def _end_epoch(self, k: int, state: TrainState, epoch: int, lr: float, losses: list,
                   accuracies: list, tests: tuple | None, seconds: float,
                   on_epoch: GroupEpochCallback | None) -> None:
        """Member k's record of the epoch and its checkpoint (or its divergence)."""
        if k in self.failed:
            return
        if not math.isfinite(losses[k]):
            self.failed[k] = _divergence(epoch, losses[k], self.config.lr)
            return
        record = {"epoch": epoch, "lr": lr, "train_loss": losses[k],
                  "train_accuracy": accuracies[k]}
        if tests is not None:
            record["test_loss"], record["test_accuracy"] = tests[0][k], tests[1][k]
        record["seconds"] = seconds
        record["group_size"] = self.k
        state.history.append(record)
        state.epoch = epoch
        if on_epoch is not None:
            on_epoch(k, state, self.stack.member_state(k), self._optimizer_state(k),
                     self.scheduler.state_dict())

    def _train_epoch(self, epoch: int, bar: EpochProgress) -> tuple[list[float], list[float]]:
        generators = []
        for member in self.members:
            seed = epoch_seed(member.config.seed, epoch)
            generators.append(torch.Generator(device=self.device).manual_seed(seed))
        orders = [self.data.order(k, g) for k, g in enumerate(generators)]
        batches = [list(iter_batches(order, self.config.batch_size)) for order in orders]
        augment = AUGMENT[self.config.aug] if self.config.aug else None
        total_loss = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        total_correct = torch.zeros(self.k, dtype=torch.int64, device=self.device)
        seen = 0
        for step in range(len(batches[0])):
            index = torch.stack([member_batches[step] for member_batches in batches])
            x, y = self.data.gather(index)
            x = self._member_inputs(x, generators, augment)
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast, one_image_batch_guard(self.config, len(orders[0])):
                logits = self.stack.forward(x, train=True).float()  # bf16 if asked, as erm's
            per_example = self.loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss = per_example.view(self.k, -1).mean(1)
            loss.sum().backward()  # members share no weights: each gets its own gradient
            self._before_step()
            self.optimizer.step()
            with torch.no_grad():
                total_loss += loss.detach().double() * y.shape[1]
                total_correct += (logits.argmax(-1) == y).sum(1)
            seen += y.shape[1]
            bar.advance()
        count = max(seen, 1)
        return (total_loss / count).tolist(), (total_correct.double() / count).tolist()

    def _member_inputs(self, x: torch.Tensor, generators: list[torch.Generator],
                       augment: Any) -> torch.Tensor:
        """Augmentation and input noise, each member drawing from its own generator in the
        single trainer's order (augment, then noise)."""
        if augment is None and not bool((self.noise > 0).any()):
            return x
        out = []
        for k, generator in enumerate(generators):
            xk = augment(x[k], generator) if augment is not None else x[k]
            sigma = float(self.noise[k])
            if sigma > 0:
                noise = torch.randn(xk.shape, generator=generator, device=xk.device,
                                    dtype=xk.dtype)
                xk = xk + sigma * noise
                if self.noise_clip:
                    xk = xk.clamp(0.0, 1.0)
            out.append(xk)
        return torch.stack(out)

    def _before_step(self) -> None:
        """Per-member gradient clipping and weight decay on the stacked gradients."""
        params = [self.stack.params[name] for name in self.stack.param_names]
        with torch.no_grad():
            if self.clip is not None:
                self._clip(params)
            if self.manual_decay is not None and not self.decoupled:
                for p in params:
                    if p.grad is not None:
                        p.grad.add_(p * _expand(self.manual_decay, p))
            if self.decoupled:
                decay = self.manual_decay if self.manual_decay is not None else None
                lr = self.optimizer.param_groups[0]["lr"]
                for p in params:
                    if p.grad is not None and decay is not None:
                        p.mul_(1.0 - lr * _expand(decay, p))

    def _clip(self, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if self.clip_mode == "value":
            for g in grads:
                limit = _expand(self.clip, g)
                torch.minimum(g, limit, out=g)
                torch.maximum(g, -limit, out=g)
            return
        norms = torch.stack([g.reshape(self.k, -1).norm(dim=1) for g in grads]).norm(dim=0)
        coefficient = (self.clip / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(_expand(coefficient, g))

    @torch.no_grad()
    def _evaluate(self, test: ImageData) -> tuple[list[float], list[float]]:
        images, labels = test.images.to(self.device), test.labels.to(self.device)
        total_loss = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(self.k, dtype=torch.int64, device=self.device)
        for start in range(0, images.shape[0], EVAL_CHUNK):
            x = images[start:start + EVAL_CHUNK]
            y = labels[start:start + EVAL_CHUNK]
            logits = self.stack.forward(x.expand(self.k, *x.shape), train=False).float()
            losses = self.loss_fn(logits.reshape(-1, logits.shape[-1]), y.repeat(self.k))
            total_loss += losses.view(self.k, -1).double().sum(1)
            correct += (logits.argmax(-1) == y).sum(1)
        count = max(images.shape[0], 1)
        return (total_loss / count).tolist(), (correct.double() / count).tolist()

    def _optimizer_state(self, k: int) -> dict:
        """Member k's slice of the group optimizer's state, in a single optimizer's format."""
        state = self.optimizer.state_dict()
        sliced = {}
        for index, values in state["state"].items():
            sliced[index] = {key: (value[k].clone() if isinstance(value, torch.Tensor)
                                   and value.dim() > 0 and value.shape[0] == self.k else value)
                             for key, value in values.items()}
        groups = copy.deepcopy(state["param_groups"])
        for group in groups:
            if self.manual_decay is not None and not self.decoupled:
                group["weight_decay"] = float(self.manual_decay[k])
        return {"state": sliced, "param_groups": groups}

    def _resume(self, resume: Sequence[dict | None]) -> list[TrainState]:
        """Load every member's checkpoint (all at one epoch) into the stacked state."""
        if any(r is None for r in resume) or len({r["epoch"] for r in resume}) != 1:
            raise ConfigError("a group resumes only when every member has a checkpoint of the "
                              "same epoch; resume the others one at a time")
        for k, checkpoint in enumerate(resume):
            self.stack.load_member(k, checkpoint["model_state_dict"])
        group_state = self.optimizer.state_dict()
        member_states = [r["optimizer_state_dict"]["state"] for r in resume]
        for index in member_states[0]:
            group_state["state"][index] = {
                key: (torch.stack([m[index][key] for m in member_states])
                      if isinstance(value, torch.Tensor) and value.dim() > 0 else value)
                for key, value in member_states[0][index].items()}
        self.optimizer.load_state_dict(group_state)
        match_state_layouts(self.optimizer)  # members saved channels-last (fused Adam)
        self.scheduler.load_state_dict(resume[0]["scheduler_state_dict"])
        return [TrainState(r["epoch"], list(r.get("history", []))) for r in resume]


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-member values (K,) shaped to broadcast over a stacked tensor (K, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _divergence(epoch: int, loss: float, lr: float) -> DivergenceError:
    return DivergenceError(
        f"training diverged in epoch {epoch}: the loss became "
        f"{'NaN' if math.isnan(loss) else 'infinite'}; try a lower learning rate (--lr, now "
        f"{lr})")
