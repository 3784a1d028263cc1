"""A Lightning callback that says where a long sweep is when the run has been quiet for a while."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from ablate_lit.common.progress import Heartbeat


class SweepHeartbeat(Callback):
    """During a calibration sweep (``stage`` validate) or the evaluations (``stage`` test): a progress
    line with the batches done and the step's own ETA, whenever nothing was printed for
    ``progress.EVERY_S`` seconds. ``what`` names the step (it may be changed between epochs)."""

    def __init__(self, what: str, stage: str = "validate"):
        self.what, self.stage = what, stage
        self.beat: Heartbeat | None = None

    def _start(self, trainer, stage: str) -> None:
        self._end()
        if stage == self.stage:
            self.beat = Heartbeat(trainer, self.what, "batches", in_loop=True).start()

    def _end(self) -> None:
        if self.beat is not None:
            self.beat.stop()
            self.beat = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, "validate")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, "test")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._end()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._end()

    def _tick(self, batch_idx: int, totals) -> None:
        if self.beat is not None:
            total = totals[0] if totals else None
            self.beat.tick(batch_idx + 1, int(total) if total is not None and total != float("inf") else None)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tick(batch_idx, trainer.num_val_batches)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tick(batch_idx, trainer.num_test_batches)
