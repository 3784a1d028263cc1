"""A point's replacement values, on the device where the model runs.

A method's values depend only on the calibration data (or, for a method fitted per point, on the
point's neuron set), so they are computed once per method and moved to the device once: the
schedule runs the points of one method together, and only the current method's values stay on the
device (a resample cache can take GiBs). A single-unit map keeps only its layer's slice of them.
"""

from __future__ import annotations

import torch

from ablate_lit.ablation.context import MethodContext
from ablate_lit.ablation.methods import Method
from ablate_lit.common.labels import Point


class OneLayer:
    """A [n_layers, ...] table of which only ``layer``'s slice is kept, on the device: all that an
    ablation of units of that one layer reads (a resample cache is large; its other layers stay out)."""

    def __init__(self, table: torch.Tensor, layer: int, device):
        self.layer, self.values = layer, table[layer].to(device)

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer != self.layer:
            raise IndexError(f"only layer {self.layer} is kept, not {layer}")
        return self.values


class Replacements:
    """The replacement values of each point: ``of(point, mask, device)`` for every layer, ``of_many``
    for the methods of one neuron set at once, ``of_layer`` for one layer's units (single-unit maps)."""

    def __init__(self, methods: dict[str, Method], context: MethodContext):
        self.methods, self.context = methods, context
        self._on_device: dict = {}
        """The values on the device now, by method (by point for a method fitted per point)."""
        self._pinned: dict[str, dict] = {}

    def pin(self, values: dict[str, dict]) -> None:
        """Use ``values`` (method label -> its values for every layer) for those methods at every point: an
        attribution run's exact checks measure the constants its estimates are of (optimal's one fit of
        every unit of the chosen layers, where a single-unit map fits each unit)."""
        self._pinned = dict(values)

    def _key(self, point: Point):
        method = self.methods[point.method]
        per_point = method.per_point and method.label not in self._pinned
        return (method.label, point.seed, point.fraction, point.target) if per_point else method.label

    def _replacement(self, point: Point, mask: torch.Tensor) -> dict:
        pinned = self._pinned.get(point.method)
        return pinned if pinned is not None else self.methods[point.method].replacement(self.context, point, mask)

    def of_many(self, points: list[Point], mask: torch.Tensor, device) -> list[dict]:
        """The values of ``points`` (one neuron set, ``mask``) on ``device``: moved there once per method
        (once per point for a method fitted per point). Only these points' values stay on the device:
        the others leave first (a resample cache can take GiBs)."""
        keys = [self._key(p) for p in points]
        self._on_device = {k: v for k, v in self._on_device.items() if k in keys}
        for key, point in zip(keys, points, strict=True):
            if key not in self._on_device:
                values = self._replacement(point, mask)
                self._on_device[key] = {k: v.to(device) for k, v in values.items()}
        return [self._on_device[k] for k in keys]

    def of(self, point: Point, mask: torch.Tensor, device) -> dict:
        """``point``'s values on ``device`` (``of_many`` of one point)."""
        return self.of_many([point], mask, device)[0]

    def of_layer(self, point: Point, mask: torch.Tensor, layer: int, device, kept: dict) -> dict:
        """``point``'s values for units of ``layer`` only, kept in ``kept`` (one dict per layer's group):
        once per method, or per unit for a method fitted per point."""
        key = self._key(point)
        if key not in kept:
            values = self._replacement(point, mask)
            kept[key] = {k: OneLayer(v, layer, device) if k == "resample" else v.to(device) for k, v in values.items()}
        return kept[key]
