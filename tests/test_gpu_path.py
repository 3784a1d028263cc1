"""What a GPU run pays for, made visible on the CPU: whole-model moves, host syncs in a scored batch,
the key/value cache, the calibration's work after the last hooked layer, statistics temporaries."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import EPS, SyncCalls, data, module, reference_peak, run, tiny_args

from ablate_lit.families.module import AblationModule
from ablate_lit.stats import NeuronHistogram, NeuronMoments


@pytest.mark.slow
def test_a_whole_cli_run_moves_the_model_once(capsys, tiny_models, corpus, tmp_path, monkeypatch):
    """Lightning moves the module at the start of every trainer call and back to the CPU at the end;
    a run of 1 calibration, 2 resample sweeps and 7 evaluations must move it once."""
    moves = []
    for name in ("to", "cpu", "cuda"):
        original = getattr(torch.nn.Module, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if isinstance(self, AblationModule):
                moves.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, name, counted)
    code, out, err = run(
        capsys,
        *tiny_args(
            tiny_models["llama"],
            corpus,
            tmp_path,
            "--ablation.methods",
            "[zero,peak,resample:random_tokens,resample:generated]",
        ),
    )
    assert code == 0, err
    assert out.count("% ablated:") == 1 + 4 * 2 + 4  # baseline, 4 methods x 2 seeds at 50%, 4 methods at 100%
    assert moves == ["to"]


@pytest.mark.parametrize("method", ["mean", "resample"])
def test_a_scored_ablated_batch_adds_no_host_sync_to_the_models_own(tiny_models, corpus, method):
    """Everything ablate_lit adds to a scored batch (the hooks, the scores) is free of calls that wait
    for the device: compared with a plain forward of the same model, not one more."""
    mod = module(tiny_models["llama"])
    d = data(corpus, mod)
    batch = next(iter(d.test_dataloader()))
    L, D = mod.hooks.n_layers, mod.hooks.width
    mask = torch.rand(L, D, generator=torch.Generator().manual_seed(0)) < 0.5
    mask[1] = True  # one layer ablated whole, one in part
    replacement = {"values": torch.randn(L, D)} if method == "mean" else {"resample": torch.randn(L, 3, 16, D)}

    with SyncCalls() as plain:
        mod.model(input_ids=batch["input_ids"], use_cache=False)
    with mod.hooks.ablating(mask, device=mod.device, **replacement):
        with SyncCalls() as ablated:
            mod._set_index(batch)
            logits, labels = mod.logits_and_labels(batch)
            mod.scores.update(logits, labels)
    assert ablated.calls - plain.calls == Counter(), dict(ablated.calls - plain.calls)
    assert int(mod.scores.total) == labels.ne(-100).sum()


@pytest.mark.gpu  # torch.cuda.set_sync_debug_mode
def test_on_a_gpu_a_scored_ablated_batch_never_synchronises(tiny_models, corpus):
    mod = module(tiny_models["llama"]).cuda()
    d = data(corpus, mod)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in next(iter(d.test_dataloader())).items()}
    L, D = mod.hooks.n_layers, mod.hooks.width
    mask = torch.rand(L, D, generator=torch.Generator().manual_seed(0)) < 0.5
    for replacement in ({"values": torch.randn(L, D)}, {"resample": torch.randn(L, 3, 16, D)}):
        with mod.hooks.ablating(mask, device=mod.device, **{k: v.cuda() for k, v in replacement.items()}):
            mod.model(input_ids=batch["input_ids"], use_cache=False)  # the model's own first-call work
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                mod._set_index(batch)
                mod.scores.update(*mod.logits_and_labels(batch))
            finally:
                torch.cuda.set_sync_debug_mode(0)


def test_causal_forwards_build_no_key_value_cache(tiny_models, corpus):
    mod = module(tiny_models["opt"])
    seen = []
    handle = mod.model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("use_cache")), with_kwargs=True
    )
    try:
        mod.logits_and_labels(next(iter(data(corpus, mod).test_dataloader())))
    finally:
        handle.remove()
    assert seen == [False]


def test_calibration_stops_after_the_last_hooked_layer(capsys, tiny_models, corpus, tmp_path):
    """The head never runs during calibration (and the statistics stay exact: tests/test_calibration.py)."""
    from helpers import trainer

    from ablate_lit.calibration.cache import CalibrationCache
    from ablate_lit.runner.config import AblationConfig

    mod = module(tiny_models["gpt2"])
    d = data(corpus, mod)
    heads, blocks = [], []
    mod.model.lm_head.register_forward_hook(lambda *a: heads.append(1))
    mod.model.transformer.h[-1].mlp.register_forward_hook(lambda *a: blocks.append(1))
    cfg = AblationConfig(methods=["peak"], eps=EPS, n_resample=2)
    stats = CalibrationCache(trainer(), mod, d, cfg, tmp_path / "cache").statistics()
    assert heads == [] and blocks == []
    assert int(stats["count"][-1, 0]) == d.calib_windows.numel()  # every position of the last layer recorded
    assert "each forward pass stops after the last hooked layer" in capsys.readouterr().out


def test_chunked_statistics_equal_the_reference_on_both_index_paths(monkeypatch):
    """Updates in chunks of 64 values: int32 slots (window near 0) and the int64 fallback (a window
    too far from 0 for float32 to hold its grid indices exactly) bin like an offline histogram."""
    import ablate_lit.stats.exact as exact

    monkeypatch.setattr(exact, "CHUNK_VALUES", 64)
    g = torch.Generator().manual_seed(0)
    near = torch.randn(500, 6, generator=g) * 0.3
    far = near + 2.0**21 * EPS * 8  # grid indices around 2**24
    for x, exact32 in ((near, True), (far, False)):
        hist, moments = NeuronHistogram(1, 6, EPS, n_bins=64), NeuronMoments(1, 6)
        for part in x.split(70):
            hist.update(0, part)
            moments.update(0, part)
        assert hist._exact32[0] == exact32
        out = hist.compute()
        for n in range(6):
            assert float(out["peak"][0, n]) == pytest.approx(
                reference_peak(x[:, n].numpy(), EPS, 0.0), abs=1e-9
            )  # binned in float32, as documented
        assert int(hist.counts[0].sum()) == x.numel()
        torch.testing.assert_close(moments.compute()["mean"][0], x.double().mean(0))


def test_the_evaluation_loader_is_built_once_and_keeps_its_workers(tiny_models, corpus):
    mod = module(tiny_models["llama"])
    d = data(corpus, mod, num_workers=2)
    loader = d.test_dataloader()
    assert d.test_dataloader() is loader and loader.persistent_workers
    d.batch_size = 2
    assert d.test_dataloader() is not loader and d.test_dataloader().batch_size == 2


def test_the_gpu_acceptance_command_lists_what_it_runs_on_a_cpu(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    proc = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith("would run [") for line in lines) and len(lines) == 15
    for wanted in ("tests/test_gpu_path.py", "bf16-mixed", "bf16-true", "16-mixed", "--trainer.devices 2",
                   "--shape smollm2-135m", "--shape opt-125m", "--ablation.ablations_per_pass auto",
                   "compare_rows.py", "bench_per_pass.py", "--ablation.schedule attribution",
                   "bench_attribution.py"):  # fmt: skip
        assert any(wanted in line for line in lines), wanted
    assert not (tmp_path / "gpu_check.json").exists()  # a dry run runs nothing
