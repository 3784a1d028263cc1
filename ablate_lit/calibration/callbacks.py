"""Lightning callbacks that record pre-out activations while a validation epoch runs.

Each sweep is one validation epoch with recording hooks on every pre-out:
  * ``StatisticsCallback`` (over the calibration split): streaming moments (mean) and per-neuron
    histograms (peak), all neurons at once;
  * ``ResampleCallback`` (over randomised inputs): the pre-outs of every input, kept per row and position.
Hooks are attached at epoch start and removed at epoch end or on any exception.
"""

from __future__ import annotations

import lightning as L
import torch

from ablate_lit.common.errors import AblateError
from ablate_lit.common.sharding import is_sharded
from ablate_lit.stats import NeuronHistogram, NeuronMoments, ResampleCache


class _RecordingCallback(L.Callback):
    """Attaches ``record`` to every pre-out for the validation epoch; ``result`` holds what it computed."""

    def __init__(self):
        self.result: dict | None = None
        self._ctx = None
        self._rows: torch.Tensor | None = None
        self._valid: torch.Tensor | None = None

    def _start(self, pl_module) -> None:
        """Set up the metrics of a new epoch on ``pl_module``'s device."""

    def record(self, layer: int, x: torch.Tensor) -> None:
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._hooks = pl_module.hooks
        self._start(pl_module)
        # A forward pass ends after the last hooked layer; not under a sharding strategy, whose
        # per-block gathering must see every block finish.
        self._ctx = pl_module.hooks.recording(self.record, stop_after_last=not is_sharded(trainer.strategy))
        self._ctx.__enter__()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._rows = batch["index"]
        self._valid = batch.get("valid")  # [batch, pos]: task sequences are padded at the end

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()

    def _close(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)


class StatisticsCallback(_RecordingCallback):
    """Moments and eps-binned histograms of every neuron over the calibration split."""

    def __init__(self, eps: float, n_bins: int, alignment: str):
        super().__init__()
        self.eps, self.n_bins, self.alignment = eps, n_bins, alignment

    def _start(self, pl_module) -> None:
        hooks, device = pl_module.hooks, pl_module.device
        self.moments = NeuronMoments(hooks.n_layers, hooks.width).to(device)
        self.hist = NeuronHistogram(hooks.n_layers, hooks.width, self.eps, self.n_bins, self.alignment).to(device)

    def record(self, layer: int, x: torch.Tensor) -> None:
        valid = self._valid
        if valid is not None and tuple(valid.shape) == tuple(x.shape[:2]):
            x = x[valid.to(x.device)]  # the positions that are not padding [n, width]
        x = x.reshape(-1, x.shape[-1])  # [batch*pos, width]
        self.moments.update(layer, x)
        self.hist.update(layer, x)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._close()
        moments, hist = self.moments.compute(), self.hist.compute()
        bad = moments["nonfinite"]
        if int(bad.sum()):
            layers = [i for i, n in enumerate(bad.tolist()) if n]
            raise AblateError(
                f"{int(bad.sum())} NaN/inf pre-out activations in calibration (layers {layers}); "
                "the model overflows in this precision: use ⟨--trainer.precision 32⟩ or ⟨--model.dtype⟩ float32"
            )
        self.result = {
            **{k: v.cpu() for k, v in moments.items()},
            **{k: v.cpu() for k, v in hist.items()},
            "eps": self.eps,
            "n_bins": self.n_bins,
            "alignment": self.alignment,
        }


class ResampleCallback(_RecordingCallback):
    """The pre-outs of ``n_rows`` inputs, per row and position: [n_layers, n_rows, pos, width]."""

    def __init__(self, n_rows: int):
        super().__init__()
        self.n_rows = n_rows

    def _start(self, pl_module) -> None:
        self.cache = None  # sized at the first batch, from the number of positions the model sees

    def record(self, layer: int, x: torch.Tensor) -> None:  # x: [batch, pos, width]
        if self.cache is None:
            n_layers = len(self._hooks.pre_outs)
            self.cache = ResampleCache(n_layers, self.n_rows, x.shape[-2], x.shape[-1], dtype=x.dtype).to(x.device)
        self.cache.update(layer, self._rows, x)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._close()
        self.result = {"resample": self.cache.compute().cpu()}
