"""Figures from result rows: Top1, CE (and KL) against the share ablated per model (the paper's
Figures 2 and 3), peak ablation against the bin width, and the shared way a figure is saved."""

from __future__ import annotations

import math
from pathlib import Path

from ablate_lit.common.labels import Label, pct
from ablate_lit.report.summary import aggregate, is_task, mean_std, metrics
from ablate_lit.store.rows import as_rows

STYLES = ["-", "--", ":", "-."]


def figures(rows, out: Path) -> list[Path]:
    """One PNG per model (``model_figure``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for model in dict.fromkeys(r.model for r in as_rows(rows)):
        fig = model_figure(rows, model)
        path = out / f"{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


YLABELS = {
    "top1": "Top1 accuracy (%)",
    "ce": "cross-entropy (nats per scored token or image)",
    "kl": "KL(unablated || ablated) (nats per token or image)",
}


def model_figure(rows, model: str):
    """A matplotlib Figure: Top1 and CE of ``model`` (and KL, where measured) against % ablated, a line
    per method (colour: the method; line style: what was ablated), a band of +- one std over seeds,
    the unablated model as a dashed line, and the seeds and scored tokens behind every point in the title."""
    import matplotlib.pyplot as plt

    rows = as_rows(rows)
    agg = aggregate(rows)
    mine = [r for r in rows if r.model == model]
    methods = list(dict.fromkeys(r.method for r in mine))
    labels = {m: Label.parse(m) for m in methods}
    bases = list(dict.fromkeys(label.method for label in labels.values()))
    kinds = list(dict.fromkeys(label.suffix for label in labels.values()))
    colours = {b: f"C{i % 10}" for i, b in enumerate(bases)}
    task = is_task(mine)
    panels = [(metric, scale) for metric, _, scale, _ in metrics(mine)]  # top1 (%), ce, and kl where measured
    ylabels = {metric: title for metric, title, _, _ in metrics(mine)} if task else YLABELS
    fig, axes = plt.subplots(1, len(panels), figsize=(5.75 * len(panels), 4.3), squeeze=False)
    axes = list(axes[0])
    base = agg.get((model, "baseline", 0.0))
    for method in methods:
        style = dict(color=colours[labels[method].method], ls=STYLES[kinds.index(labels[method].suffix) % len(STYLES)])
        for ax, (metric, scale) in zip(axes, panels):
            _method_line(ax, agg, model, method, base, metric, scale, style)
    heads = any("heads" in k for k in kinds)
    for ax, (metric, scale) in zip(axes, panels):
        if base and base[metric]:
            ax.axhline(mean_std(base[metric])[0] * scale, color="0.4", ls="--", lw=1, label="unablated")
        ax.set_xlabel("units ablated (%): neurons, or heads for [heads]" if heads else "neurons ablated (%)")
        ax.set_ylabel(ylabels[metric], fontsize=9 if task else None)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2 if len(methods) > 6 else 1)
    seeds = max(len({r.seed for r in mine if r.method == m}) for m in methods)
    tokens = sorted({r.n_tokens for r in mine})
    fig.suptitle(
        f"{model}: {seeds} seed(s), {'/'.join(map(str, tokens))} "
        f"{'answers' if task else 'scored tokens (or images)'} per point, "
        "band: +- one std over seeds",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _method_line(ax, agg: dict, model: str, method: str, base, metric: str, scale: float, style: dict) -> None:
    """One method's mean over seeds against % ablated (from the unablated point), with a +- one std band."""
    xs, means, stds = [], [], []
    if base and base[metric]:
        xs.append(0.0), means.append(mean_std(base[metric])[0] * scale), stds.append(0.0)
    for f in sorted(f for (mo, me, f) in agg if mo == model and me == method):
        values = agg[(model, method, f)][metric]
        if not values:
            continue
        m, s = mean_std(values)
        xs.append(100 * f), means.append(m * scale), stds.append(0.0 if not math.isfinite(s) else s * scale)
    ax.plot(xs, means, marker="o", ms=3, label=method, **style)
    top = 100.0 if metric == "top1" else float("inf")  # the band stays where the metric can be
    floor = -float("inf") if metric == "logit_diff" else 0.0  # a logit difference may be negative
    low = [max(floor, m - s) for m, s in zip(means, stds)]
    high = [min(top, m + s) for m, s in zip(means, stds)]
    ax.fill_between(xs, low, high, color=style["color"], alpha=0.15)


def eps_figures(rows, out: Path) -> list[Path]:
    """For runs with peaks at several bin widths (peak, peak:eps=E): CE of the peak method against eps,
    one line per fraction (the grid bias the paper's definition carries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        fig, ax = plt.subplots(figsize=(6.5, 4))
        fractions = sorted({f for (mo, me, f) in agg if mo == model and me in widths and 0 < f < 1})
        for f in fractions:
            pts = sorted(
                (eps, mean_std(agg[(model, m, f)]["ce"])[0]) for m, eps in widths.items() if (model, m, f) in agg
            )
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{pct(f)} ablated")
        ax.set_xscale("log")
        ax.set_xlabel("histogram bin width eps (log scale)")
        ax.set_ylabel("CE with peak ablation (nats per token)")
        mine = [r for r in rows if r.model == model and r.method in widths]
        seeds, tokens = len({r.seed for r in mine}), "/".join(map(str, sorted({r.n_tokens for r in mine})))
        ax.set_title(
            f"{model}: peak ablation against the bin width\n{seeds} seed(s), {tokens} scored tokens (or images) "
            "per point",
            fontsize=9,
        )
        written.append(save_plot(fig, ax, out / f"{model}-peak-eps.png"))
    return written


def save_plot(fig, ax, path: Path) -> Path:
    """Grid, legend, layout, a PNG at ``path``; the figure is closed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
