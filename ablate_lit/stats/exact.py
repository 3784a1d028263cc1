"""The base of every statistic here: states keep the dtype they were declared with."""

from __future__ import annotations

from torchmetrics import Metric


class ExactMetric(Metric):
    """A ``Metric`` whose states follow the module's device but never its dtype.

    Lightning's ``bf16-true`` / ``16-true`` precisions cast the whole LightningModule with
    ``module.to(dtype)``, and torchmetrics applies that cast to metric states: a float64 sum of
    cross-entropies would become bf16 (8 significant bits: summing 100k tokens would lose whole
    units). Here the cast is kept away from the states and their defaults; only the device moves.
    """

    def _apply(self, fn, exclude_state=()):
        this = super()._apply(fn, exclude_state=tuple(self._defaults))
        device = this.device
        for key, default in this._defaults.items():
            this._defaults[key] = default.to(device)
            setattr(this, key, getattr(this, key).to(device))
        return this
