"""What a method reads: ``MethodContext``, filled in by the run (``run.experiment``).

A method checks its settings against the context and turns it into a point's replacement values;
it never reaches into the run that made the context. Statistics, resample caches and fitted
constants are computed when a method first asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ablate_lit.common.labels import Point


@dataclass
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
    """The resample sources this family has."""
    batch_major: bool
    """The hooked inputs are [batch, pos, width] (False for windowed attention)."""
    sharded: bool
    """The weights are sharded over the processes (FSDP2)."""
    statistics: Callable[[], object]
    """The calibration statistics (``CalibrationStats``), computed or loaded at the first call."""
    statistics_of: Callable[[str], object]
    """Statistics of other inputs: ``counterfactual`` (a task's counterfactual calibration prompts)."""
    resample: Callable[[str], torch.Tensor]
    """A source's resample cache [n_layers, rows, pos, width]."""
    fitted: Callable[[Point, str, bool], torch.Tensor]
    """A point's optimal constants for an objective (ce, kl): [n_layers, width], or per position
    [n_layers, pos, width]."""
    check_fit: Callable[[], object]
    """Refuses calibration data too small for fitting (optimal)."""
    counterfactual: bool = False
    """The data is a task with counterfactual prompts."""
    fixed_template: bool = False
    """The data is a task whose prompts share one token length (positions mean the same in every row)."""

    @property
    def stats(self):
        return self.statistics()
