"""A Lightning callback that counts a loop's batches into the run's current step (``common.progress``)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from lightning.pytorch.callbacks import Callback

from ablate_lit.common import progress


def _total(totals) -> int | None:
    total = totals[0] if totals else None
    return int(total) if total is not None and total != float("inf") else None


class BatchTicks(Callback):
    """During a calibration sweep (``trainer.validate``) or an evaluation (``trainer.test``): each batch
    done ticks the innermost running step of the run's progress, so its bar, its pace and the ETA move."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        progress.RUN.tick(progress.BATCHED, batch_idx + 1, _total(trainer.num_val_batches))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        progress.RUN.tick(progress.BATCHED, batch_idx + 1, _total(trainer.num_test_batches))


@contextmanager
def loop_callbacks(trainer, *callbacks: Callback) -> Iterator[None]:
    """``callbacks`` and the batch counter on ``trainer`` inside this block (removed after, whatever happens)."""
    added = [*callbacks, BatchTicks()]
    trainer.callbacks += added
    try:
        yield
    finally:
        for callback in added:
            trainer.callbacks.remove(callback)
