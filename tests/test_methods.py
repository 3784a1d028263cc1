"""Methods beyond the paper, each against an independent computation: median, peaks at coarser bin
widths, the refined peak, resampling from calibration data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import EPS, data, module, patched, reference_peak, run, tiny_args

from ablate_lit.ablation.methods import METHODS, parse_method
from ablate_lit.calibration.statistics import CalibrationStats
from ablate_lit.stats import NeuronHistogram, NeuronMoments


def _stats(x: torch.Tensor, eps=EPS, alignment="edge", n_bins=256) -> CalibrationStats:
    hist, moments = NeuronHistogram(1, x.shape[1], eps, n_bins, alignment), NeuronMoments(1, x.shape[1])
    for part in x.split(500):
        hist.update(0, part)
        moments.update(0, part)
    return CalibrationStats(
        {
            **moments.compute(),
            **hist.compute(),
            "counts": hist.counts,
            "origin": hist.origin,
            "eps": eps,
            "n_bins": n_bins,
            "alignment": alignment,
        }
    )


def _activations(n=4000, width=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g) * 0.3
    x[:, 1] = x[:, 1].abs() ** 2  # skewed
    x[: n // 3, 2] += 1.5  # two modes
    x[:, 3] += 0.7
    return x


def test_every_method_is_documented_and_its_label_parses_back():
    for name, cls in METHODS.items():
        assert cls.help and cls.name == name
    for label in ("zero", "median", "peak:eps=0.04", "peak_refined", "resample:data", "resample:random_tokens"):
        assert parse_method(label).label == label


@pytest.mark.parametrize("alignment", ["edge", "centered"])
def test_median_is_the_bin_of_the_lower_median_of_an_offline_histogram(alignment):
    x = _activations()
    median = _stats(x, alignment=alignment).median()[0]
    shift = 0.0 if alignment == "edge" else 0.5
    for n in range(x.shape[1]):
        v = np.sort(x[:, n].numpy())[(len(x) + 1) // 2 - 1]  # the value of rank ceil(n/2)
        k = np.floor(v / EPS + shift)
        assert float(median[n]) == pytest.approx((k + 0.5 - shift) * EPS, abs=1e-12)


@pytest.mark.parametrize("alignment,multiple", [("edge", 2), ("edge", 4), ("centered", 3)])
def test_a_peak_at_a_coarser_width_equals_an_offline_histogram_at_that_width(alignment, multiple):
    x = _activations()
    shift = 0.0 if alignment == "edge" else 0.5
    coarse = _stats(x, alignment=alignment).peak_at(multiple)[0]
    for n in range(x.shape[1]):
        assert float(coarse[n]) == pytest.approx(reference_peak(x[:, n].numpy(), EPS * multiple, shift), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_refined_peak_is_not_biased_by_a_coarse_grid(seed):
    """With bins coarse against the data (the grid bias the paper's definition has), a mode at 0 comes
    out at +-eps/2 from the paper's bins and within eps/5 of 0 from the refined peak; a mode a third of
    a bin off a bin centre is found closer than the paper's bin centre."""
    eps = 0.05
    x = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(seed)) * 0.2
    x[:, 1] += 0.3 + eps / 3
    stats = _stats(x, eps=eps, n_bins=64)
    refined = stats.peak_refined()[0]
    assert abs(float(stats["peak"][0, 0])) == pytest.approx(eps / 2)  # the paper's bins: never 0
    assert abs(float(refined[0])) < eps / 5
    assert abs(float(refined[1]) - (0.3 + eps / 3)) < abs(float(stats["peak"][0, 1]) - (0.3 + eps / 3))


def test_resample_data_uses_calibration_inputs_recorded_at_each_position(capsys, tiny_models, corpus, tmp_path):
    code, out, err = run(
        capsys,
        *tiny_args(
            tiny_models["llama"],
            corpus,
            tmp_path,
            "--ablation.methods",
            "[resample:data]",
            "--ablation.seeds",
            "[0]",
            "--ablation.n_resample",
            3,
            "--ablation.log_histograms",
            "false",
        ),
    )
    assert code == 0, err
    cache = torch.load(next((tmp_path / ".calibration_cache").glob("resample-data-*.pt")), weights_only=False)[
        "resample"
    ]
    mod = module(tiny_models["llama"])
    d = data(corpus, mod)
    rows = torch.randperm(len(d.calib_windows), generator=torch.Generator().manual_seed(0))[:3]  # resample_seed 0
    eval_set = {tuple(w.tolist()) for w in d.eval_windows}
    assert not any(tuple(d.calib_windows[r].tolist()) in eval_set for r in rows), "never an evaluated window"
    recorded = {}

    def record(layer, h):
        recorded[layer] = h.clone()
        return h

    patched(
        mod.model, "model.layers.{}.self_attn.o_proj", 2, record, lambda: mod.model(input_ids=d.calib_windows[rows])
    )
    for layer in range(2):
        torch.testing.assert_close(cache[layer], recorded[layer], rtol=1e-5, atol=1e-6)  # every row, every position


