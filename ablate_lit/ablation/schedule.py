"""Nested random neuron sets and the list of evaluation points.

The set ablated at a fraction depends only on (seed, fraction, selection, model shape), never on
the method, so every method is compared on identical sets. For each seed a random order of the
neurons is drawn once; the set at fraction f is its first ``n_ablated(f, n)`` entries, which makes
the sets nested: the set at f is a subset of the set at any larger fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ablate_lit.errors import AblateError

SELECTIONS = ("per_layer", "global")


FRACTION_DIGITS = 6


def fraction_key(fraction: float) -> float:
    """A fraction as results store and compare it: rounded to 6 decimals (0.1*3 and 0.3 are one point)."""
    return round(float(fraction), FRACTION_DIGITS)


def n_ablated(fraction: float, n: int) -> int:
    """round(fraction * n), halves rounded up; fractions are first rounded to 1e-9 (0.1*3 != 0.3)."""
    return int(math.floor(round(fraction * n, 9) + 0.5))


def neuron_order(seed: int, n_layers: int, width: int, selection: str) -> torch.Tensor:
    """A random order of the neurons: [n_layers, width] per layer, or [n_layers*width] globally."""
    if selection not in SELECTIONS:
        raise AblateError(f"unknown selection '{selection}'; use one of: {', '.join(SELECTIONS)}")
    gen = torch.Generator().manual_seed(int(seed))
    if selection == "global":
        return torch.randperm(n_layers * width, generator=gen)
    return torch.stack([torch.randperm(width, generator=gen) for _ in range(n_layers)])


def ablation_mask(order: torch.Tensor, fraction: float, n_layers: int, width: int) -> torch.Tensor:
    """Boolean [n_layers, width]: True where the neuron is ablated at ``fraction``."""
    mask = torch.zeros(n_layers, width, dtype=torch.bool)
    if order.dim() == 1:  # global
        mask.view(-1)[order[: n_ablated(fraction, n_layers * width)]] = True
    else:
        k = n_ablated(fraction, width)
        mask.scatter_(1, order[:, :k], True)
    return mask


@dataclass(frozen=True)
class Point:
    """One evaluation; ``rows`` lists the (method, seed) result rows it stands for."""

    fraction: float
    method: str  # a method label, or "baseline" at 0%
    seed: int  # the seed whose neuron set is ablated
    rows: tuple[tuple[str, int], ...]


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
