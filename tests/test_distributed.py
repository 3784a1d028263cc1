"""Results must not depend on the number of processes, nor (beyond its rounding) on the precision.

The 2-process runs use Lightning's DDP and FSDP2 (``--trainer.strategy fsdp2``) on CPU (gloo),
launched by the real CLI in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import read_rows, run_rows, tiny_args


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ablate_lit", "test", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=900)


def _stats(cache, kind):
    return torch.load(next(cache.glob(f"{kind}-*.pt")), weights_only=False)


def test_two_processes_give_the_statistics_and_results_of_one(tiny_models, corpus, tmp_path):
    """DDP (replicated weights) and FSDP2 (weights sharded over the processes), against one process.

    7 evaluation windows, 15 calibration windows and 3 resample rows in batches of 3: the processes
    get different numbers of batches (4+3 windows is 2 and 1 batches), which under FSDP2 needs the
    padding forward passes, and the batches differ from the one-process run's."""
    data = ["--data.max_tokens", 105, "--data.calib_tokens", 225, "--data.batch_size", 3, "--ablation.n_resample", 3,
            "--ablation.methods", "[zero,mean,peak,resample:random_tokens,resample:generated]"]
    runs = {}
    for strategy in ("single", "ddp", "fsdp2"):
        extra = [*data, "--ablation.cache_dir", tmp_path / f"cache-{strategy}"]
        if strategy != "single":
            extra += ["--trainer.devices", 2, "--trainer.strategy", strategy]
        proc = cli(*tiny_args(tiny_models["llama"], corpus, tmp_path / strategy), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("sharded: 2 blocks" in proc.stdout) == (strategy == "fsdp2"), proc.stdout[-2000:]
        runs[strategy] = tmp_path / strategy / "run"

    one = read_rows(runs["single"] / "results.csv")
    key = lambda r: (r["method"], r["seed"], r["fraction"])  # noqa: E731
    assert len(one) == 5 * 2 * 3  # methods x seeds x fractions (0% and 100% evaluated once, written per row)
    s1, r1 = _stats(tmp_path / "cache-single", "stats"), {
        source: _stats(tmp_path / "cache-single", f"resample-{source}")["resample"] for source in ("random_tokens", "generated")}
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
        torch.testing.assert_close(s1["mean"], s2["mean"], rtol=1e-5, atol=1e-7)  # float32 activations, float64 sums
        torch.testing.assert_close(s1["min"], s2["min"], rtol=1e-5, atol=1e-6)
        same = s1["peak"] == s2["peak"]
        assert same.float().mean() > 0.99, "peaks may differ only where an activation sits on a bin edge"
        for source, cache in r1.items():
            torch.testing.assert_close(cache, _stats(tmp_path / f"cache-{strategy}", f"resample-{source}")["resample"],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_results_are_within_bf16_rounding_of_fp32(capsys, tiny_models, corpus, tmp_path, precision):
    fp32, bf16 = (run_rows(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path / p),
                           "--trainer.precision", p, "--ablation.methods", "[zero,mean,peak]",
                           "--ablation.cache_dir", tmp_path / f"cache{p}")[1] for p in ("32", precision))
    assert {r["precision"] for r in bf16} == {precision}
    for a, b in zip(fp32, bf16):
        assert (a["method"], a["seed"], a["fraction"]) == (b["method"], b["seed"], b["fraction"])
        # bf16 keeps 8 significant bits (relative rounding 2**-9 per operation); over two tiny
        # layers the CE of a random-init model stays within 2% of fp32.
        assert float(b["ce"]) == pytest.approx(float(a["ce"]), rel=0.02)
        # the score totals themselves accumulate in float64 whatever the model runs in: a mean CE
        # summed in bf16 would land on bf16's grid (multiples of 2**-5 between 4 and 8)
        assert float(b["ce"]) * 2**5 != round(float(b["ce"]) * 2**5)


@pytest.mark.parametrize("what", [["--ablation.site", "mlp"], ["--ablation.unit", "head", "--ablation.selection", "global"]])
def test_mlp_units_and_heads_under_two_processes_equal_one(tiny_models, corpus, tmp_path, what):
    data = ["--data.max_tokens", 105, "--data.calib_tokens", 225, "--data.batch_size", 3, "--ablation.n_resample", 3,
            "--ablation.methods", "[zero,mean,resample:random_tokens]", "--ablation.seeds", "[0]", *what]
    runs = {}
    for strategy in ("single", "ddp"):
        extra = [*data, "--ablation.cache_dir", tmp_path / f"cache-{strategy}"]
        if strategy == "ddp":
            extra += ["--trainer.devices", 2, "--trainer.strategy", "ddp"]
        proc = cli(*tiny_args(tiny_models["llama"], corpus, tmp_path / strategy), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[strategy] = read_rows(tmp_path / strategy / "run" / "results.csv")
    for a, b in zip(runs["single"], runs["ddp"], strict=True):
        assert (a["method"], a["fraction"], a["n_ablated"], a["n_tokens"]) == (b["method"], b["fraction"], b["n_ablated"], b["n_tokens"])
        assert float(a["ce"]) == pytest.approx(float(b["ce"]), rel=1e-5)
    s1, s2 = _stats(tmp_path / "cache-single", "stats"), _stats(tmp_path / "cache-ddp", "stats")
    assert torch.equal(s1["count"], s2["count"])
    torch.testing.assert_close(s1["mean"], s2["mean"], rtol=1e-5, atol=1e-7)
