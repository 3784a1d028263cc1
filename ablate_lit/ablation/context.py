"""What a method reads: ``MethodContext``, built once per run by the runner (``runner.launch``).

A method checks its settings against the context and turns it, with a point's neuron set, into the
point's replacement values. The context holds facts about the run (the model's shape, the binning,
the data) and two collaborators, typed by the protocols below: the run's calibration (statistics
and resample caches, computed when first asked for) and the optimal fitter. A method never reaches
into the run that made the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ablate_lit.common.labels import Point


class Calibrated(Protocol):
    """The run's calibration (``calibration.cache.CalibrationCache``)."""

    def statistics(self, which: str = "calibration"):
        """Per-neuron statistics (``CalibrationStats``) of the calibration split, or of a task's
        counterfactual calibration prompts (``which="counterfactual"``); computed once."""

    def resample(self, source: str) -> torch.Tensor:
        """A source's resample cache [n_layers, rows, pos, width]."""

    def statistics_work(self, which: str = "calibration") -> list:
        """The sweep ``statistics(which)`` takes (``common.progress.Work``; none when on disk)."""

    def resample_work(self, source: str) -> list:
        """The steps building ``source``'s cache takes (none when on disk)."""


class Fits(Protocol):
    """Optimal constants per point (``ablation.fitter.OptimalFitter``)."""

    def fitted(self, point: Point, mask: torch.Tensor, stats, objective: str, per_position: bool) -> torch.Tensor:
        """The constants [n_layers, width] (per position [n_layers, pos, width]) minimising ``objective``."""

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The calibration rows fitted on and held out; refuses calibration data too small to split."""

    def work(self, point: Point):
        """The fit of ``point``'s constants as a step of the run (``common.progress.Work``)."""


@dataclass(frozen=True)
class MethodContext:
    eps: float
    """The calibration histogram's bin width."""
    bin_alignment: str
    """edge or centered bins."""
    n_layers: int
    width: int
    """Units per layer (neurons of the hooked site)."""
    family: str
    """causal_lm, masked_lm or vision."""
    resample_sources: tuple[str, ...]
    """The resample sources this run's model and data have."""
    batch_major: bool
    """The hooked inputs are [batch, pos, width] (False for windowed attention)."""
    sharded: bool
    """The weights are sharded over the processes (FSDP2)."""
    calibration: Calibrated
    """Statistics and resample caches."""
    fits: Fits
    """Optimal constants per point."""
    counterfactual: bool = False
    """The data is a task with counterfactual prompts."""
    fixed_template: bool = False
    """The data is a task whose prompts share one token length (positions mean the same in every row)."""

    @property
    def stats(self):
        """The calibration statistics (computed or loaded at the first call)."""
        return self.calibration.statistics()
