"""Pre-outs recorded on randomised inputs, kept for every layer, cached row and position."""

from __future__ import annotations

import torch

from ablate_lit.stats.exact import ExactMetric


class ResampleCache(ExactMetric):
    """``values[layer, row, pos, neuron]``: the pre-out that random input ``row`` produced.

    Layers may see different numbers of positions (the stages of a pyramid ViT pool tokens; ConViT's
    class token joins after its first layers): ``pos`` is the most any layer saw, and a layer's
    positions past its own count stay zero (the hook slices each layer's own count back).

    Each process records the rows its data loader gives it and leaves the others at zero; the sum
    across processes then assembles the whole cache, and ``filled`` (how many times each row was
    recorded, more than once only where a sampler padded) divides it back, exactly.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(
        self, n_layers: int, n_rows: int, length: int, width: int, dtype: torch.dtype = torch.float32, **kwargs
    ):
        super().__init__(**kwargs)
        self.add_state(
            "values", default=torch.zeros(n_layers, n_rows, length, width, dtype=dtype), dist_reduce_fx="sum"
        )
        self.add_state("filled", default=torch.zeros(n_layers, n_rows, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, layer: int, rows: torch.Tensor, x: torch.Tensor) -> None:  # rows [batch], x [batch, pos, width]
        if x.shape[-2] > self.values.shape[2]:  # a layer with more positions than any before it
            n_layers, n_rows, length, width = self.values.shape
            more = self.values.new_zeros(n_layers, n_rows, x.shape[-2] - length, width)
            self.values = torch.cat([self.values, more], 2)
        self.values[layer, :, : x.shape[-2]].index_add_(0, rows, x.detach().to(self.values.dtype))
        self.filled[layer].index_add_(0, rows, torch.ones_like(rows))

    def compute(self) -> torch.Tensor:
        if bool((self.filled == 0).any()):
            raise RuntimeError("resample cache has rows that no process recorded")
        return self.values / self.filled[:, :, None, None].to(self.values.dtype)
