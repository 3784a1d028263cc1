"""Every figure speaks one visual language: a method has one colour and marker in every figure, legends
and tables follow the paper's method order, titles say only what is true of the run (how many seeds,
a band only with several, what was scored), axes carry the unit of their metric, panels sit in a grid."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from ablate_lit.report import style  # noqa: E402
from ablate_lit.report.figures import model_figure  # noqa: E402
from ablate_lit.report.importance_figures import importance_figure  # noqa: E402
from ablate_lit.report.paired import paired_figures  # noqa: E402
from ablate_lit.report.summary import summary_table  # noqa: E402

PAPER = ["zero", "mean", "peak", "resample:random_chars", "resample:random_tokens", "resample:generated"]


def rows_of(methods, seeds=(0,), family="causal_lm", task=None, n_tokens=765, kl=False):
    """Result rows as a run stores them (strings), the baseline copied to every method's 0%."""
    out = []
    for m_i, method in enumerate(methods):
        for seed in seeds:
            for f in (0.0, 0.5, 1.0):
                record = {
                    "model": "tiny", "method": method, "seed": str(seed), "fraction": f"{f:g}",
                    "pct": str(int(100 * f)), "n_ablated": str(int(32 * f)), "n_neurons": "32",
                    "top1": f"{0.4 - 0.1 * f * (1 + m_i):.8f}",
                    "ce": f"{3 + f * (1 + m_i) + 0.01 * seed:.8f}", "ppl": "1", "kl": f"{f:.8f}" if kl else "-",
                    "n_tokens": str(n_tokens), "nonfinite": "0", "evaluated_as": "baseline" if f == 0 else method,
                    "selection": "per_layer", "eps": "0.01", "family": family,
                }  # fmt: skip
                if task:
                    record.update(task=task, logit_diff=f"{2 - f:.8f}")
                out.append(record)
    return out


def colours(fig) -> dict[str, str]:
    """Every labelled line's colour, by label, over the figure's axes (and its legend's handles)."""
    found = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                found.setdefault(line.get_label(), set()).add(to_hex(line.get_color()))
    return {label: next(iter(c)) for label, c in found.items() if len(c) == 1} | {
        label: "several" for label, c in found.items() if len(c) > 1
    }


def test_a_method_has_one_colour_and_marker_in_every_figure_and_legends_follow_the_paper():
    """Two runs with different methods, given in different orders: each method keeps its colour and
    marker; the legend below the panels lists methods in the paper's order, the unablated line last."""
    first = model_figure(rows_of(["peak", "zero", "resample:random_tokens"]), "tiny")
    second = model_figure(rows_of(["resample:generated", "mean", "zero", "peak"]), "tiny")
    a, b = colours(first), colours(second)
    for method in set(a) & set(b):
        assert a[method] == b[method] != "several", method
    drawn = {first: ["zero", "peak", "resample:random_tokens"], second: ["zero", "mean", "peak", "resample:generated"]}
    for fig, methods in drawn.items():
        legend = fig.legends[0]
        assert [t.get_text() for t in legend.get_texts()] == methods + ["unablated"]
        for method in methods:
            line = next(line for line in fig.axes[0].get_lines() if line.get_label() == method)
            assert to_hex(line.get_color()) == style.METHOD_COLOURS[method]
            assert line.get_marker() == style.METHOD_MARKERS[method.partition(":")[0]]
    assert len({style.METHOD_COLOURS[m] for m in PAPER}) == len(PAPER)  # the paper's methods tell apart
    plt.close("all")


def test_titles_say_what_is_true_of_the_run_and_axes_carry_their_units():
    """One seed: no band and no ± in the title; three seeds: a band per method. What was scored is named
    by the family (tokens, masked tokens, images, a task's answers), and each axis says its unit."""
    one = model_figure(rows_of(["zero", "mean"]), "tiny")
    assert one._suptitle.get_text() == "tiny: 1 seed, 765 scored tokens per point"
    assert not any(isinstance(c, PolyCollection) for ax in one.axes for c in ax.collections)
    assert one.axes[1].get_ylabel() == "cross-entropy (nats per token)"
    assert one.axes[0].get_xlabel() == "neurons ablated (%)"
    three = model_figure(rows_of(["zero", "mean"], seeds=(0, 1, 2), kl=True), "tiny")
    assert three._suptitle.get_text() == "tiny: 3 seeds, band: ± one std over seeds, 765 scored tokens per point"
    assert sum(isinstance(c, PolyCollection) for c in three.axes[0].collections) == 2
    assert [ax.get_ylabel() for ax in three.axes] == [
        "Top1 accuracy (%)", "cross-entropy (nats per token)", "KL(unablated || ablated) (nats per token)"
    ]  # fmt: skip
    vision = model_figure(rows_of(["zero"], family="vision", n_tokens=1000), "tiny")
    assert "1000 images per point" in vision._suptitle.get_text()
    assert vision.axes[1].get_ylabel() == "cross-entropy (nats per image)"
    masked = model_figure(rows_of(["zero"], family="masked_lm"), "tiny")
    assert masked.axes[1].get_ylabel() == "cross-entropy (nats per masked token)"
    task = model_figure(rows_of(["zero", "mean", "peak"], task="ioi", n_tokens=128, kl=True), "tiny")
    assert "128 answers of the ioi task per point" in task._suptitle.get_text()
    labels = [ax.get_ylabel() for ax in task.axes]
    assert labels[1] == "answer CE (nats per answer)" and "nats per token" not in " ".join(labels)
    positions = sorted({(round(ax.get_position().x0, 2), round(ax.get_position().y0, 2)) for ax in task.axes})
    assert len({x for x, _ in positions}) == 2 and len({y for _, y in positions}) == 2  # four panels: a 2 x 2 grid
    heads = model_figure(rows_of(["zero [heads]", "mean [heads]"]), "tiny")
    assert heads.axes[0].get_xlabel() == "heads ablated (%)"
    plt.close("all")


