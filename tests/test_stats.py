"""Streaming statistics against offline reference computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import EPS, reference_peak

from ablate_lit.stats import NeuronHistogram, NeuronMoments, ResampleCache, TokenScores


def _activations(seed=0, n=3000, width=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g) * 0.4
    x[: n // 3, 0] += 2.0  # an off-zero mode
    x[:, 1] = torch.where(torch.rand(n, generator=g) < 0.6, x[:, 1] - 1.0, x[:, 1] + 1.5)  # bimodal
    x[:, 2] = x[:, 2].abs() ** 2  # skewed, peak near 0
    return x


def test_moments_match_torch_over_chunks():
    x = _activations().double()
    m = NeuronMoments(2, 6)
    for chunk in x.split(700):
        m.update(0, chunk)
        m.update(1, chunk * 2)
    out = m.compute()
    torch.testing.assert_close(out["mean"][0], x.mean(0))
    torch.testing.assert_close(out["mean"][1], (2 * x).mean(0))
    torch.testing.assert_close(out["std"][0], x.std(0, unbiased=False))
    assert out["count"][0].tolist() == [3000] * 6
    torch.testing.assert_close(out["min"][0], x.min(0).values)


def test_batches_with_no_values_change_nothing():
    """A task's calibration counts each context once, so a batch may hold no new position (rows that
    repeat earlier ones): moments and histograms take it as nothing, and a histogram's window is
    centred on the first values it sees."""
    x = _activations().float()
    empty = torch.empty(0, 6)
    plain, padded = NeuronMoments(1, 6), NeuronMoments(1, 6)
    h_plain, h_padded = NeuronHistogram(1, 6, eps=EPS, n_bins=256), NeuronHistogram(1, 6, eps=EPS, n_bins=256)
    for chunk in x.split(1000):
        plain.update(0, chunk)
        h_plain.update(0, chunk)
    for chunk in (empty, empty, *x.split(1000)[:2], empty, *x.split(1000)[2:]):
        padded.update(0, chunk)
        h_padded.update(0, chunk)
    for key, value in plain.compute().items():
        torch.testing.assert_close(padded.compute()[key], value)
    torch.testing.assert_close(h_padded.counts, h_plain.counts)
    torch.testing.assert_close(h_padded.compute()["peak"], h_plain.compute()["peak"])


def test_moments_count_and_skip_nonfinite():
    x = _activations()
    x[5, 3] = float("nan")
    x[6, 4] = float("inf")
    m = NeuronMoments(1, 6)
    m.update(0, x)
    out = m.compute()
    assert int(out["nonfinite"].sum()) == 2  # (torchmetrics squeezes one-element outputs)
    keep = torch.isfinite(x[:, 3])
    torch.testing.assert_close(out["mean"][0, 3], x[keep, 3].double().mean())


@pytest.mark.parametrize("alignment,shift", [("edge", 0.0), ("centered", 0.5)])
def test_peak_is_centre_of_fullest_bin(alignment, shift):
    x = _activations()
    h = NeuronHistogram(1, 6, EPS, n_bins=512, alignment=alignment)
    for chunk in x.split(512):
        h.update(0, chunk)
    out = h.compute()
    for n in range(6):
        assert float(out["peak"][0, n]) == pytest.approx(reference_peak(x[:, n].numpy(), EPS, shift), abs=1e-12)
    assert int(h.counts.sum()) == x.numel()
    assert int(out["underflow"].sum() + out["overflow"].sum()) == 0


def test_peak_of_paper_bins_is_never_exactly_zero_but_centered_bins_can_be():
    x = torch.zeros(100, 1)
    edge = NeuronHistogram(1, 1, 0.1, n_bins=8)
    edge.update(0, x)
    centred = NeuronHistogram(1, 1, 0.1, n_bins=8, alignment="centered")
    centred.update(0, x)
    assert float(edge.compute()["peak"]) == pytest.approx(0.05)
    assert float(centred.compute()["peak"]) == 0.0


def test_values_outside_the_window_are_counted_not_binned():
    h = NeuronHistogram(1, 1, 0.5, n_bins=4)
    h.update(0, torch.zeros(10, 1))  # window centred on 0: grid bins -2..1 -> [-1, 1)
    h.update(0, torch.tensor([[5.0], [6.0], [-7.0], [0.9]]))
    out = h.compute()
    assert int(out["overflow"]) == 2 and int(out["underflow"]) == 1
    assert int(h.counts[0, 0, 1:-1].sum()) == 11


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric ResampleCache was called before")  # on purpose
def test_resample_cache_assembles_rows():
    c = ResampleCache(2, 3, 4, 5)
    x = torch.randn(3, 4, 5)
    c.update(0, torch.tensor([2, 0]), x[[2, 0]])
    c.update(0, torch.tensor([1]), x[[1]])
    c.update(1, torch.tensor([0, 1, 2]), -x)
    out = c.compute()
    assert torch.equal(out[0], x) and torch.equal(out[1], -x)
    with pytest.raises(RuntimeError):
        ResampleCache(1, 2, 1, 1).compute()


def test_token_scores_match_reference():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 11, generator=g), torch.randint(0, 11, (50,), generator=g)
    labels[::7] = -100
    s = TokenScores()
    s.update(logits[:20], labels[:20])
    s.update(logits[20:], labels[20:])
    out = s.compute()
    keep = labels != -100
    ce = F.cross_entropy(logits[keep], labels[keep])
    assert float(out["ce"]) == pytest.approx(float(ce), rel=1e-6)
    assert float(out["top1"]) == pytest.approx(float((logits[keep].argmax(-1) == labels[keep]).float().mean()))
    assert int(out["n_tokens"]) == int(keep.sum())
    assert float(out["ppl"]) == pytest.approx(float(ce.exp()), rel=1e-6)


def test_a_module_cast_to_bf16_keeps_the_statistics_exact():
    """Lightning's bf16-true/16-true precisions call module.to(dtype) on the whole LightningModule;
    the metrics inside must keep accumulating in float64/int, or a CE sum over many tokens rounds
    to bf16's 8 significant bits."""
    holder = torch.nn.Module()
    holder.scores, holder.moments = TokenScores(), NeuronMoments(1, 3)
    holder.hist, holder.cache = NeuronHistogram(1, 3, 0.01, 16), ResampleCache(1, 2, 1, 3)
    declared = {name: {k: getattr(m, k).dtype for k in m._defaults} for name, m in holder.named_children()}
    holder.to(torch.bfloat16)
    holder.half()
    for name, m in holder.named_children():
        assert {k: getattr(m, k).dtype for k in m._defaults} == declared[name], name
        assert {k: v.dtype for k, v in m._defaults.items()} == declared[name], name

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(20000, 11, generator=g) * 3).bfloat16()
    labels = torch.randint(0, 11, (20000,), generator=g)
    for i in range(0, 20000, 1000):
        holder.scores.update(logits[i : i + 1000], labels[i : i + 1000])
    reference = F.cross_entropy(logits.double(), labels)  # the same bf16 logits, in float64
    assert float(holder.scores.compute()["ce"]) == pytest.approx(float(reference), rel=1e-6)


