"""First-order estimates of every neuron's ablation, per method: sums kept per evaluation window.

Replacing a neuron's activation ``a`` by ``v`` changes a loss L by about ``sum over positions of
(v - a) * dL/da`` (attribution patching; Nanda 2023, Kramar et al. 2024). The gradient does not
depend on the method, so one backward pass gives every method's estimate. ``AttributionSums`` keeps,
for each loss, each method and each evaluation window (a text window, an image, a task row), the sum
of those terms over the window's positions for every neuron of every layer, and what the window adds
to the loss's count (its scored tokens, or 1 per row); the estimated change of the mean loss is then
``sum over windows / count`` for a neuron, and the sum of its neurons' for a head or a layer (the
estimate is linear). Every state is a sum reduced across processes, so two processes give the
numbers of one.

With ``graddrop`` levels (AtP*'s GradDrop, Kramar et al. 2024, section 3.1.2) it also keeps, for the
ranked loss, each unit's magnitude summed over the L - 1 gradients that each drop one block's
contribution: per window the sum over l of |the terms with block l's gradient dropped| (the plain terms
for the blocks before the unit's own; zero for its own block). A unit whose effects through several
later blocks cancel in the plain estimate keeps them here. The absolute value is taken per unit, so
each level (neuron, head, layer) has its own state.
"""

from __future__ import annotations

import torch

from ablate_lit.stats.exact import ExactMetric


class AttributionSums(ExactMetric):
    """Per-window sums [n_windows, n_layers * width] of each (loss, method) pair's first-order terms."""

    full_state_update = False
    is_differentiable = False

    def __init__(
        self,
        n_windows: int,
        n_layers: int,
        width: int,
        losses: tuple[str, ...],
        methods: list[str],
        graddrop: dict[str, int] | None = None,
        **kw,
    ):
        """``graddrop``: {level: neurons per unit} (``neuron``: 1, ``head``: head_dim, ``layer``: width)
        whose GradDrop magnitudes are kept, under the last of ``losses`` (None: none)."""
        super().__init__(**kw)
        self.n_windows, self.n_layers, self.width = n_windows, n_layers, width
        self.losses, self.methods, self.graddrop = tuple(losses), list(methods), dict(graddrop or {})
        for level, size in self.graddrop.items():
            for i, _ in enumerate(self.methods):
                self.add_state(
                    f"gd_{level}_{i}",
                    default=torch.zeros(n_windows, n_layers * (width // size), dtype=torch.float64),
                    dist_reduce_fx="sum",
                )
        for loss in self.losses:
            self.add_state(f"count_{loss}", default=torch.zeros(n_windows, dtype=torch.int64), dist_reduce_fx="sum")
            for i, _ in enumerate(self.methods):
                self.add_state(
                    f"sum_{loss}_{i}",
                    default=torch.zeros(n_windows, n_layers * width, dtype=torch.float64),
                    dist_reduce_fx="sum",
                )

    def update(self, loss: str, method: str, layer: int, windows: torch.Tensor, terms: torch.Tensor) -> None:
        """Add ``terms`` [items, width] (each item's sum over its positions) of ``layer`` to the windows
        ``windows`` [items] of ``loss`` and ``method``."""
        state = getattr(self, f"sum_{loss}_{self.methods.index(method)}")
        state[:, layer * self.width : (layer + 1) * self.width].index_add_(0, windows, terms.double())

    def add_dropped(self, method: str, layer: int, windows: torch.Tensor, terms: torch.Tensor, times: int = 1) -> None:
        """Add ``times`` x the magnitude of ``terms`` [items, width] of ``layer`` (one dropped block's
        terms of ``method`` under the ranked loss), per unit of every GradDrop level, to ``windows``."""
        i = self.methods.index(method)
        for level, size in self.graddrop.items():
            units = self.width // size
            magnitude = terms.view(terms.shape[0], units, size).sum(-1).abs()
            state = getattr(self, f"gd_{level}_{i}")
            state[:, layer * units : (layer + 1) * units].index_add_(0, windows, magnitude, alpha=times)

    def count(self, loss: str, windows: torch.Tensor, counts: torch.Tensor) -> None:
        """Add each item's count (scored tokens, or 1 per task row) to its window."""
        getattr(self, f"count_{loss}").index_add_(0, windows, counts.long())

    def compute(self) -> dict:
        """{loss: {"count": [n_windows], method: [n_windows, n_layers * width]}} (per-window sums), and
        with GradDrop levels ``GRADDROP``: {method: {level: [n_windows, n_layers * units per layer]}}."""
        out = {
            loss: {
                "count": getattr(self, f"count_{loss}").clone(),
                **{m: getattr(self, f"sum_{loss}_{i}").clone() for i, m in enumerate(self.methods)},
            }
            for loss in self.losses
        }
        if self.graddrop:
            out[GRADDROP] = {
                m: {level: getattr(self, f"gd_{level}_{i}").clone() for level in self.graddrop}
                for i, m in enumerate(self.methods)
            }
        return out


GRADDROP = "graddrop"
"""The key of the GradDrop magnitudes in ``AttributionSums.compute()`` (beside the losses)."""


def losses_of(sums: dict) -> list[str]:
    """The attributed losses of ``AttributionSums.compute()``'s result, in order (the last one ranks)."""
    return [k for k in sums if k != GRADDROP]


def level_of(width: int, unit_size: int) -> str:
    """The GradDrop level of units of ``unit_size`` neurons."""
    return "neuron" if unit_size == 1 else "layer" if unit_size == width else "head"


def graddrop_windows(per_level: torch.Tensor, n_layers: int, layers: list[int]) -> torch.Tensor:
    """Per window, each unit of ``layers``' GradDrop magnitude summed over the dropped blocks
    [n_windows, n_units], from one level's state [n_windows, n_layers * units per layer]."""
    return per_level.view(per_level.shape[0], n_layers, -1)[:, layers].flatten(1)


def graddrop_estimates(per_level: torch.Tensor, count: torch.Tensor, n_layers: int, layers: list[int]):
    """Each unit of ``layers``' GradDrop score [n_units]: its magnitudes summed over the windows, divided
    by the ranked loss's count and by the L - 1 blocks dropped (the mean magnitude of a dropped estimate)."""
    total = graddrop_windows(per_level, n_layers, layers).sum(0)
    return total / count.sum().clamp_min(1).to(total.dtype) / max(n_layers - 1, 1)


def window_estimates(sums: torch.Tensor, width: int, unit_size: int, layers: list[int]) -> torch.Tensor:
    """Per window, each unit's summed terms [n_windows, n_units]: the neurons of each unit of ``layers``
    summed (``unit_size`` 1: neurons; head_dim: heads; ``width``: whole layers), from the per-window
    ``sums`` [n_windows, n_layers * width]."""
    per_layer = sums.view(sums.shape[0], -1, width)[:, layers]
    return per_layer.reshape(sums.shape[0], len(layers), width // unit_size, unit_size).sum(-1).flatten(1)


def unit_estimates(sums: torch.Tensor, count: torch.Tensor, width: int, unit_size: int, layers: list[int]):
    """The estimated change of the mean loss when each unit of ``layers`` is ablated alone [n_units]:
    its terms summed over every window, divided by the loss's count (scored tokens, or task rows)."""
    return window_estimates(sums, width, unit_size, layers).sum(0) / count.sum().clamp_min(1).to(sums.dtype)


def harm(loss: str, value):
    """How much worse a change of ``loss`` makes the model: a CE that rises, a logit difference that falls."""
    return -value if loss == "logit_diff" else value
