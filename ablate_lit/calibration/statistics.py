"""The calibration statistics of every neuron, and the values each method derives from them.

One object owns the bin grid: every value read off the histograms (peak, median, the refined peak,
peaks at coarser bin widths, the figures' bin centres) goes through ``centre``, i.e. through
``stats.histogram.bin_centre``.
"""

from __future__ import annotations

import torch

from ablate_lit.stats.histogram import bin_centre

FIELDS = {
    "mean": "sum / count of the activations, accumulated in float64 [n_layers, width]",
    "std": "population standard deviation",
    "skew": "population skewness",
    "kurtosis": "population kurtosis (3 for a normal distribution)",
    "bimodality": "Sarle's bimodality coefficient (> 5/9 suggests several modes)",
    "count": "finite activations seen",
    "min": "smallest activation",
    "max": "largest activation",
    "nonfinite": "NaN/inf activations per layer [n_layers]",
    "peak": "centre of the fullest eps-bin (the paper's peak; ties: the lowest bin)",
    "peak_count": "activations in the fullest bin",
    "underflow": "activations below the neuron's histogram window",
    "overflow": "activations above it",
    "counts": "int32 histograms [n_layers, width, n_bins + 2]: slot 0 underflow, 1..n_bins the window, last overflow",
    "origin": "grid index of each neuron's first window bin [n_layers, width]",
    "eps": "bin width",
    "n_bins": "bins per neuron window",
    "alignment": "edge (bins [k eps, (k+1) eps)) or centered",
}


class _Field:
    """A statistic of ``FIELDS`` read as an attribute (``stats.mean``)."""

    def __init__(self, name: str):
        self.name, self.__doc__ = name, FIELDS[name]

    def __get__(self, stats, owner=None):
        return self if stats is None else stats.values[self.name]


class CalibrationStats:
    """Per-neuron statistics of the calibration activations, each an attribute (``stats.mean``,
    ``stats.peak``; FIELDS documents each), with the values derived from them as methods (``median``,
    ``peak_at``, ``peak_refined``). Also indexable like the dict it is stored as (``stats["mean"]``)."""

    def __init__(self, values: dict):
        self.values = values

    def __getitem__(self, key: str):
        return self.values[key]

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default=None):
        return self.values.get(key, default)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values["mean"].shape)

    def centre(self, grid_index: torch.Tensor) -> torch.Tensor:
        return bin_centre(grid_index, self.values["eps"], self.values["alignment"])

    @property
    def window(self) -> torch.Tensor:
        """[n_layers, width, n_bins] counts inside each neuron's window (int64)."""
        return self.values["counts"][..., 1:-1].long()

    def median(self) -> torch.Tensor:
        """Centre of the bin holding each neuron's lower median (the value of rank ceil(n/2)); values
        outside the window count toward the rank, and a median outside it is clamped to its edge."""
        counts = self.values["counts"].long()
        cdf = counts.cumsum(-1)
        rank = (counts.sum(-1) + 1) // 2  # ceil(n / 2)
        slot = (cdf < rank[..., None]).sum(-1).clamp(1, counts.shape[-1] - 2)  # first slot reaching the rank
        return self.centre(self.values["origin"] + slot - 1)

    def peak_refined(self) -> torch.Tensor:
        """A sub-bin mode, less biased by the grid than the paper's peak: each neuron's histogram is
        smoothed with a Gaussian of width std x n^(-1/7) (the rate for estimating a mode; at least one
        bin), and the fullest smoothed bin's centre is moved to the vertex of the parabola through it
        and the smoothed counts one smoothing width to either side. A symmetric mode at 0, which the paper's bins
        [k eps, (k+1) eps) put at +-eps/2, comes out at ~0."""
        eps = self.values["eps"]
        n = self.values["count"].double().clamp_min(1)
        sigma_bins = (self.values["std"].double() * n ** (-1 / 7) / eps).clamp(1.0, 64.0).round()  # [L, W]
        peaks = torch.empty(self.shape, dtype=torch.float64)
        for layer, window in enumerate(self.window.double()):
            smooth = torch.empty_like(window)
            for sigma in sigma_bins[layer].unique().tolist():  # one convolution per kernel width in use
                rows = (sigma_bins[layer] == sigma).nonzero().squeeze(1)
                half = int(3 * sigma)
                kernel = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=torch.float64) / sigma) ** 2)
                smooth[rows] = torch.nn.functional.conv1d(window[rows, None], kernel[None, None], padding=half)[:, 0]
            best = smooth.argmax(-1, keepdim=True)
            h = sigma_bins[layer, :, None].long()  # the parabola's points are one smoothing width apart
            last = smooth.shape[-1] - 1
            left, mid, right = (
                smooth.gather(-1, (best - h).clamp_min(0)),
                smooth.gather(-1, best),
                smooth.gather(-1, (best + h).clamp_max(last)),
            )
            curvature = left - 2 * mid + right
            inner = (best - h >= 0) & (best + h <= last) & (curvature < 0)
            shift = (
                torch.where(inner, 0.5 * (left - right) / curvature.where(curvature < 0, -1.0), 0.0).clamp(-1, 1) * h
            )
            peaks[layer] = self.centre(self.values["origin"][layer] + best.squeeze(-1)) + shift.squeeze(-1) * eps
        return peaks

    def peak_at(self, multiple: int) -> torch.Tensor:
        """The peak with bins ``multiple`` times as wide, by merging the calibration histogram's bins
        (no new pass): edge bins [K m eps, (K+1) m eps) are exact unions of m fine bins (centered
        ones are for odd m). Ties go to the lowest bin."""
        if multiple == 1:
            return self.values["peak"]
        eps, alignment = self.values["eps"], self.values["alignment"]
        peaks = []
        for window, origin in zip(self.window, self.values["origin"]):  # a layer at a time: bounded memory
            fine = origin[:, None] + torch.arange(window.shape[-1])  # grid index of each window bin
            if alignment == "edge":  # coarse bin K = [K m eps, (K+1) m eps)
                coarse = torch.div(fine, multiple, rounding_mode="floor")
            else:  # coarse bin K centred on K m eps: K = floor(k / m + 1/2)
                coarse = torch.div(2 * fine + multiple, 2 * multiple, rounding_mode="floor")
            low = coarse[:, :1]
            merged = torch.zeros(window.shape[0], int((coarse - low).max()) + 1, dtype=torch.int64)
            merged.scatter_add_(1, coarse - low, window)
            peaks.append(merged.argmax(1) + low.squeeze(1))
        return bin_centre(torch.stack(peaks), multiple * eps, alignment)


for _name in FIELDS:
    setattr(CalibrationStats, _name, _Field(_name))
