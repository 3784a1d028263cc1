"""The single-unit schedule (``--ablation.schedule each``): every head (or whole layer) ablated alone
by every method, one layer's units evaluated together (``maps.step.UnitMapStep``); and the exact
checks of an attribution run (``maps.attribution``), whose units may be single neurons.

Points: the unablated baseline, then one ``UnitGroup`` per chosen layer, whose entries are the
(method, unit) pairs of that layer, each a row of its own (``target`` ``L3.H5``, ``L3.N17`` or
``L3``). A group is claimed, evaluated and stored as a whole, so a run resumes layer by layer.
"""

from __future__ import annotations

import torch

from ablate_lit.ablation.values import Replacements
from ablate_lit.common.labels import Point, UnitGroup, parse_target, target_name
from ablate_lit.maps.step import UnitMapStep


class UnitMap:
    """The points and masks of a single-unit map over ``layers`` of a model of ``n_layers`` x ``width``
    neurons, whose units are heads of ``head_dim`` neurons (``unit`` head), single neurons (``unit``
    neuron: an attribution run's exact checks) or whole layers."""

    def __init__(self, n_layers: int, width: int, head_dim: int, layers: list[int], unit: str, methods: list[str]):
        self.n_layers, self.width, self.layers, self.methods = n_layers, width, list(layers), list(methods)
        self.unit_width = {"head": head_dim, "neuron": 1}.get(unit, width)
        self.unit = unit

    def targets(self, layer: int) -> list[str]:
        if self.unit == "head":
            return [target_name(layer, h) for h in range(self.width // self.unit_width)]
        if self.unit == "neuron":
            return [target_name(layer, neuron=n) for n in range(self.width)]
        return [target_name(layer)]

    @staticmethod
    def layer_of(target: str) -> int:
        return parse_target(target)[0]

    def plan(self) -> list:
        """The baseline, then one group per chosen layer (entries by method, then unit)."""
        fraction = self.unit_width / (len(self.layers) * self.width)  # the share of the chosen layers' neurons
        points: list = [Point(0.0, "baseline", 0, tuple((m, 0) for m in self.methods))]
        for layer in self.layers:
            entries = tuple(Point(fraction, m, 0, ((m, 0),), t) for m in self.methods for t in self.targets(layer))
            points.append(UnitGroup(layer, entries))
        return points

    def mask(self, point: Point) -> torch.Tensor:
        """Boolean [n_layers, width]: the one unit ``point.target`` names."""
        layer, index = parse_target(point.target)
        mask = torch.zeros(self.n_layers, self.width, dtype=torch.bool)
        if index is None:
            mask[layer] = True
        else:
            mask[layer, index * self.unit_width : (index + 1) * self.unit_width] = True
        return mask

    def step(self, module, group: UnitGroup, values: Replacements, kl: bool, per_pass: int = 1) -> UnitMapStep:
        """The forward passes that score ``group``'s entries on each batch, ``per_pass`` per pass; their
        replacement values (statistics, fits) are ready before the evaluation's clock starts."""
        kept: dict = {}
        entries = [
            (mask, values.of_layer(e, mask, group.layer, module.device, kept))
            for e, mask in ((e, self.mask(e)) for e in group.entries)
        ]
        return UnitMapStep(module, group.layer, entries, kl, per_pass)

    @staticmethod
    def progress(group: UnitGroup, last: dict) -> str:
        ce = last.get("ce") if isinstance(last.get("ce"), list) and last["ce"] else [float("nan")]
        return f"layer {group.layer}: {len(group.entries)} single-unit evaluations, CE {min(ce):.4f} to {max(ce):.4f}"
