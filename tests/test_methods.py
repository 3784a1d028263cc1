"""Methods beyond the paper, each against an independent computation: median, peaks at coarser bin
widths, the refined peak, resampling from calibration data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ablate_lit.ablation.methods import METHODS, parse_method
from ablate_lit.stats import NeuronHistogram, NeuronMoments
from ablate_lit.stats.calibration import CalibrationStats

from helpers import EPS, data, module, patched, reference_peak, run, tiny_args


def _stats(x: torch.Tensor, eps=EPS, alignment="edge", n_bins=256) -> CalibrationStats:
    hist, moments = NeuronHistogram(1, x.shape[1], eps, n_bins, alignment), NeuronMoments(1, x.shape[1])
    for part in x.split(500):
        hist.update(0, part)
        moments.update(0, part)
    return CalibrationStats({**moments.compute(), **hist.compute(), "counts": hist.counts, "origin": hist.origin,
                             "eps": eps, "n_bins": n_bins, "alignment": alignment})


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
    code, out, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, "--ablation.methods", "[resample:data]",
                                            "--ablation.seeds", "[0]", "--ablation.n_resample", 3,
                                            "--ablation.log_histograms", "false"))
    assert code == 0, err
    cache = torch.load(next((tmp_path / ".calibration_cache").glob("resample-data-*.pt")), weights_only=False)["resample"]
    mod = module(tiny_models["llama"])
    d = data(corpus, mod)
    rows = torch.randperm(len(d.calib_windows), generator=torch.Generator().manual_seed(0))[:3]  # resample_seed 0
    eval_set = {tuple(w.tolist()) for w in d.eval_windows}
    assert not any(tuple(d.calib_windows[r].tolist()) in eval_set for r in rows), "never an evaluated window"
    recorded = {}

    def record(layer, h):
        recorded[layer] = h.clone()
        return h

    patched(mod.model, "model.layers.{}.self_attn.o_proj", 2, record, lambda: mod.model(input_ids=d.calib_windows[rows]))
    for layer in range(2):
        torch.testing.assert_close(cache[layer], recorded[layer], rtol=1e-5, atol=1e-6)  # every row, every position
