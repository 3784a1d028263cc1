"""Per-neuron moments of the pre-out activations: sum, sum of squares, count, min, max."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class NeuronMoments(Metric):
    """Streaming moments of ``[n_layers, width]`` neurons, accumulated in float64.

    ``update(layer, x)`` takes one layer's activations ``[n_samples, width]`` in any dtype. The mean
    is sum / count (never an average of per-batch or per-process means); ``std`` is the population
    standard deviation. Non-finite values are counted per layer and excluded from every state.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_layers: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.n_layers, self.width = n_layers, width
        zeros = torch.zeros(n_layers, width, dtype=torch.float64)
        self.add_state("sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("sumsq", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(n_layers, width, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.zeros(n_layers, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("min", default=torch.full((n_layers, width), float("inf"), dtype=torch.float64), dist_reduce_fx="min")
        self.add_state("max", default=torch.full((n_layers, width), float("-inf"), dtype=torch.float64), dist_reduce_fx="max")

    def update(self, layer: int, x: torch.Tensor) -> None:  # x: [n_samples, width]
        x = x.detach().to(torch.float64)
        finite = torch.isfinite(x)
        n_bad = int(x.numel() - finite.sum())
        if n_bad:
            self.nonfinite[layer] += n_bad
            x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        self.sum[layer] += x.sum(0)
        self.sumsq[layer] += (x * x).sum(0)
        self.count[layer] += finite.sum(0)
        big = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
        self.min[layer] = torch.minimum(self.min[layer], torch.where(finite, x, big).amin(0))
        self.max[layer] = torch.maximum(self.max[layer], torch.where(finite, x, -big).amax(0))

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp_min(1).to(torch.float64)
        mean = self.sum / count
        var = (self.sumsq / count - mean * mean).clamp_min(0)
        return {"mean": mean, "std": var.sqrt(), "count": self.count, "min": self.min, "max": self.max,
                "nonfinite": self.nonfinite}
