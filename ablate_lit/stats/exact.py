"""The base of every statistic here: states keep the dtype they were declared with."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from ablate_lit.common.private import metric_defaults

CHUNK_VALUES = 1 << 21
"""Values per temporary in a statistics update (2M: 16 MiB as float64), so a batch of 4096 tokens x
4096 neurons costs a few chunks of bounded memory instead of 330+ MiB of copies at once."""


def row_chunks(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``x`` [n_samples, width] split along samples into chunks of at most CHUNK_VALUES values (views)."""
    return x.split(max(1, CHUNK_VALUES // max(1, x.shape[-1])))


class ExactMetric(Metric):
    """A ``Metric`` whose states follow the module's device but never its dtype.

    Lightning's ``bf16-true`` / ``16-true`` precisions cast the whole LightningModule with
    ``module.to(dtype)``, and torchmetrics applies that cast to metric states: a float64 sum of
    cross-entropies would become bf16 (8 significant bits: summing 100k tokens would lose whole
    units). Here the cast is kept away from the states and their defaults; only the device moves.
    """

    def _apply(self, fn, exclude_state=()):  # (nn.Module's and torchmetrics' own override point)
        defaults = metric_defaults(self)
        this = super()._apply(fn, exclude_state=tuple(defaults))
        device = this.device
        for key, default in metric_defaults(this).items():
            metric_defaults(this)[key] = default.to(device)
            setattr(this, key, getattr(this, key).to(device))
        return this