# -- KL, per-window scores and paired differences ------------------------------------------------------
def test_kl_is_zero_unablated_and_equals_a_kl_by_hand_at_50_percent(capsys, tiny_models, corpus, tmp_path):
    import torch.nn.functional as F

    from ablate_lit.ablation.schedule import ablation_mask, neuron_order
    from ablate_lit.store.folder import read_rows as stored

    code, out, err = run(
        capsys,
        *tiny_args(
            tiny_models["llama"],
            corpus,
            tmp_path,
            "--ablation.methods",
            "[zero]",
            "--ablation.seeds",
            "[0]",
            "--ablation.kl",
            "true",
            "--ablation.fractions",
            "[0,0.5]",
            "--ablation.log_histograms",
            "false",
        ),
    )
    assert code == 0, err
    rows = {r["fraction"]: r for r in stored(tmp_path / "run", windows=True)[0]}
    assert float(rows["0"]["kl"]) == 0.0
    mod = module(tiny_models["llama"])
    d = data(corpus, mod)
    x = d.eval_windows
    mask = ablation_mask(neuron_order(0, 2, mod.hooks.width, "per_layer"), 0.5, 2, mod.hooks.width)
    with torch.no_grad():
        p = F.log_softmax(mod.model(input_ids=x).logits[:, :-1].float(), -1)
        q = F.log_softmax(
            patched(
                mod.model,
                "model.layers.{}.self_attn.o_proj",
                2,
                lambda l, h: h.masked_fill(mask[l], 0.0),
                lambda: mod.model(input_ids=x).logits[:, :-1].float(),
            ),
            -1,
        )
    kl = (p.exp() * (p - q)).sum(-1)  # [windows, positions]
    assert float(rows["0.5"]["kl"]) == pytest.approx(float(kl.mean()), rel=1e-4)
    windows = rows["0.5"]["_windows"]
    assert windows["total"] == [x.shape[1] - 1] * x.shape[0]
    assert windows["kl"] == pytest.approx(kl.sum(1).tolist(), rel=1e-4)
    assert sum(windows["nll"]) / sum(windows["total"]) == pytest.approx(float(rows["0.5"]["ce"]), rel=1e-9)
    import ablate_lit

    fig = ablate_lit.load(tmp_path / "run").figure()  # a KL panel beside Top1 and CE
    assert [ax.get_ylabel().split(" ")[0] for ax in fig.axes] == ["Top1", "cross-entropy", "KL(unablated"]
    line = next(line for line in fig.axes[2].get_lines() if line.get_label() == "zero")
    assert list(line.get_ydata()) == pytest.approx([0.0, float(rows["0.5"]["kl"])])


def test_a_paired_interval_of_a_method_against_itself_is_zero_and_intervals_shrink_with_windows():
    from ablate_lit.report.paired import paired_difference

    def windows(n, seed, shift):
        g = np.random.default_rng(seed)
        tokens = np.full(n, 100)
        return {
            "nll": (g.normal(3.0 + shift, 0.5, n) * tokens).tolist(),
            "correct": g.integers(20, 40, n).tolist(),
            "total": tokens.tolist(),
        }

    a = [windows(50, s, 0.0) for s in range(3)]
    assert paired_difference(a, a, "ce") == (0.0, 0.0, 0.0)
    widths = []
    for n in (25, 400):
        a, b = [windows(n, s, 0.0) for s in range(3)], [windows(n, s + 10, 0.1) for s in range(3)]
        d, lo, hi = paired_difference(a, b, "ce")
        assert lo <= d <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # 16 times the windows: about a quarter of the width


def test_report_prints_paired_differences_and_the_peak_against_eps(capsys, tiny_models, corpus, tmp_path):
    from ablate_lit.entry.cli import main

    code, out, err = run(
        capsys,
        *tiny_args(
            tiny_models["llama"],
            corpus,
            tmp_path,
            "--ablation.seeds",
            "[0,1]",
            "--ablation.methods",
            "[mean,peak,peak:eps=0.04,peak_refined]",
            "--ablation.log_histograms",
            "false",
        ),
    )
    assert code == 0, err
    main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report"), "--fractions", "0.5"])
    out = capsys.readouterr().out
    assert "| peak - mean @ 50% | CE " in out and "| peak_refined - mean @ 50% |" in out
    assert (tmp_path / "report" / "llama-paired.png").exists() and (tmp_path / "report" / "llama-peak-eps.png").exists()
    assert (tmp_path / "report" / "paired.csv").read_text().count("\n") == 1 + 3 * 2  # 3 pairs x (CE, Top1)


# -- optimal ablation ------------------------------------------------------------------------------------
def _ce_by_hand(mod, windows, mask, values):
    """Next-token CE of ``windows`` with the masked o_proj inputs replaced by ``values``, hooked by hand."""
    import torch.nn.functional as F

    logits = patched(
        mod.model,
        "model.layers.{}.self_attn.o_proj",
        2,
        lambda l, h: torch.where(mask[l], values[l].to(h.dtype), h),
        lambda: mod.model(input_ids=windows).logits,
    )
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1)))


