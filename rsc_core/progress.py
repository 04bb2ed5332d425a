"""A rich progress display for training: one bar for the run (epochs) and one for the current
epoch (batches), with the last epoch's loss and accuracy and the time left. Disabled, it costs
nothing, so scripts pass ``--quiet``."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn)


class EpochProgress:
    def __init__(self, epochs: int, batches_per_epoch: int, enabled: bool = True,
                 start_epoch: int = 0, console: Console | None = None) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.batches_per_epoch = batches_per_epoch
        self.start_epoch = start_epoch
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                console=console or Console(stderr=True), transient=False)

    def __enter__(self) -> "EpochProgress":
        if self._progress is not None:
            self._progress.start()
            self._run = self._progress.add_task("epochs", total=self.epochs,
                                                completed=self.start_epoch, stats="")
            self._epoch = self._progress.add_task(
                f"epoch {self.start_epoch + 1}", total=self.batches_per_epoch, stats="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._epoch)

    def end_epoch(self, record: dict[str, float]) -> None:
        if self._progress is None:
            return
        stats = f"loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
        if "test_accuracy" in record:
            stats += f" test {record['test_accuracy']:.4f}"
        self._progress.update(self._run, advance=1, stats=stats)
        epoch = int(record["epoch"])
        if epoch < self.epochs:
            self._progress.reset(self._epoch, description=f"epoch {epoch + 1}")
