"""Streaming per-neuron histograms on fixed bins of width eps, for peak (modal) values."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ablate_lit.stats.exact import ExactMetric

ALIGNMENTS = ("edge", "centered")


class NeuronHistogram(ExactMetric):
    """Counts of every neuron's activations in ``n_bins`` bins of width ``eps``.

    Bins lie on one global grid. With ``alignment="edge"`` (the paper's definition) grid bin k is
    ``[k*eps, (k+1)*eps)`` and its centre ``k*eps + eps/2``; with ``"centered"`` it is
    ``[(k-1/2)*eps, (k+1/2)*eps)`` with centre ``k*eps`` (so 0 can be a peak).

    Each neuron keeps a window of ``n_bins`` consecutive grid bins starting at grid index
    ``origin[layer, neuron]``, plus one underflow and one overflow slot. The window is centred on
    the neuron's mean in the first batch it sees (``set_origin`` may fix it beforehand; under
    several processes the origin must be the same everywhere, so it is set from synchronised
    values). Counts are int32 and reduced across processes by summation, which is exact because
    every process bins on the same edges. The update is one vectorised ``index_add_`` per layer.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_layers: int, width: int, eps: float, n_bins: int = 1024, alignment: str = "edge", **kwargs):
        super().__init__(**kwargs)
        if not eps > 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be a positive number, got {eps}")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment}")
        self.n_layers, self.width, self.eps, self.n_bins, self.alignment = n_layers, width, float(eps), int(n_bins), alignment
        self.shift = 0.0 if alignment == "edge" else 0.5
        self.add_state("counts", default=torch.zeros(n_layers, width, n_bins + 2, dtype=torch.int32), dist_reduce_fx="sum")
        # origin is configuration shared by all processes, not a reduced state.
        self.register_buffer("origin", torch.zeros(n_layers, width, dtype=torch.int64), persistent=False)
        self._origin_set = [False] * n_layers

    def grid_index(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x.to(torch.float32) / self.eps + self.shift).to(torch.int64)

    def set_origin(self, layer: int, centre: torch.Tensor) -> None:
        """Centre layer ``layer``'s windows on the values ``centre`` ([width])."""
        self.origin[layer] = self.grid_index(centre.to(self.origin.device)) - self.n_bins // 2
        self._origin_set[layer] = True

    def update(self, layer: int, x: torch.Tensor) -> None:  # x: [n_samples, width]
        x = x.detach()
        finite = torch.isfinite(x)
        if not self._origin_set[layer]:
            # Windows must sit on the same bins in every process: centre them on the mean of the
            # first batch of all processes together (every process reaches this point once per layer).
            xs = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)).to(torch.float64)
            total, count = xs.sum(0), finite.sum(0).to(torch.float64)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(total)
                dist.all_reduce(count)
            self.set_origin(layer, total / count.clamp_min(1))
        # slot 0 = underflow, 1..n_bins = window, n_bins+1 = overflow. Non-finite values add nothing
        # (weight 0; NeuronMoments counts them), branch-free so no host-device sync is needed.
        k = self.grid_index(torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)))
        slot = (k - self.origin[layer] + 1).clamp_(0, self.n_bins + 1)
        slot = (slot + torch.arange(self.width, device=x.device) * (self.n_bins + 2)).reshape(-1)
        self.counts[layer].view(-1).index_add_(0, slot, finite.reshape(-1).to(torch.int32))

    def compute(self) -> dict[str, torch.Tensor]:
        window = self.counts[..., 1:-1]
        # Ties go to the lowest bin (torch.argmax returns the first maximal index).
        best = window.argmax(-1)
        peak = (self.origin + best + 0.5 - self.shift).to(torch.float64) * self.eps
        return {
            "peak": peak,
            "peak_count": window.gather(-1, best[..., None]).squeeze(-1),
            "underflow": self.counts[..., 0],
            "overflow": self.counts[..., -1],
        }
