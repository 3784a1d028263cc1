"""Figures from result rows: Top1, CE (and KL) against the share ablated per model (the paper's
Figures 2 and 3), peak ablation against the bin width, and the shared way a figure is saved."""

from __future__ import annotations

import math
from pathlib import Path

from ablate_lit.common.labels import Label, pct
from ablate_lit.common.words import counted
from ablate_lit.report import style
from ablate_lit.report.summary import aggregate, mean_std, metrics
from ablate_lit.store.rows import as_rows


def figures(rows, out: Path) -> list[Path]:
    """One PNG per model (``model_figure``)."""
    written = []
    for model in dict.fromkeys(r.model for r in as_rows(rows)):
        written.append(style.save(model_figure(rows, model), out / f"{model}.png"))
    return written


def model_figure(rows, model: str):
    """A matplotlib Figure: Top1 and CE of ``model`` (and KL, a task's logit difference, where measured)
    against % ablated, a line per method in its fixed colour and marker (line style: what was ablated,
    ``report.style``), a band of ± one std where there are several seeds, the unablated model as a
    dashed line; panels in a grid, one legend below them, what every point scored in the title."""
    rows = as_rows(rows)
    agg = aggregate(rows)
    mine = [r for r in rows if r.model == model]
    methods = style.ordered(r.method for r in mine)
    panels = metrics(mine)  # top1 (%), ce, and kl / logit difference where measured
    fig, axes = style.grid(len(panels))
    base = agg.get((model, "baseline", 0.0))
    seeds = max(len({r.seed for r in mine if r.method == m}) for m in methods)
    for method in methods:
        for ax, (metric, _, scale, _) in zip(axes, panels):
            _method_line(ax, agg, model, method, base, metric, scale, style.method_style(method), seeds > 1)
    for ax, (metric, title, scale, _) in zip(axes, panels):
        if base and base[metric]:
            ax.axhline(mean_std(base[metric])[0] * scale, label="unablated", **style.UNABLATED)
        ax.set_xlabel(style.units_ablated(methods))
        ax.set_ylabel(title, fontsize=9)
        ax.grid(alpha=0.3)
    style.legend_below(fig, axes)
    fig.suptitle(f"{model}: {style.seeds_words(seeds)}, {style.Scored(mine).per_point()}", fontsize=10)
    return fig


def _method_line(
    ax, agg: dict, model: str, method: str, base, metric: str, scale: float, look: dict, band: bool
) -> None:
    """One method's mean over seeds against % ablated (from the unablated point), with a ± one std band
    when ``band`` (several seeds)."""
    xs, means, stds = [], [], []
    if base and base[metric]:
        xs.append(0.0), means.append(mean_std(base[metric])[0] * scale), stds.append(0.0)
    for f in sorted(f for (mo, me, f) in agg if mo == model and me == method):
        values = agg[(model, method, f)][metric]
        if not values:
            continue
        m, s = mean_std(values)
        xs.append(100 * f), means.append(m * scale), stds.append(0.0 if not math.isfinite(s) else s * scale)
    ax.plot(xs, means, ms=4, lw=1.4, label=method, **look)
    if not band:
        return
    top = 100.0 if metric == "top1" else float("inf")  # the band stays where the metric can be
    floor = -float("inf") if metric == "logit_diff" else 0.0  # a logit difference may be negative
    low = [max(floor, m - s) for m, s in zip(means, stds)]
    high = [min(top, m + s) for m, s in zip(means, stds)]
    ax.fill_between(xs, low, high, color=look["color"], alpha=0.15)


def eps_figures(rows, out: Path) -> list[Path]:
    """For runs with peaks at several bin widths (peak, peak:eps=E): CE of the peak method against eps,
    one line per fraction (the grid bias the paper's definition carries)."""
    rows = as_rows(rows)
    agg = aggregate(rows)
    written = []
    for model in dict.fromkeys(r.model for r in rows):
        widths = {}
        for r in rows:
            label = Label.parse(r.method)
            if r.model == model and label.name == "peak":
                widths[r.method] = float(label.option("eps") or r.eps)
        if len(set(widths.values())) < 2:
            continue
        fig, (ax,) = style.grid(1, 6.5, 4.0)
        fractions = sorted({f for (mo, me, f) in agg if mo == model and me in widths and 0 < f < 1})
        for f in fractions:
            pts = sorted(
                (eps, mean_std(agg[(model, m, f)]["ce"])[0]) for m, eps in widths.items() if (model, m, f) in agg
            )
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{pct(f)} ablated")
        ax.set_xscale("log")
        ax.set_xlabel("histogram bin width eps (log scale)")
        mine = [r for r in rows if r.model == model and r.method in widths]
        scored = style.Scored(mine)
        ax.set_ylabel(f"CE with peak ablation (nats per {scored.one})")
        seeds = len({r.seed for r in mine})
        ax.set_title(
            f"{model}: peak ablation against the bin width\n{counted(seeds, 'seed')} (the mean over them), "
            f"{scored.per_point()}",
            fontsize=9,
        )
        written.append(save_plot(fig, ax, out / f"{model}-peak-eps.png"))
    return written


def save_plot(fig, ax, path: Path) -> Path:
    """Grid, legend, a PNG at ``path``; the figure is closed."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return style.save(fig, path)