def test_tables_and_the_other_figures_share_the_order_and_colours(tmp_path):
    """The summary table lists methods in the paper's order whatever order they were given in; the paired
    figure draws A - B in A's colour; the importance map's panels follow the paper's order, titled in
    the methods' colours; the neuron figures mark zero, the mean and the peak in their methods' colours
    and name the model."""
    rows = rows_of(["resample:random_tokens", "peak", "zero", "mean"])
    table = summary_table(rows, ["resample:random_tokens", "peak", "zero", "mean"], [0.5])
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][:5] == [
        "method", "baseline", "zero", "mean", "peak"
    ]  # fmt: skip
    assert "1 seed, 765 scored tokens per point" in table and "seed(s)" not in table and "(or images)" not in table

    windows = {"nll": [1.0, 2.0], "correct": [1, 0], "total": [2, 2]}
    paired_rows = [dict(r, _windows=windows) for r in rows]
    from ablate_lit.store.rows import ResultRow

    as_read = [ResultRow({k: v for k, v in r.items() if k != "_windows"}, r["_windows"]) for r in paired_rows]
    (path,) = paired_figures(as_read, [("peak", "mean"), ("zero", "mean")], tmp_path)
    assert path.is_file()

    records = [
        {"method": m, "layer": layer, "head": str(h), "d_ce": 0.1 * h, "n_tokens": 765}
        for m in ("peak", "zero", "mean") for layer in range(2) for h in range(2)
    ]  # fmt: skip
    fig = importance_figure(records, "tiny", style.Scored(rows))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["zero", "mean", "peak"]
    for ax in fig.axes:
        if ax.get_title():
            assert to_hex(ax.title.get_color()) == style.METHOD_COLOURS[ax.get_title()]

    from ablate_lit.report.neurons import _layer_average_figure

    stats = {
        "counts": torch.randint(0, 50, (2, 3, 12)), "origin": torch.full((2, 3), -5), "eps": 0.1,
        "alignment": "edge", "mean": torch.full((2, 3), 0.02), "peak": torch.full((2, 3), 0.05),
    }  # fmt: skip
    fig = _layer_average_figure(stats, "tiny")
    assert fig._suptitle.get_text().startswith("tiny: ")
    marks = {line.get_label().split()[0]: to_hex(line.get_color()) for line in fig.axes[0].get_lines()}
    assert marks["zero"] == style.METHOD_COLOURS["zero"] and marks["mean"] == style.METHOD_COLOURS["mean"]
    assert marks["median"] == style.METHOD_COLOURS["peak"]  # the median peak
    plt.close("all")


@pytest.mark.parametrize("label", ["peak:eps=0.05", "mean:counterfactual", "optimal:kl", "zero [heads]"])
def test_a_variant_of_a_method_is_a_shade_of_its_colour_and_what_it_ablated_its_line(label):
    look = style.method_style(label)
    base = style.method_style(label.partition(":")[0].partition(" ")[0])
    assert look["marker"] == base["marker"]
    if " [" in label:
        assert look["color"] == base["color"] and look["ls"] == ":"
    else:
        assert look["color"] != base["color"] and look["ls"] == "-"


def test_the_widths_of_one_sweep_and_the_optimal_objectives_each_look_different():
    """Variants get their look from their option alone (the same in every figure), and the usual sets of
    variants differ from one another: a sweep of bin widths, the optimal objectives."""
    for labels in (
        [f"peak:eps={e}" for e in (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2)],
        ["optimal", "optimal:kl", "optimal:position", "optimal:kl+position"],
        ["mean", "mean:counterfactual"],
    ):
        looks = [tuple(sorted(style.method_style(label).items())) for label in labels]
        assert len(set(looks)) == len(looks), labels
