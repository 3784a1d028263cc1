"""Streaming calibration statistics and evaluation metrics, all torchmetrics ``Metric``s."""

from ablate_lit.stats.histogram import NeuronHistogram
from ablate_lit.stats.moments import NeuronMoments
from ablate_lit.stats.resample import ResampleCache
from ablate_lit.stats.token_metrics import TokenScores

__all__ = ["NeuronHistogram", "NeuronMoments", "ResampleCache", "TokenScores"]
