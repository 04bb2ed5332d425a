"""``retrain``: exact unlearning, the baseline the approximate methods are judged against.
Trains from scratch with the source run's full recipe (same seeds, same schedule) on the
training set without the forget set, as an ordinary rsc run on a training subset
(``request.training_subset``: the source's own training rows, its ``--exclude`` or kept rows,
without the forget set): the trained run lives in the runs folder beside its source, is
reused when it exists, and is exactly ``rsc train --exclude ...`` of the source's recipe."""
from __future__ import annotations

from typing import Any

from rsc_core.removal.remover import RemovalRequest, RemovalResult, Remover
from rsc_core.runs.training import train_run
from rsc_core.data.subsets import TrainSubset


class RetrainRemover(Remover):
    """Train from scratch with the source's recipe without the forget set (exact unlearning)."""

    name = "retrain"
    description = "train from scratch with the source's recipe without the forget set"
    defaults: dict[str, Any] = {}

    def remove(self, request: RemovalRequest) -> RemovalResult:
        source = request.source
        subset = request.training_subset or TrainSubset.excluding(request.forget.tolist())
        planted = request.data if request.planted is None else request.planted
        outcome = train_run(source.spec, source.train_config, runs_dir=request.runs_dir,
                            data_dir=request.data_dir, progress=request.progress,
                            device=str(request.device), dataset=planted, subset=subset)
        model = outcome.run.load_model()
        return RemovalResult({k: v.detach().cpu() for k, v in model.state_dict().items()},
                             {"trained_run": str(outcome.run.path), "reused": outcome.reused,
                              "num_train": len(request.data.train) - len(request.forget)})
