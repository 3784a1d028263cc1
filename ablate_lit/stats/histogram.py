"""Streaming per-neuron histograms on fixed bins of width eps, for peak (modal) values."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ablate_lit.stats.exact import ExactMetric, row_chunks

ALIGNMENTS = ("edge", "centered")


def bin_centre(grid_index: torch.Tensor, eps: float, alignment: str) -> torch.Tensor:
    """Centre of grid bin ``grid_index`` (integer tensor): ``(k + 1/2) * eps`` for the paper's edge
    bins, ``k * eps`` for centered ones; computed in float64 (float32 would round the index)."""
    shift = 0.0 if alignment == "edge" else 0.5
    return (grid_index.to(torch.float64) + (0.5 - shift)) * eps


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
        self.n_layers, self.width, self.eps, self.n_bins, self.alignment = (
            n_layers,
            width,
            float(eps),
            int(n_bins),
            alignment,
        )
        self.shift = 0.0 if alignment == "edge" else 0.5
        self.add_state(
            "counts", default=torch.zeros(n_layers, width, n_bins + 2, dtype=torch.int32), dist_reduce_fx="sum"
        )
        # origin is configuration shared by all processes, not a reduced state.
        self.register_buffer("origin", torch.zeros(n_layers, width, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets32", torch.arange(width, dtype=torch.int32) * (n_bins + 2), persistent=False)
        self._origin_set = [False] * n_layers
        self._exact32 = [False] * n_layers

    def grid_index(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x.to(torch.float32) / self.eps + self.shift).to(torch.int64)

    def set_origin(self, layer: int, centre: torch.Tensor) -> None:
        """Centre layer ``layer``'s windows on the values ``centre`` ([width])."""
        self.origin[layer] = self.grid_index(centre.to(self.origin.device)) - self.n_bins // 2
        self._origin_set[layer] = True
        # float32 holds every integer below 2**24 exactly: then the window's grid indices can be
        # computed in float32 and the slots kept in int32 (one check per layer, at its first batch).
        self._exact32[layer] = (
            bool(self.origin[layer].abs().max() + self.n_bins + 2 < 2**24) and self.width * (self.n_bins + 2) < 2**31
        )

    def update(self, layer: int, x: torch.Tensor) -> None:  # x: [n_samples, width]
        x = x.detach()
        if not self._origin_set[layer]:
            # Windows must sit on the same bins in every process: centre them on the mean of the
            # first batch of all processes together (every process reaches this point once per layer).
            total = torch.zeros(self.width, dtype=torch.float64, device=x.device)
            count = torch.zeros(self.width, dtype=torch.float64, device=x.device)
            for part in row_chunks(x):
                finite = torch.isfinite(part)
                total += torch.where(finite, part, torch.zeros((), dtype=part.dtype, device=part.device)).sum(
                    0, dtype=torch.float64
                )
                count += finite.sum(0)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(total)
                dist.all_reduce(count)
            if not count.any():  # no value yet in any process (every context already seen): the next batch
                return
            self.set_origin(layer, total / count.clamp_min(1))
        # slot 0 = underflow, 1..n_bins = window, n_bins+1 = overflow. Non-finite values add nothing
        # (weight 0; NeuronMoments counts them). Branch-free, so no host-device sync; in chunks of
        # bounded memory, with int32 slots where the window's grid indices are exact in float32.
        counts = self.counts[layer].view(-1)
        for part in row_chunks(x):
            finite = torch.isfinite(part)
            g = torch.where(finite, part, torch.zeros((), dtype=part.dtype, device=part.device))
            g = torch.floor(g.to(torch.float32) / self.eps + self.shift)  # the grid index, as a float
            if self._exact32[layer]:
                slot = (g - self.origin[layer].to(torch.float32) + 1).clamp_(0, self.n_bins + 1).to(torch.int32)
                slot = (slot + self.offsets32).reshape(-1)
            else:
                slot = (g.to(torch.int64) - self.origin[layer] + 1).clamp_(0, self.n_bins + 1)
                slot = (slot + self.offsets32.to(torch.int64)).reshape(-1)
            counts.index_add_(0, slot, finite.reshape(-1).to(torch.int32))

    def compute(self) -> dict[str, torch.Tensor]:
        window = self.counts[..., 1:-1]
        # Ties go to the lowest bin (torch.argmax returns the first maximal index).
        best = window.argmax(-1)
        peak = bin_centre(self.origin + best, self.eps, self.alignment)
        return {
            "peak": peak,
            "peak_count": window.gather(-1, best[..., None]).squeeze(-1),
            "underflow": self.counts[..., 0],
            "overflow": self.counts[..., -1],
            # the counts themselves, summed over processes: after compute() returns, torchmetrics puts
            # each process's own (unsynchronised) counts back into self.counts
            "counts": self.counts.clone(),
            "origin": self.origin.clone(),
        }