@pytest.mark.slow
def test_optimal_constants_beat_zero_mean_and_peak_on_their_training_windows_and_are_cached(
    capsys, tiny_models, corpus, tmp_path
):
    from ablate_lit.ablation.schedule import ablation_mask, neuron_order
    from ablate_lit.store.folder import read_rows as stored

    args = tiny_args(
        tiny_models["llama"],
        corpus,
        tmp_path,
        "--ablation.methods",
        "[zero,mean,peak,optimal]",
        "--ablation.seeds",
        "[0]",
        "--ablation.fractions",
        "[0,0.5,1]",
        "--ablation.optimal_lr",
        0.1,
        "--ablation.log_histograms",
        "false",
    )
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "fitting optimal 50% (seed 0): 32 constants from the mean on 14 calibration inputs (4 held out" in out
    fits = [torch.load(path, weights_only=False) for path in (tmp_path / ".calibration_cache").glob("optimal-*.pt")]
    assert len(fits) == 2  # 50% and 100%; nothing is fitted at 0%
    stats = torch.load(next((tmp_path / ".calibration_cache").glob("stats-*.pt")), weights_only=False)
    mod = module(tiny_models["llama"])
    d = data(corpus, mod)
    rows = {r["fraction"]: r for r in stored(tmp_path / "run")[0] if r["method"] == "optimal"}
    for fraction in (0.5, 1.0):
        mask = ablation_mask(neuron_order(0, 2, mod.hooks.width, "per_layer"), fraction, 2, mod.hooks.width)
        fit = next(f for f in fits if torch.equal(f["mask"], mask))
        values = fit["values"]
        train, held = d.calib_windows[fit["train_rows"]], d.calib_windows[fit["held_out_rows"]]
        assert not set(map(tuple, d.calib_windows.tolist())) & set(map(tuple, d.eval_windows.tolist())), (
            "never evaluated ones"
        )
        assert len(train) == 14 and len(held) == 4
        torch.testing.assert_close(values[~mask], stats["mean"].float()[~mask])  # unablated neurons keep the mean
        assert float((values - stats["mean"].float())[mask].abs().max()) > 1e-3  # the fitted ones moved
        ce = {
            name: _ce_by_hand(mod, train, mask, v)
            for name, v in (
                ("zero", torch.zeros_like(values)),
                ("mean", stats["mean"].float()),
                ("peak", stats["peak"].float()),
                ("optimal", values),
            )
        }
        assert ce["optimal"] <= min(ce["zero"], ce["mean"], ce["peak"]) + 1e-6, (fraction, ce)
        assert fit["best_loss"] == pytest.approx(
            _ce_by_hand(mod, held, mask, values), rel=1e-5
        )  # the held-out CE it kept
        # the row evaluates the fitted constants on the evaluated windows
        assert float(rows[f"{fraction:g}"]["ce"]) == pytest.approx(
            _ce_by_hand(mod, d.eval_windows, mask, values), rel=1e-5
        )
    # a second run (another folder, same cache) refits nothing
    args[args.index("--name") + 1] = "again"
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "optimal 50% (seed 0): fitted constants cached" in out and "fitting" not in out
    assert len(list((tmp_path / ".calibration_cache").glob("optimal-*.pt"))) == 2
    assert {r["ce"] for r in stored(tmp_path / "again")[0] if r["method"] == "optimal"} == set(
        r["ce"] for r in rows.values()
    )
    events = list((tmp_path / "run" / "tb" / "optimal_seed0").glob("events.*"))
    assert events, "the fitting curves go to TensorBoard"


def test_a_fit_sees_the_model_placed_and_cast_as_it_is_evaluated_and_its_settings_are_part_of_the_identity(
    capsys, tiny_models, corpus, tmp_path, monkeypatch
):
    """Statistics cached and no baseline to run first: the fit is the first thing the model does, and
    must already see it as evaluated (bf16-true: cast). Fitting settings and kl are in the identity."""
    import ablate_lit.ablation.fitter as optimal

    common = ["--ablation.seeds", "[0]", "--ablation.log_histograms", "false", "--trainer.precision", "bf16-true"]
    code, _, err = run(
        capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, "--ablation.methods", "[mean]", *common)
    )
    assert code == 0, err
    seen = []
    original = optimal.fit_constants

    def spy(trainer, target, *args, **kwargs):
        seen.append(next(target.model.parameters()).dtype)
        return original(trainer, target, *args, **kwargs)

    monkeypatch.setattr(optimal, "fit_constants", spy)
    args = tiny_args(
        tiny_models["llama"],
        corpus,
        tmp_path,
        "--ablation.methods",
        "[optimal]",
        "--ablation.fractions",
        "[0.5]",
        "--ablation.optimal_epochs",
        1,
        *common,
    )
    args[args.index("--name") + 1] = "fit-first"
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "calibration statistics: cached" in out and seen == [torch.bfloat16]
    for change in (["--ablation.optimal_epochs", 2], ["--ablation.kl", "true"]):
        code, _, err = run(capsys, *args, *change)
        assert code == 2 and "holds results of other settings" in err and ("optimal:" in err or "kl:" in err), err
