"""Neuron sets: nested, of size round(f*N), identical for every method; the evaluation plan."""

from __future__ import annotations

import pytest
import torch

from ablate_lit.ablation.schedule import ablation_mask, n_ablated, neuron_order, plan

FRACTIONS = [i / 10 for i in range(11)]


@pytest.mark.parametrize("selection", ["per_layer", "global"])
def test_sets_are_nested_and_sized(selection):
    L, D = 3, 37
    order = neuron_order(4, L, D, selection)
    previous = torch.zeros(L, D, dtype=torch.bool)
    for f in FRACTIONS:
        mask = ablation_mask(order, f, L, D)
        if selection == "per_layer":
            assert mask.sum(1).tolist() == [n_ablated(f, D)] * L
        else:
            assert int(mask.sum()) == n_ablated(f, L * D)
        assert bool((previous & ~mask).sum() == 0), "the set at a smaller fraction must be a subset"
        previous = mask
    assert bool(previous.all())


def test_n_ablated_rounds_halves_up_and_ignores_float_noise():
    assert n_ablated(0.5, 5) == 3
    assert n_ablated(0.1 * 3, 10) == 3  # 0.30000000000000004
    assert n_ablated(0.7, 10) == 7
    assert n_ablated(0.0, 100) == 0 and n_ablated(1.0, 100) == 100


def test_sets_depend_only_on_seed_and_shape():
    """The documented draw: one generator seeded with the seed, one permutation per layer in layer order
    (global: one over all units); nothing else (no global RNG state) enters."""
    torch.manual_seed(123)  # the global generator must not matter
    a = neuron_order(1, 2, 16, "per_layer")
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(a, torch.stack([torch.randperm(16, generator=gen) for _ in range(2)]))
    torch.manual_seed(456)
    assert torch.equal(neuron_order(1, 2, 16, "global"), torch.randperm(32, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(a, neuron_order(2, 2, 16, "per_layer"))


def test_plan_evaluates_shared_points_once():
    methods, seeds = ["zero", "mean", "peak"], [0, 1, 2]
    points = plan(methods, seeds, FRACTIONS)
    # one baseline, 9 inner fractions x 3 methods x 3 seeds, one 100% point per method
    assert len(points) == 1 + 9 * 3 * 3 + 3
    rows = [r + (p.fraction,) for p in points for r in p.rows]
    assert len(rows) == len(set(rows)) == 11 * 3 * 3
    assert points[0].method == "baseline" and len(points[0].rows) == 9
