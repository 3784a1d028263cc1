"""Per-neuron moments of the pre-out activations: sum, sum of squares, count, min, max."""

from __future__ import annotations

import torch

from ablate_lit.stats.exact import ExactMetric, row_chunks


class NeuronMoments(ExactMetric):
    """Streaming moments of ``[n_layers, width]`` neurons: power sums up to 4, accumulated in float64.

    ``update(layer, x)`` takes one layer's activations ``[n_samples, width]`` in any dtype. The mean
    is sum / count (never an average of per-batch or per-process means); ``std`` is the population
    standard deviation, ``skew`` and ``kurtosis`` the population (biased) moment ratios, and
    ``bimodality`` Sarle's coefficient (skew^2 + 1) / (excess kurtosis + 3(n-1)^2 / ((n-2)(n-3))).
    Non-finite values are counted per layer and excluded from every state.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_layers: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.n_layers, self.width = n_layers, width
        zeros = torch.zeros(n_layers, width, dtype=torch.float64)
        self.add_state("sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("sumsq", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("sum3", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("sum4", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(n_layers, width, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.zeros(n_layers, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state(
            "min", default=torch.full((n_layers, width), float("inf"), dtype=torch.float64), dist_reduce_fx="min"
        )
        self.add_state(
            "max", default=torch.full((n_layers, width), float("-inf"), dtype=torch.float64), dist_reduce_fx="max"
        )

    def update(self, layer: int, x: torch.Tensor) -> None:  # x: [n_samples, width]
        if x.shape[0] == 0:  # a batch with nothing new to count (a task's contexts, each counted once)
            return
        # Branch-free (no host-device sync per layer and batch), in chunks of bounded memory.
        for part in row_chunks(x.detach()):
            part = part.to(torch.float64)
            finite = torch.isfinite(part)
            self.nonfinite[layer] += (~finite).sum()
            zero = torch.zeros((), dtype=part.dtype, device=part.device)
            big = torch.full((), float("inf"), dtype=part.dtype, device=part.device)
            self.min[layer] = torch.minimum(self.min[layer], torch.where(finite, part, big).amin(0))
            self.max[layer] = torch.maximum(self.max[layer], torch.where(finite, part, -big).amax(0))
            part = torch.where(finite, part, zero)
            x2 = part * part
            self.sum[layer] += part.sum(0)
            self.sumsq[layer] += x2.sum(0)
            self.sum3[layer] += (x2 * part).sum(0)
            self.sum4[layer] += (x2 * x2).sum(0)
            self.count[layer] += finite.sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1).to(torch.float64)
        mean = self.sum / n
        e2, e3, e4 = self.sumsq / n, self.sum3 / n, self.sum4 / n
        var = (e2 - mean**2).clamp_min(0)
        mu3 = e3 - 3 * mean * e2 + 2 * mean**3
        mu4 = e4 - 4 * mean * e3 + 6 * mean**2 * e2 - 3 * mean**4
        tiny = torch.finfo(torch.float64).tiny
        skew = mu3 / var.clamp_min(tiny) ** 1.5
        kurtosis = mu4 / var.clamp_min(tiny) ** 2  # 3 for a normal distribution
        # Sarle's bimodality coefficient (sample-size corrected); above 5/9 suggests several modes.
        correction = 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)).clamp_min(1)
        bimodality = (skew**2 + 1) / ((kurtosis - 3) + correction)
        return {
            "mean": mean,
            "std": var.sqrt(),
            "skew": skew,
            "kurtosis": kurtosis,
            "bimodality": bimodality,
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "nonfinite": self.nonfinite,
        }
