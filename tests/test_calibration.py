"""The calibration pass (a Lightning validation epoch) against statistics computed offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import EPS, data, module, reference_peak, trainer

from ablate_lit.calibration.cache import CalibrationCache
from ablate_lit.runner.config import AblationConfig
from ablate_lit.sites.hooks import PreOutHooks


@pytest.fixture(scope="module")
def setup(tiny_models, corpus):
    mod = module(tiny_models["llama"])
    return mod, data(corpus, mod)


def _offline_activations(mod, d):
    acts = {}
    with PreOutHooks(mod.pre_outs).recording(
        lambda l, x: acts.setdefault(l, []).append(x.reshape(-1, x.shape[-1]).clone())
    ):
        with torch.no_grad():
            for batch in d.val_dataloader():
                mod.model(input_ids=batch["input_ids"])
    return {l: torch.cat(v) for l, v in acts.items()}


def test_mean_and_peak_match_offline_computation(setup, tmp_path):
    mod, d = setup
    cfg = AblationConfig(eps=EPS, n_bins=4096, seeds=[0])
    stats = CalibrationCache(trainer(), mod, d, cfg, tmp_path / "cache").statistics()
    acts = _offline_activations(mod, d)
    assert acts[0].shape[0] == d.calib_windows.numel()
    for layer, x in acts.items():
        torch.testing.assert_close(stats["mean"][layer], x.double().mean(0))
        for n in range(0, x.shape[1], 5):
            assert float(stats["peak"][layer, n]) == reference_peak(x[:, n].numpy(), EPS, 0.0)
    assert not mod.hooks.active


def test_statistics_are_cached_and_rebuilt_when_settings_change_or_file_is_corrupt(setup, tmp_path, monkeypatch):
    mod, d = setup
    cache = tmp_path / "cache"
    first = CalibrationCache(trainer(), mod, d, AblationConfig(eps=0.05), cache).statistics()
    files = list(cache.glob("stats-*.pt"))
    assert len(files) == 1

    calls = []
    original = CalibrationCache._sweep
    monkeypatch.setattr(CalibrationCache, "_sweep", lambda self, *a: calls.append(1) or original(self, *a))
    again = CalibrationCache(trainer(), mod, d, AblationConfig(eps=0.05), cache).statistics()
    assert calls == [] and torch.equal(again["peak"], first["peak"])

    other = CalibrationCache(trainer(), mod, d, AblationConfig(eps=0.1), cache).statistics()
    assert calls == [1] and len(list(cache.glob("stats-*.pt"))) == 2
    assert not torch.equal(other["peak"], first["peak"])

    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    rebuilt = CalibrationCache(trainer(), mod, d, AblationConfig(eps=0.05), cache).statistics()
    assert calls == [1, 1] and torch.equal(rebuilt["peak"], first["peak"])


def test_resample_cache_holds_each_random_input_at_every_position(setup, tmp_path):
    mod, d = setup
    cfg = AblationConfig(n_resample=3)
    exp = CalibrationCache(trainer(), mod, d, cfg, tmp_path / "cache")
    for source in ("random_tokens", "random_chars", "generated"):
        cache = exp.resample(source)
        assert cache.shape == (mod.hooks.n_layers, 3, d.context_length, mod.hooks.width)
        saved = torch.load(next((tmp_path / "cache").glob(f"resample-{source}-*.pt")), weights_only=False)
        ids = saved["inputs"]
        assert ids.shape == (3, d.context_length) and bool((ids[:, 0] == d.bos_id).all())
        direct = {}
        with PreOutHooks(mod.pre_outs).recording(lambda l, x: direct.__setitem__(l, x.clone())):
            with torch.no_grad():
                mod.model(input_ids=ids)
        for layer in range(mod.hooks.n_layers):
            torch.testing.assert_close(cache[layer], direct[layer])
        assert bool((cache[:, :, -1].abs().sum(-1) > 0).all()), "the last position must be covered"


def test_random_sources_differ_and_are_seeded(setup):
    mod, d = setup
    a = mod.random_inputs("random_tokens", 2, 1, d).windows
    assert torch.equal(a, mod.random_inputs("random_tokens", 2, 1, d).windows)
    assert not torch.equal(a, mod.random_inputs("random_tokens", 2, 2, d).windows)
    assert not bool(np.isin(a[:, 1:].numpy(), mod.tokenizer.all_special_ids).any())
    g = mod.random_inputs("generated", 2, 1, d).windows
    assert torch.equal(g, mod.random_inputs("generated", 2, 1, d).windows) and g.shape == (2, d.context_length)
    c = mod.random_inputs("random_chars", 2, 1, d).windows
    assert c.shape == (2, d.context_length) and bool((c[:, 0] == d.bos_id).all())


def test_calibration_and_evaluation_windows_are_disjoint(setup):
    _, d = setup
    ev = {tuple(w.tolist()) for w in d.eval_windows}
    cal = {tuple(w.tolist()) for w in d.calib_windows}
    assert not ev & cal
    assert d.eval_windows.shape[0] * (d.context_length - 1) >= d.max_tokens