def test_skew_kurtosis_and_bimodality_match_scipy():
    from scipy import stats as st

    x = _activations().double()
    m = NeuronMoments(1, 6)
    for chunk in x.split(1000):
        m.update(0, chunk)
    out = m.compute()
    for n in range(6):
        v = x[:, n].numpy()
        assert float(out["skew"][0, n]) == pytest.approx(st.skew(v), rel=1e-6, abs=1e-9)
        assert float(out["kurtosis"][0, n]) == pytest.approx(st.kurtosis(v, fisher=False), rel=1e-6)
        g, k, size = st.skew(v), st.kurtosis(v), len(v)
        assert float(out["bimodality"][0, n]) == pytest.approx(
            (g**2 + 1) / (k + 3 * (size - 1) ** 2 / ((size - 2) * (size - 3))), rel=1e-6
        )
    assert float(out["bimodality"][0, 1]) > 5 / 9 > float(out["bimodality"][0, 3])  # bimodal vs normal neuron


def test_token_and_task_scores_share_the_scores_interface():
    from ablate_lit.stats.protocol import Scores
    from ablate_lit.stats.task_metrics import TaskScores

    assert isinstance(TokenScores(3), Scores) and isinstance(TaskScores(2, 2, 1), Scores)
    assert isinstance(TokenScores(3).fresh(), Scores) and isinstance(TaskScores(2, 2, 1).fresh(), Scores)
