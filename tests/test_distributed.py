"""Results must not depend on the number of processes, nor (beyond its rounding) on the precision.

The 2-process runs use Lightning's DDP and FSDP2 (``--trainer.strategy fsdp2``) on CPU (gloo),
launched by the real CLI in a subprocess.
"""

from __future__ import annotations

import pytest
import torch
from helpers import launch, read_rows, run_rows, tiny_args


def _stats(cache, kind):
    return torch.load(next(cache.glob(f"{kind}-*.pt")), weights_only=False)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_statistics_and_results_of_one(tiny_models, corpus, tmp_path):
    """DDP (replicated weights) and FSDP2 (weights sharded over the processes), against one process.

    7 evaluation windows, 15 calibration windows and 3 resample rows in batches of 3: the processes
    get different numbers of batches (4+3 windows is 2 and 1 batches), which under FSDP2 needs the
    padding forward passes, and the batches differ from the one-process run's."""
    data = [
        "--data.max_tokens",
        105,
        "--data.calib_tokens",
        225,
        "--data.batch_size",
        3,
        "--ablation.n_resample",
        3,
        "--ablation.methods",
        "[zero,mean,peak,resample:random_tokens,resample:generated]",
    ]
    runs = {}
    for strategy in ("single", "ddp", "fsdp2"):
        extra = [*data, "--ablation.cache_dir", tmp_path / f"cache-{strategy}"]
        if strategy != "single":
            extra += ["--trainer.devices", 2, "--trainer.strategy", strategy]
        proc = launch("test", *tiny_args(tiny_models["llama"], corpus, tmp_path / strategy), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("sharded: 2 blocks" in proc.stdout) == (strategy == "fsdp2"), proc.stdout[-2000:]
        runs[strategy] = tmp_path / strategy / "run"

    one = read_rows(runs["single"] / "results.csv")
    key = lambda r: (r["method"], r["seed"], r["fraction"])  # noqa: E731
    assert len(one) == 5 * 2 * 3  # methods x seeds x fractions (0% and 100% evaluated once, written per row)
    s1, r1 = (
        _stats(tmp_path / "cache-single", "stats"),
        {
            source: _stats(tmp_path / "cache-single", f"resample-{source}")["resample"]
            for source in ("random_tokens", "generated")
        },
    )
    for strategy in ("ddp", "fsdp2"):
        two = read_rows(runs[strategy] / "results.csv")
        assert len(two) == len(one)
        for a, b in zip(sorted(one, key=key), sorted(two, key=key)):
            assert key(a) == key(b) and a["n_ablated"] == b["n_ablated"]
            assert a["n_tokens"] == b["n_tokens"] == str(7 * 15)  # every evaluation token counted exactly once
            # Batches differ between the runs, and a matmul's rounding depends on the batch it is in:
            # CE agrees to float32 rounding; Top1 may flip on a near-tie (at most one token here).
            assert float(a["ce"]) == pytest.approx(float(b["ce"]), rel=1e-5)
            assert abs(float(a["top1"]) - float(b["top1"])) <= 1.0 / int(a["n_tokens"]) + 1e-12

        s2 = _stats(tmp_path / f"cache-{strategy}", "stats")
        assert torch.equal(s1["count"], s2["count"]) and int(s1["count"].flatten()[0]) == 15 * 16
        # the histograms themselves hold every calibration value of both processes (in, under or over the window)
        assert bool((s2["counts"].long().sum(-1) == s2["count"]).all())
        torch.testing.assert_close(s1["mean"], s2["mean"], rtol=1e-5, atol=1e-7)  # float32 activations, float64 sums
        torch.testing.assert_close(s1["min"], s2["min"], rtol=1e-5, atol=1e-6)
        same = s1["peak"] == s2["peak"]
        assert same.float().mean() > 0.99, "peaks may differ only where an activation sits on a bin edge"
        for source, cache in r1.items():
            torch.testing.assert_close(
                cache, _stats(tmp_path / f"cache-{strategy}", f"resample-{source}")["resample"], rtol=1e-5, atol=1e-6
            )


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_results_are_within_bf16_rounding_of_fp32(capsys, tiny_models, corpus, tmp_path, precision):
    """Every method, KL included; optimal's constants are fitted under each precision (fp32 master
    constants), so its CE is compared to the mean's, not to fp32's fit."""
    methods = "[zero,mean,peak,median,peak_refined,resample:data,optimal]"
    fp32, bf16 = (
        run_rows(
            capsys,
            *tiny_args(tiny_models["llama"], corpus, tmp_path / p),
            "--trainer.precision",
            p,
            "--ablation.methods",
            methods,
            "--ablation.kl",
            "true",
            "--ablation.eps",
            0.05,
            "--ablation.seeds",
            "[0]",
            "--ablation.optimal_epochs",
            3,
            "--ablation.cache_dir",
            tmp_path / f"cache{p}",
        )[1]
        for p in ("32", precision)
    )
    assert {r["precision"] for r in bf16} == {precision}
    for a, b in zip(fp32, bf16):
        assert (a["method"], a["seed"], a["fraction"]) == (b["method"], b["seed"], b["fraction"])
        # bf16 keeps 8 significant bits (relative rounding 2**-9 per operation); over two tiny
        # layers the CE of a random-init model stays within 2% of fp32.
        if a["method"] != "optimal":
            assert float(b["ce"]) == pytest.approx(float(a["ce"]), rel=0.02)
        # the score totals themselves accumulate in float64 whatever the model runs in: a mean CE
        # summed in bf16 would land on bf16's grid (multiples of 2**-5 between 4 and 8)
        assert float(b["ce"]) * 2**5 != round(float(b["ce"]) * 2**5)
        assert float(b["kl"]) == pytest.approx(float(a["kl"]), rel=0.2, abs=0.01)
    mean = {r["fraction"]: float(r["ce"]) for r in bf16 if r["method"] == "mean"}
    for r in bf16:
        if r["method"] == "optimal":
            assert float(r["ce"]) <= mean[r["fraction"]] * 1.02  # fitted in bf16, it is no worse than the mean


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    "what", [["--ablation.site", "mlp"], ["--ablation.unit", "head", "--ablation.selection", "global"]]
)
def test_mlp_units_heads_new_methods_and_kl_under_two_processes_equal_one(tiny_models, corpus, tmp_path, what):
    data = [
        "--data.max_tokens",
        105,
        "--data.calib_tokens",
        225,
        "--data.batch_size",
        3,
        "--ablation.n_resample",
        3,
        "--ablation.methods",
        "[zero,mean,median,peak_refined,resample:random_tokens,resample:data]",
        "--ablation.kl",
        "true",
        "--ablation.seeds",
        "[0]",
        *what,
        "--ablation.eps",
        "0.05",
    ]  # windows of +-25.6 hold these units (median and refined peak read the window)
    runs = {}
    for strategy in ("single", "ddp"):
        extra = [*data, "--ablation.cache_dir", tmp_path / f"cache-{strategy}"]
        if strategy == "ddp":
            extra += ["--trainer.devices", 2, "--trainer.strategy", "ddp"]
        proc = launch("test", *tiny_args(tiny_models["llama"], corpus, tmp_path / strategy), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[strategy] = read_rows(tmp_path / strategy / "run" / "results.csv")
    for a, b in zip(runs["single"], runs["ddp"], strict=True):
        assert (a["method"], a["fraction"], a["n_ablated"], a["n_tokens"]) == (
            b["method"],
            b["fraction"],
            b["n_ablated"],
            b["n_tokens"],
        )
        assert float(a["ce"]) == pytest.approx(float(b["ce"]), rel=1e-5)
        assert float(a["kl"]) == pytest.approx(float(b["kl"]), rel=1e-4, abs=1e-7)
    from ablate_lit.store.folder import read_rows as stored

    one, two = (stored(tmp_path / s / "run", windows=True)[0] for s in ("single", "ddp"))
    for a, b in zip(one, two, strict=True):  # every window scored once, by one of the two processes
        assert a["_windows"]["total"] == b["_windows"]["total"]
        assert a["_windows"]["nll"] == pytest.approx(b["_windows"]["nll"], rel=1e-5)
    s1, s2 = _stats(tmp_path / "cache-single", "stats"), _stats(tmp_path / "cache-ddp", "stats")
    assert torch.equal(s1["count"], s2["count"])
    torch.testing.assert_close(s1["mean"], s2["mean"], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.distributed
def test_optimal_under_two_processes_fits_one_set_of_constants_and_evaluates_it(tiny_models, corpus, tmp_path):
    """Under DDP the processes fit the constants together (gradients averaged, the batches of both
    processes form one step): the run records one set, and its rows are that set evaluated on every
    window (checked by hand), at a held-out CE no worse than the mean's."""
    from helpers import data, module, patched

    from ablate_lit.ablation.schedule import ablation_mask, neuron_order

    settings = [
        "--data.max_tokens",
        105,
        "--data.batch_size",
        3,
        "--ablation.methods",
        "[mean,optimal]",
        "--ablation.seeds",
        "[0]",
        "--ablation.fractions",
        "[0.5]",
        "--ablation.optimal_lr",
        0.1,
        "--ablation.optimal_batch_size",
        4,
    ]
    one = launch("test", *tiny_args(tiny_models["llama"], corpus, tmp_path / "one"), *settings)
    assert one.returncode == 0, one.stderr[-3000:]
    proc = launch(
        "test",
        *tiny_args(tiny_models["llama"], corpus, tmp_path),
        *settings,
        "--trainer.devices",
        2,
        "--trainer.strategy",
        "ddp",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["method"]: r for r in read_rows(tmp_path / "run" / "results.csv")}
    fit = _stats(tmp_path / ".calibration_cache", "optimal")
    # each process takes 2 of a step's 4 windows and DDP averages the gradients: one process's fit, up to rounding
    single = _stats(tmp_path / "one" / ".calibration_cache", "optimal")
    assert fit["epochs"] == single["epochs"] and torch.equal(fit["train_rows"], single["train_rows"])
    torch.testing.assert_close(fit["values"], single["values"], rtol=1e-3, atol=1e-4)
    assert fit["best_loss"] <= fit["init_loss"] and fit["epochs"] >= 1
    mod = module(tiny_models["llama"])
    d = data(corpus, mod, max_tokens=105, batch_size=3)
    mask = ablation_mask(neuron_order(0, 2, mod.hooks.width, "per_layer"), 0.5, 2, mod.hooks.width)
    assert torch.equal(fit["mask"], mask)
    x = d.eval_windows
    logits = patched(
        mod.model,
        "model.layers.{}.self_attn.o_proj",
        2,
        lambda l, h: torch.where(mask[l], fit["values"][l], h),
        lambda: mod.model(input_ids=x).logits,
    )
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    assert float(rows["optimal"]["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert rows["optimal"]["n_tokens"] == str(7 * 15)
