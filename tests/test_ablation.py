"""Ablation invariants on every architecture: exact at 0%, hand-zeroed at 100%, per-position resampling."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHS, module, with_zero_inputs

from ablate_lit.sites.hooks import PreOutHooks

IDS = torch.randint(4, 300, (3, 10), generator=torch.Generator().manual_seed(1))


def _logits(mod):
    return mod.model(input_ids=IDS).logits


@pytest.mark.parametrize("model_type", ARCHS)
def test_zero_fraction_is_exactly_the_unablated_model(tiny_models, model_type):
    mod = module(tiny_models[model_type])
    L, D = mod.hooks.n_layers, mod.hooks.width
    reference = _logits(mod)
    none = torch.zeros(L, D, dtype=torch.bool)
    values = torch.randn(L, D)
    resample = torch.randn(L, 2, 10, D)
    with mod.hooks.ablating(none, values=values):
        assert torch.equal(_logits(mod), reference)
    mod.hooks.sample_index = torch.arange(3)
    with mod.hooks.ablating(none, resample=resample):
        assert torch.equal(_logits(mod), reference)


@pytest.mark.parametrize("model_type", ARCHS)
def test_zeroing_all_neurons_equals_zeros_fed_by_hand(tiny_models, model_type):
    mod = module(tiny_models[model_type])
    L, D = mod.hooks.n_layers, mod.hooks.width
    with mod.hooks.ablating(torch.ones(L, D, dtype=torch.bool), values=torch.zeros(L, D)):
        ablated = _logits(mod)
    by_hand = with_zero_inputs(mod.pre_outs, lambda: _logits(mod))
    torch.testing.assert_close(ablated, by_hand, rtol=0, atol=0)
    assert not torch.allclose(ablated, _logits(mod))


def test_constant_replaces_only_masked_neurons_at_every_position(tiny_models):
    mod = module(tiny_models["llama"])
    L, D = mod.hooks.n_layers, mod.hooks.width
    mask = torch.rand(L, D, generator=torch.Generator().manual_seed(0)) < 0.5
    values = torch.randn(L, D)
    clean, seen = {}, {}
    with PreOutHooks(mod.pre_outs).recording(lambda l, x: clean.__setitem__(l, x.clone())):
        _logits(mod)
    with mod.hooks.ablating(mask, values=values):
        with PreOutHooks(mod.pre_outs).recording(lambda l, x: seen.__setitem__(l, x.clone())):  # runs after ours
            _logits(mod)
    for l in range(L):
        m = mask[l]
        assert torch.equal(seen[l][..., m], values[l, m].expand(3, 10, -1))
        # unablated neurons of layer 0 see the clean input unchanged (later layers see ablated upstream)
    assert torch.equal(seen[0][..., ~mask[0]], clean[0][..., ~mask[0]])


def test_resample_uses_the_cached_value_at_each_position(tiny_models):
    mod = module(tiny_models["mistral"])
    L, D = mod.hooks.n_layers, mod.hooks.width
    mask = torch.zeros(L, D, dtype=torch.bool)
    mask[:, ::3] = True
    cache = torch.randn(L, 4, 10, D)
    mod.hooks.sample_index = torch.tensor([5, 6, 7])
    seen = {}
    with mod.hooks.ablating(mask, resample=cache):
        with PreOutHooks(mod.pre_outs).recording(lambda l, x: seen.__setitem__(l, x.clone())):
            _logits(mod)
    rows = torch.tensor([5, 6, 7]) % 4
    for l in range(L):
        expected = cache[l][rows][..., mask[l]]  # [batch, pos, n_ablated]: every position, the last one too
        assert torch.equal(seen[l][..., mask[l]], expected)


def test_hooks_are_removed_after_an_exception(tiny_models):
    mod = module(tiny_models["opt"])
    L, D = mod.hooks.n_layers, mod.hooks.width
    with pytest.raises(RuntimeError, match="boom"):
        with mod.hooks.ablating(torch.ones(L, D, dtype=torch.bool), values=torch.zeros(L, D)):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with mod.hooks.recording(lambda l, x: None):
            raise RuntimeError("boom")
    assert all(len(p.module._forward_pre_hooks) == 0 for p in mod.pre_outs)


def test_paused_hooks_neither_record_nor_ablate(tiny_models):
    """The padding forwards of a sharded run: hooks stay attached but leave no trace."""
    mod = module(tiny_models["llama"])
    L, D = mod.hooks.n_layers, mod.hooks.width
    clean = _logits(mod)
    calls = []
    with mod.hooks.recording(lambda l, x: calls.append(l)):
        with mod.hooks.paused():
            _logits(mod)
        assert calls == []
        _logits(mod)
        assert calls == list(range(L))
    with mod.hooks.ablating(torch.ones(L, D, dtype=torch.bool), values=torch.zeros(L, D)):
        with mod.hooks.paused():
            torch.testing.assert_close(_logits(mod), clean, rtol=0, atol=0)
        assert not torch.allclose(_logits(mod), clean)


@pytest.mark.parametrize("model_type", ARCHS)
def test_folding_into_the_out_projection_equals_the_hook_and_restores_weights(tiny_models, model_type):
    from ablate_lit.ablation.fold import folded

    mod = module(tiny_models[model_type])
    L, D = mod.hooks.n_layers, mod.hooks.width
    mask = torch.rand(L, D, generator=torch.Generator().manual_seed(3)) < 0.5
    values = torch.randn(L, D, generator=torch.Generator().manual_seed(4))
    before = {k: v.clone() for k, v in mod.model.state_dict().items()}
    with mod.hooks.ablating(mask, values=values):
        hooked = _logits(mod)
    with folded(mod.pre_outs, mask, values):
        folded_logits = _logits(mod)
    torch.testing.assert_close(folded_logits, hooked, rtol=1e-5, atol=1e-5)
    after = mod.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all((p.module.bias is None) == (before.get(p.name + ".bias") is None) for p in mod.pre_outs)
