"""``incremental-retraining``: continue training the finished model on the training set
without the forget set (PROTOCOL.md section 7).

The source checkpoint is loaded WITH its optimizer state (Adam's moments and step counts) and
training continues for ``extra_epochs`` more epochs (default: as many as the source trained,
so a 70-epoch run continues to epoch 140) with no learning-rate scheduler: the learning rate
stays at the decayed value stored in the optimizer. Epochs are numbered on from the source's
(71..140), so each gets its own batch order; the reference repeated epoch 70 once (an
off-by-one that rsc does not reproduce).

It runs through the source run's own trainer (``Trainer.fit(..., resume=checkpoint)``): the
removed rows are not in the training tensor at all, so no batch can contain them."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from rsc_core import registry
from rsc_core.runs.checkpoints import build_model_from_checkpoint, read_checkpoint
from rsc_core.errors import CheckpointError, ConfigError
from rsc_core.training.regularisers import build_regularisers
from rsc_core.removal.remover import RemovalRequest, RemovalResult, Remover
from rsc_core.data.subsets import TrainSubset, apply_subset
from rsc_core.training.trainer import reference_milestones


class IncrementalRetrainingRemover(Remover):
    """Continue training from the source checkpoint and optimizer state without the forget set."""

    name = "incremental-retraining"
    description = ("continue training (optimizer state kept, lr fixed at its decayed value) "
                   "for more epochs without the forget set")
    defaults: dict[str, Any] = {"extra_epochs": None}
    types = {"extra_epochs": int}

    def resolve_options(self, options: Mapping[str, Any], source: Any,
                        forget: np.ndarray) -> dict[str, Any]:
        resolved = super().resolve_options(options, source, forget)
        if resolved["extra_epochs"] is None:
            resolved["extra_epochs"] = source.train_config.epochs
        if resolved["extra_epochs"] < 1:
            raise ConfigError(f"option 'extra_epochs' must be at least 1, got "
                              f"{resolved['extra_epochs']}")
        return resolved

    def tag(self, options: Mapping[str, Any]) -> str:
        """e.g. ``e70`` (the extra epochs)."""
        return f"e{options['extra_epochs']}"

    def remove(self, request: RemovalRequest) -> RemovalResult:
        source = request.source
        checkpoint = read_checkpoint(source.path / "model.pt")
        if not checkpoint.get("optimizer_state_dict"):
            fix = ("an imported model brings none: use -m retrain or -m group-influence"
                   if "imported" in source.config else "retrain the source with rsc train")
            raise CheckpointError(f"{source.path / 'model.pt'} holds no optimizer state, which "
                                  f"incremental retraining continues from; {fix}")
        config = source.train_config
        epochs = int(checkpoint.get("epoch") or config.epochs)
        extra = int(request.options["extra_epochs"])
        # The source's own milestones, given explicitly; the restored scheduler has none left,
        # so the learning rate stays where the source ended.
        continued = replace(config, epochs=epochs + extra,
                            milestones=config.milestones or reference_milestones(config.epochs))
        resume = dict(checkpoint)
        resume["epoch"] = epochs
        resume["scheduler_state_dict"] = _without_milestones(checkpoint.get(
            "scheduler_state_dict"), checkpoint["optimizer_state_dict"], epochs)
        reduced = apply_subset(request.data, TrainSubset.excluding(request.forget.tolist()))
        model = build_model_from_checkpoint(checkpoint)
        final: dict[str, Any] = {}

        def on_epoch(state, model, optimizer, scheduler) -> None:
            if state.epoch == continued.epochs:
                final["optimizer"] = optimizer.state_dict()
                final["scheduler"] = scheduler.state_dict()

        trainer = registry("trainers").create(config.trainer)
        state = trainer.fit(model, reduced.train, request.data.test, continued,
                            build_regularisers(config.regularisers), device=request.device,
                            resume=resume, on_epoch=on_epoch, progress=request.progress)
        new_history = state.history[epochs:]
        facts = {"epochs": [epochs + 1, continued.epochs], "num_train": len(reduced.train),
                 "learning_rates": sorted({h["lr"] for h in new_history}),
                 "final_train_loss": new_history[-1]["train_loss"] if new_history else None}
        return RemovalResult({k: v.detach().cpu() for k, v in model.state_dict().items()},
                             facts, final.get("optimizer"), final.get("scheduler"),
                             state.history)


def _without_milestones(scheduler_state: dict | None, optimizer_state: dict,
                        epoch: int) -> dict:
    """The source's MultiStepLR state with no milestones left: 'no scheduler'. A checkpoint
    without a scheduler state gets one that starts from the optimizer's stored lr."""
    lrs = [group["lr"] for group in optimizer_state["param_groups"]]
    state = dict(scheduler_state or {"gamma": 0.1, "base_lrs": lrs, "last_epoch": epoch,
                                     "_step_count": epoch + 1, "_last_lr": lrs})
    state["milestones"] = Counter()
    return state
