"""Nested sets of ablated units and the list of evaluation points.

A unit is one neuron, or one attention head (its ``head_dim`` consecutive neurons). The units that
can be ablated are those of the chosen layers (all by default). For each seed an order of the units
is drawn once, per layer or over all chosen layers together: at random, or sorted by a calibration
statistic (then the same for every seed). The set at fraction f is the first ``n_ablated(f, n)``
units of that order, which makes the sets nested (the set at f is a subset of the set at any larger
fraction), and it depends only on (seed, fraction, selection, order, model shape), never on the
method, so every method is compared on identical sets.
"""

from __future__ import annotations

import math

import torch

from ablate_lit.ablation.methods import parse_method
from ablate_lit.common.errors import AblateError, did_you_mean
from ablate_lit.common.labels import FRACTION_DIGITS, Point, PointGroup, fraction_key

__all__ = ["FRACTION_DIGITS", "Point", "ablation_mask", "fraction_key", "n_ablated", "neuron_order", "plan"]

SELECTIONS = ("per_layer", "global")
UNITS = ("neuron", "head", "layer")
SCHEDULES = ("nested", "each", "attribution")
SITES = ("attn", "mlp")

ORDERS = {
    "std": lambda s: s["std"],
    "peak_mean_gap": lambda s: (s["peak"] - s["mean"]).abs(),
    "abs_peak": lambda s: s["peak"].abs(),
    "abs_mean": lambda s: s["mean"].abs(),
    "off_zero_peak": lambda s: s["peak"].abs() / s["std"].median(dim=1, keepdim=True).values.clamp_min(1e-12),
    "bimodality": lambda s: s["bimodality"],
    "abs_skew": lambda s: s["skew"].abs(),
}
"""Calibration statistics units can be ablated in order of ([n_layers, width] from the statistics)."""


ATTRIBUTION = "attribution:"
"""An order by a method's estimated harm (``attribution:mean``): units from least to most harmful."""


def parse_order(text: str) -> tuple[str | None, bool]:
    """``random`` -> (None, False); ``<statistic>[:asc|:desc]`` -> (statistic, descending);
    ``attribution:<method>[:asc|:desc]`` -> (``attribution:<method>``, descending)."""
    text = str(text).strip()
    if text.startswith(ATTRIBUTION):
        method, descending = text.removeprefix(ATTRIBUTION), False
        for direction in (":asc", ":desc"):
            if method.endswith(direction):
                method, descending = method.removesuffix(direction), direction == ":desc"
        return ATTRIBUTION + parse_method(method).label, descending
    name, _, direction = text.partition(":")
    if name == "random" and not direction:
        return None, False
    if name not in ORDERS or direction not in ("", "asc", "desc"):
        raise AblateError(
            f"unknown ⟨ablation.order⟩ '{text}'{did_you_mean(name, ('random', *ORDERS))}; use random, "
            f"attribution:<method> (by estimated harm, e.g. attribution:mean), or one of {', '.join(ORDERS)} "
            "(ascending; add :desc for descending, e.g. std:desc)"
        )
    return name, direction == "desc"


def unit_scores(stats: dict, order: str, unit_size: int) -> torch.Tensor | None:
    """[n_layers, n_units] scores of ``order`` (a head scores the mean of its neurons), or None for random."""
    name, _ = parse_order(order)
    if name is None:
        return None
    scores = ORDERS[name](stats).double()
    return scores.view(scores.shape[0], -1, unit_size).mean(-1)


class StatisticsRanker:
    """Scores the units by a calibration statistic (``ORDERS``), read from ``calibration.statistics()``."""

    def __init__(self, calibration):
        self.calibration = calibration

    def scores(self, order: str, unit_size: int) -> torch.Tensor:
        return unit_scores(self.calibration.statistics(), order, unit_size)


def n_ablated(fraction: float, n: int) -> int:
    """round(fraction * n), halves rounded up; fractions are first rounded to 1e-9 (0.1*3 != 0.3)."""
    return int(math.floor(round(fraction * n, 9) + 0.5))


def neuron_order(
    seed: int,
    n_layers: int,
    width: int,
    selection: str,
    unit_size: int = 1,
    layers: list[int] | None = None,
    scores: torch.Tensor | None = None,
    descending: bool = False,
) -> torch.Tensor:
    """An order of the units (``unit_size`` consecutive neurons each) of ``layers`` (default: all):
    [len(layers), n_units] per layer, or [len(layers) * n_units] over all of them (``global``; flat
    indices into (chosen layer, unit)). Random from ``seed``, or sorted by ``scores`` [n_layers,
    n_units] (ascending unless ``descending``; ties by index, NaN last)."""
    if selection not in SELECTIONS:
        raise AblateError(f"unknown selection '{selection}'; use one of: {', '.join(SELECTIONS)}")
    chosen = list(range(n_layers)) if layers is None else list(layers)
    n_units = width // unit_size
    if scores is not None:
        keys = scores[chosen].double()
        keys = torch.nan_to_num(-keys if descending else keys, nan=float("inf"))
        flat = keys.reshape(-1) if selection == "global" else keys
        return torch.sort(flat, dim=-1, stable=True).indices
    gen = torch.Generator().manual_seed(int(seed))
    if selection == "global":
        return torch.randperm(len(chosen) * n_units, generator=gen)
    return torch.stack([torch.randperm(n_units, generator=gen) for _ in chosen])


