"""The single-unit schedule (``--ablation.schedule each``): every head (or whole layer) ablated alone
by every method, one layer's units evaluated together (``families.units.UnitMapStep``).

Points: the unablated baseline, then one ``UnitGroup`` per chosen layer, whose entries are the
(method, unit) pairs of that layer, each a row of its own (``target`` ``L3.H5`` or ``L3``). A group
is claimed, evaluated and stored as a whole, so a run resumes layer by layer.
"""

from __future__ import annotations

import torch

from ablate_lit.common.labels import Point, UnitGroup, parse_target, target_name
from ablate_lit.families.units import UnitMapStep


class OneLayer:
    """A [n_layers, ...] table of which only ``layer``'s slice is kept, on the device: all that an
    ablation of units of that one layer reads (a resample cache is large; its other layers stay out)."""

    def __init__(self, table: torch.Tensor, layer: int, device):
        self.layer, self.values = layer, table[layer].to(device)

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer != self.layer:
            raise IndexError(f"only layer {self.layer} is kept, not {layer}")
        return self.values


class UnitMap:
    def __init__(self, experiment):
        self.experiment = experiment
        self.cfg, self.module = experiment.cfg, experiment.module

    @property
    def unit_width(self) -> int:
        return self.module.pre_outs[0].head_dim if self.cfg.unit == "head" else self.module.hooks.width

    def targets(self, layer: int) -> list[str]:
        if self.cfg.unit == "head":
            return [target_name(layer, h) for h in range(self.module.hooks.width // self.unit_width)]
        return [target_name(layer)]

    def plan(self) -> list:
        """The baseline, then one group per chosen layer (entries by method, then unit)."""
        methods, n_neurons = self.cfg.methods, len(self.experiment.layers) * self.module.hooks.width
        fraction = self.unit_width / n_neurons  # the share of the chosen layers' neurons one unit is
        points: list = [Point(0.0, "baseline", 0, tuple((m, 0) for m in methods))]
        for layer in self.experiment.layers:
            entries = tuple(Point(fraction, m, 0, ((m, 0),), t) for m in methods for t in self.targets(layer))
            points.append(UnitGroup(layer, entries))
        return points

    def mask(self, point: Point) -> torch.Tensor:
        """Boolean [n_layers, width]: the one unit ``point.target`` names."""
        layer, head = parse_target(point.target)
        mask = torch.zeros(self.module.hooks.n_layers, self.module.hooks.width, dtype=torch.bool)
        if head is None:
            mask[layer] = True
        else:
            mask[layer, head * self.unit_width : (head + 1) * self.unit_width] = True
        return mask

    def _replacement(self, point: Point, cache: dict) -> dict:
        """``point``'s replacement values for its layer, on the device (once per method per group; per
        unit for a method fitted per point)."""
        exp, device = self.experiment, self.module.device
        method = exp.methods[point.method]
        key = (method.label, point.target) if method.per_point else method.label
        if key not in cache:
            layer = parse_target(point.target)[0]
            values = method.replacement(exp.context, point)
            cache[key] = {k: OneLayer(v, layer, device) if k == "resample" else v.to(device) for k, v in values.items()}
        return cache[key]

    def evaluate(self, group: UnitGroup, writer) -> None:
        """The group's entries still without a row, in one ``trainer.test`` over the evaluation data."""
        exp, module = self.experiment, self.module
        have = writer.store.keys(writer.store.read())
        todo = [e for e in group.entries if e.keys()[0] not in have]
        cache: dict = {}
        entries = [(self.mask(e), self._replacement(e, cache)) for e in todo]  # statistics, fits: before the clock
        step = UnitMapStep(module, group.layer, entries, module.kl)
        writer.begin_group(
            UnitGroup(group.layer, tuple(todo)),
            [int(m.sum()) for m, _ in entries],
            len(exp.layers) * module.hooks.width,
        )
        module.unit_step = step
        try:
            exp.trainer.test(module, dataloaders=exp.data.test_dataloader(), verbose=False)
        finally:
            module.unit_step = None
        if not step.prefix and step.blocks:
            exp.say_once(
                "single-unit map: this model's blocks could not answer from kept outputs; every "
                "evaluation runs the whole model"
            )

    @staticmethod
    def progress(group: UnitGroup, last: dict) -> str:
        ce = last.get("ce") if isinstance(last.get("ce"), list) and last["ce"] else [float("nan")]
        return f"layer {group.layer}: {len(group.entries)} single-unit evaluations, CE {min(ce):.4f} to {max(ce):.4f}"
