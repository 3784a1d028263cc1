"""An attribution run's figures: per method a map of every neuron's estimated harm (layers x neurons,
head boundaries drawn, on a symmetric log scale), a map of every head's, and the estimate against the
exact effect of the units measured exactly. Harm is the estimated rise of the CE (or fall of a task's logit difference);
one diverging colour scale per figure, shared by its methods."""

from __future__ import annotations

import math

import numpy as np

from ablate_lit.report import style
from ablate_lit.stats.attribution import harm, window_estimates


def loss_words(loss: str, per: str = "token") -> str:
    """What the harm of ``loss`` is, with its unit (``per``: what a CE is averaged over, ``report.style``)."""
    return {"ce": f"CE rise (nats per {per})", "logit_diff": "logit difference fall (nats)"}[loss]


def _harm(sums: dict, loss: str, method: str, width: int, unit_size: int, layers: list[int]) -> np.ndarray:
    per = sums[loss]
    estimate = window_estimates(per[method], width, unit_size, layers).sum(0) / max(int(per["count"].sum()), 1)
    return harm(loss, estimate.numpy())


def _panels(n: int):
    return style.grid(n, 6.4, 3.6, columns=min(n, 2))


def neuron_map(sums: dict, shape: tuple, head_dim: int | None, loss: str, model: str, per: str = "token"):
    """Per method a layer x neuron heatmap of estimated harm (one shared, symmetric scale)."""
    width, _, layers = shape
    methods = style.ordered(m for m in sums[loss] if m != "count")
    grids = {m: _harm(sums, loss, m, width, 1, layers).reshape(len(layers), width) for m in methods}
    from matplotlib.colors import SymLogNorm

    every = np.abs(np.concatenate([g.ravel() for g in grids.values()]))
    scale = float(np.nanmax(every)) or 1.0
    # a few neurons dwarf the rest: linear within the 95th percentile of |harm|, logarithmic beyond it
    threshold = float(np.nanpercentile(every, 95)) or scale / 100
    norm = SymLogNorm(linthresh=min(threshold, scale), vmin=-scale, vmax=scale)
    fig, axes = _panels(len(methods))
    for ax, method in zip(axes, methods, strict=True):
        image = ax.imshow(grids[method], cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
        if head_dim:
            for boundary in range(head_dim, width, head_dim):
                ax.axvline(boundary - 0.5, color="0.5", lw=0.3)
        _label(ax, method, "neuron (grouped by head)" if head_dim else "unit", layers)
    bar = fig.colorbar(image, ax=axes, fraction=0.025, pad=0.02)
    bar.set_label(
        f"estimated {loss_words(loss, per)} when the neuron is ablated alone (symmetric log scale)", fontsize=8
    )
    fig.suptitle(f"{model}: every neuron's estimated effect, one backward pass per batch", fontsize=10)
    return fig


def _label(ax, method: str, xlabel: str, layers) -> None:
    """A map panel's title (the method), axis labels and one tick per layer."""
    ax.set_title(method, fontsize=9, color=style.method_style(method)["color"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=5)


def head_map(sums: dict, shape: tuple, head_dim: int, loss: str, model: str, per: str = "token"):
    """Per method a layer x head heatmap of estimated harm (the exact map's layout)."""
    width, _, layers = shape
    methods = style.ordered(m for m in sums[loss] if m != "count")
    grids = {m: _harm(sums, loss, m, width, head_dim, layers).reshape(len(layers), -1) for m in methods}
    scale = max(float(np.nanmax(np.abs(g))) for g in grids.values()) or 1.0
    fig, axes = _panels(len(methods))
    for ax, method in zip(axes, methods, strict=True):
        image = ax.imshow(grids[method], cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto", interpolation="nearest")
        _label(ax, method, "head", layers)
    bar = fig.colorbar(image, ax=axes, fraction=0.025, pad=0.02)
    bar.set_label(f"estimated {loss_words(loss, per)} when the head is ablated alone", fontsize=8)
    fig.suptitle(f"{model}: every head's estimated effect (the sum of its neurons')", fontsize=10)
    return fig


def scatter(records: list[dict], loss: str, model: str, per: str = "token"):
    """Per method the estimated against the exact harm of the units measured exactly (None if none was)."""
    mine = [r for r in records if r["loss"] == loss and math.isfinite(r.get("exact", math.nan))]
    methods = style.ordered(r["method"] for r in mine)
    if not methods:
        return None
    sign = -1.0 if loss == "logit_diff" else 1.0
    fig, axes = _panels(len(methods))
    for ax, method in zip(axes, methods, strict=True):
        theirs = [r for r in mine if r["method"] == method]
        for kind in dict.fromkeys(r["kind"] for r in theirs):
            points = [(sign * r["estimate"], sign * r["exact"]) for r in theirs if r["kind"] == kind]
            ax.scatter(*np.array(points).T, s=9, alpha=0.7, label=f"{kind}s ({len(points)})")
        xs, ys = np.array([(sign * r["estimate"], sign * r["exact"]) for r in theirs]).T
        low, high = min(xs.min(), ys.min()), max(xs.max(), ys.max())
        ax.plot([low, high], [low, high], color="0.5", lw=0.8, ls="--", label="estimate = exact")
        ax.set_title(method, fontsize=9, color=style.method_style(method)["color"])
        ax.set_xlabel(f"estimated {loss_words(loss, per)}", fontsize=8)
        ax.set_ylabel(f"exact {loss_words(loss, per)}", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{model}: the first-order estimate against exact ablation, unit by unit", fontsize=10)
    return fig
