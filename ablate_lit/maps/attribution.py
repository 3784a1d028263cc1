"""Attribution maps (``--ablation.schedule attribution``): every neuron's estimated effect under every
method from one forward and one backward pass per batch, and the units whose effect is then measured
exactly.

``AttributionStep`` scores a batch: every pre-out ``a`` is perturbed by a zero that requires grad
(``PreOutHooks.perturbing``), the scored losses (``Scores.ATTRIBUTED``: CE; a task's answer CE and
logit difference) are summed over the batch, and one backward pass per loss gives ``dL/da`` at every
position of every neuron (parameters need no gradient). Each method's replacement ``v`` then adds
``sum over positions of (v - a) * dL/da`` to its per-window sums (``stats.attribution``): a constant
per neuron, one per position, or the resample rows an exact evaluation would draw for each input.
With GradDrop (AtP*), one more backward pass per block follows, each with that block's branches
passing no gradient (``sites.hooks.BlockGradients``), and the magnitudes of its terms are kept.

``units_to_check`` chooses what is measured exactly: for each method its ``top_k`` units of largest
estimated harm (and of largest GradDrop score), and one random sample of units shared by the methods;
``check_plan`` turns them into the single-unit groups of ``maps.units`` (a layer's units together, from
one unablated pass per batch).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ablate_lit.common.labels import Point, UnitGroup
from ablate_lit.stats.attribution import (
    GRADDROP,
    AttributionSums,
    graddrop_estimates,
    harm,
    level_of,
    losses_of,
    unit_estimates,
)


class AttributionStep:
    """Per batch of an evaluation epoch: the first-order terms of every method of ``values`` (label ->
    replacement on the device) under every loss the module's scores attribute, added to ``sums``; with
    ``gates`` (a ``sites.hooks.BlockGradients``) also GradDrop's magnitudes under the last loss: one more
    backward pass per block, each with that block's gradient dropped."""

    def __init__(self, module, values: dict[str, dict], sums: AttributionSums, pooled: bool = False, gates=None):
        self.module, self.values, self.sums, self.pooled, self.gates = module, values, sums, pooled, gates
        """``pooled``: every item adds to window 0 (totals only: an order's estimate on calibration inputs)."""
        self.losses = sums.losses

    def reset(self) -> None:
        """(The sums run over the whole sweep.)"""

    def step(self, batch, record: bool = True) -> None:
        module, gates = self.module, self.gates
        with torch.inference_mode(False), torch.enable_grad():  # Lightning's test loop runs in inference mode
            batch = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
            kept: dict[int, tuple] = {}
            with module.hooks.perturbing(kept), gates.passing() if gates else nullcontext():
                logits, labels = module.logits_and_labels(batch)
            layers = sorted(kept)
            for i, loss in enumerate(self.losses):
                total, windows, counts = module.scores.attributed(loss, batch, logits, labels)
                windows = torch.zeros_like(windows) if self.pooled else windows
                last = i == len(self.losses) - 1
                grads = torch.autograd.grad(
                    total, [kept[layer][1] for layer in layers], retain_graph=not last or gates is not None
                )
                if record:
                    self.sums.count(loss, windows, counts)
                    for layer, grad in zip(layers, grads, strict=True):
                        for method, terms in self._terms(layer, kept[layer][0], grad, batch, windows):
                            self.sums.update(loss, method, layer, windows, terms)
                            if last and gates is not None and layer > 0:  # blocks before its own: the plain terms
                                self.sums.add_dropped(method, layer, windows, terms, times=layer)
            if gates is not None:
                self._dropped(total, kept, layers, batch, windows, record)

    def _dropped(self, total, kept: dict, layers: list[int], batch, windows, record: bool) -> None:
        """GradDrop: for each block l, the gradient of ``total`` with l's branches passing none, and the
        magnitude of every method's terms of the pre-outs before l (the unit's own block adds zero)."""
        n_blocks = len(self.gates.branches)
        try:
            for dropped in range(1, n_blocks):
                below = [layer for layer in layers if layer < dropped]
                if not below:
                    continue
                self.gates.dropped = dropped
                grads = torch.autograd.grad(
                    total, [kept[layer][1] for layer in below], retain_graph=dropped < n_blocks - 1
                )
                if record:
                    for layer, grad in zip(below, grads, strict=True):
                        for method, terms in self._terms(layer, kept[layer][0], grad, batch, windows):
                            self.sums.add_dropped(method, layer, windows, terms)
        finally:
            self.gates.dropped = None

    def _terms(self, layer: int, a: torch.Tensor, grad: torch.Tensor, batch, windows):
        """(method, its terms (v - a) * dL/da of ``layer`` summed over each item's positions [items, width])
        for every method."""
        items = windows.numel()
        a = a.reshape(items, -1, a.shape[-1]).float()
        g = grad.reshape(items, -1, grad.shape[-1]).float()
        positions, exact = a.shape[1], torch.float64  # (products in float32, sums over positions in float64)
        own = (a * g).sum(1, dtype=exact)  # [items, width]: what the replaced activations contributed
        summed = g.sum(1, dtype=exact)
        for method, replacement in self.values.items():
            if "resample" in replacement:
                cache = replacement["resample"][layer]
                rows = cache[batch["index"] % cache.shape[0], :positions].float()  # what each input would get
                yield method, (rows * g).sum(1, dtype=exact) - own
            else:
                v = replacement["values"][layer]
                yield (
                    method,
                    (
                        (v[:positions].float() * g).sum(1, dtype=exact) - own
                        if v.dim() == 2
                        else v.double() * summed - own
                    ),
                )


def units_to_check(
    sums: dict,
    methods: list[str],
    targets: list[str],
    shape: tuple[int, int, list[int]],
    top_k: int,
    sample: int,
    seed: int,
) -> dict[str, list[str]]:
    """{method: the units measured exactly}: its ``top_k`` of largest estimated harm under the ranked loss
    (a task's logit difference, else CE), with GradDrop also its ``top_k`` of largest GradDrop score, and
    ``sample`` units drawn at random (with ``seed``), the same for every method. ``shape``: (width,
    unit_size, the chosen layers) of the units ``targets`` name."""
    n, loss = len(targets), losses_of(sums)[-1]
    width, unit_size, layers = shape
    drawn = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(sample, n)].tolist()
    out = {}
    for method in methods:
        scores = [harm(loss, unit_estimates(sums[loss][method], sums[loss]["count"], *shape))]
        if GRADDROP in sums:
            n_layers = sums[loss][method].shape[1] // width
            per_level = sums[GRADDROP][method][level_of(width, unit_size)]
            scores.append(graddrop_estimates(per_level, sums[loss]["count"], n_layers, layers))
        top = {i for s in scores for i in torch.sort(s, descending=True, stable=True).indices[: min(top_k, n)].tolist()}
        out[method] = [targets[i] for i in sorted(top | set(drawn))]
    return out


def check_plan(units: dict[str, list[str]], methods: list[str], unit_map) -> list:
    """The baseline, then one group per layer of the units to measure (``maps.units.UnitMap``'s groups)."""
    fraction = unit_map.unit_width / (len(unit_map.layers) * unit_map.width)
    points: list = [Point(0.0, "baseline", 0, tuple((m, 0) for m in methods))]
    by_layer: dict[int, list[Point]] = {}
    for method in methods:
        for target in units[method]:
            layer = unit_map.layer_of(target)
            by_layer.setdefault(layer, []).append(Point(fraction, method, 0, ((method, 0),), target))
    return points + [UnitGroup(layer, tuple(by_layer[layer])) for layer in sorted(by_layer)]