def ablation_mask(
    order: torch.Tensor, fraction: float, n_layers: int, width: int, unit_size: int = 1, layers: list[int] | None = None
) -> torch.Tensor:
    """Boolean [n_layers, width]: True where the neuron is ablated at ``fraction``."""
    chosen = list(range(n_layers)) if layers is None else list(layers)
    n_units = width // unit_size
    units = torch.zeros(len(chosen), n_units, dtype=torch.bool)
    if order.dim() == 1:  # global
        units.view(-1)[order[: n_ablated(fraction, len(chosen) * n_units)]] = True
    else:
        units.scatter_(1, order[:, : n_ablated(fraction, n_units)], True)
    mask = torch.zeros(n_layers, width, dtype=torch.bool)
    mask[chosen] = units.repeat_interleave(unit_size, dim=1)
    return mask


def plan(methods: list[str], seeds: list[int], fractions: list[float]) -> list[Point]:
    """Evaluation points in schedule order (the baseline, then method by method: seed, fraction), each
    evaluated once. One method's points run together, so its replacement values (a resample cache
    can take GiBs) move to the device once.

    At 0% every method is the unablated model: one baseline evaluation stands for all rows. At 100%
    every seed ablates the same set: one evaluation per method stands for all seeds.
    """
    points: list[Point] = []
    fractions = sorted(set(fraction_key(f) for f in fractions))
    if 0.0 in fractions:
        points.append(Point(0.0, "baseline", seeds[0], tuple((m, s) for s in seeds for m in methods)))
    for m in methods:
        points += [Point(f, m, seed, ((m, seed),)) for seed in seeds for f in fractions if 0.0 < f < 1.0]
        if 1.0 in fractions:
            points.append(Point(1.0, m, seeds[0], tuple((m, s) for s in seeds)))
    return points


def group_points(points: list[Point], per_pass: int) -> list:
    """``points`` with those of one neuron set (a seed and fraction; the methods of a point of the
    nested schedule) gathered into ``PointGroup``s of at most ``per_pass``, each evaluated in one pass
    per batch; the baseline stays alone. With ``per_pass`` 1 the points are returned as they are."""
    if per_pass <= 1:
        return list(points)
    by_set: dict[tuple, list[Point]] = {}
    out: list = []
    for p in points:
        if p.method == "baseline":
            out.append(p)
            continue
        key = (p.seed if 0.0 < p.fraction < 1.0 else None, fraction_key(p.fraction))
        if key not in by_set:
            by_set[key] = []
            out.append(key)
        by_set[key].append(p)
    grouped: list = []
    for item in out:
        if isinstance(item, Point):
            grouped.append(item)
            continue
        same = by_set[item]
        grouped += [PointGroup(tuple(same[i : i + per_pass])) for i in range(0, len(same), per_pass)]
    return grouped


class NeuronSets:
    """The nested neuron sets of a run: for each seed one order of the units (``neuron_order``), drawn
    once, and the set at a fraction its first ``n_ablated`` units (``ablation_mask``). An order by a
    score (a calibration statistic, or a method's estimated harm) asks ``ranker.scores(order, unit_size)``
    for [n_layers, n_units] scores (``StatisticsRanker``, ``runner.attribution.AttributionRanker``)."""

    def __init__(
        self,
        n_layers: int,
        width: int,
        layers: list[int],
        unit_size: int,
        selection: str,
        order: str,
        ranker=None,
    ):
        self.n_layers, self.width, self.layers, self.unit_size = n_layers, width, list(layers), unit_size
        self.selection, self.order, self.ranker = selection, order, ranker
        self._orders: dict[int, torch.Tensor] = {}

    @property
    def n_neurons(self) -> int:
        """Neurons of the chosen layers: what fractions count."""
        return len(self.layers) * self.width

    def prepare(self, seeds: list[int]) -> None:
        """Draw (or rank) the orders of ``seeds`` now, before any point is evaluated (an order by estimated
        harm runs a sweep of its own)."""
        for seed in seeds:
            self.mask(seed, 0.0)

    def mask(self, seed: int, fraction: float) -> torch.Tensor:
        """Boolean [n_layers, width]: the neurons ablated at ``fraction`` for ``seed`` (the same for every method)."""
        if seed not in self._orders:
            name, descending = parse_order(self.order)
            scores = None if name is None else self.ranker.scores(self.order, self.unit_size)
            self._orders[seed] = neuron_order(
                seed, self.n_layers, self.width, self.selection, self.unit_size, self.layers, scores, descending
            )
        return ablation_mask(self._orders[seed], fraction, self.n_layers, self.width, self.unit_size, self.layers)
