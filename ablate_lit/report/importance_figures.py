"""The importance map as a figure: per method a layer x head heatmap of ΔCE on one shared colour
scale (diverging around 0: a unit whose ablation lowers the loss shows blue), or, for whole-layer
units, a bar per layer on one shared axis."""

from __future__ import annotations

import math

import numpy as np

from ablate_lit.report import style
from ablate_lit.report.style import Scored


def importance_figure(records: list[dict], model: str, scored: Scored | None = None):
    """A matplotlib Figure of ``importance`` records (one model): a panel per method, in the paper's
    order, in a grid that fits a page; ``scored`` says what the CE is per (``report.style``)."""
    per = scored.one if scored else "scored token or image"
    methods = style.ordered(r["method"] for r in records)
    heads = any(r["head"] != "-" for r in records)
    scale = max((abs(r["d_ce"]) for r in records if math.isfinite(r["d_ce"])), default=1.0) or 1.0
    fig, axes = style.grid(len(methods), 4.2, 3.8)
    layers = sorted({r["layer"] for r in records})
    for ax, method in zip(axes, methods, strict=True):
        mine = [r for r in records if r["method"] == method]
        if heads:
            n_heads = max(int(r["head"]) for r in mine) + 1
            grid = np.full((len(layers), n_heads), np.nan)
            for r in mine:
                grid[layers.index(r["layer"]), int(r["head"])] = r["d_ce"]
            image = ax.imshow(grid, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto", interpolation="nearest")
            ax.set_xlabel("head")
            ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=6)
            ax.set_ylabel("layer")
        else:
            values = [next((r["d_ce"] for r in mine if r["layer"] == layer), np.nan) for layer in layers]
            lows = [next((r["d_ce"] - r["d_ce_low"] for r in mine if r["layer"] == layer), 0) for layer in layers]
            highs = [next((r["d_ce_high"] - r["d_ce"] for r in mine if r["layer"] == layer), 0) for layer in layers]
            ax.bar(range(len(layers)), values, yerr=[lows, highs], color=style.method_style(method)["color"], capsize=2)
            ax.set_xticks(range(len(layers)), [str(layer) for layer in layers], fontsize=6)
            ax.set_xlabel("layer")
            ax.set_ylim(min(0.0, -0.05 * scale, *(v - lo for v, lo in zip(values, lows))) * 1.1, scale * 1.15)
            ax.axhline(0.0, color="0.4", lw=0.8)
            ax.set_ylabel(f"ΔCE, the layer ablated alone (nats per {per})", fontsize=8)
        ax.set_title(method, fontsize=9, color=style.method_style(method)["color"])
    if heads:
        bar = fig.colorbar(image, ax=axes, fraction=0.025, pad=0.02)
        bar.set_label(f"ΔCE when the head is ablated alone (nats per {per})", fontsize=8)
    counts = scored.per_point() if scored else f"{records[0]['n_tokens']} scored tokens or images per point"
    fig.suptitle(f"{model}: each {'head' if heads else 'layer'} ablated alone, {counts}; one colour scale",
                 fontsize=10)  # fmt: skip
    return fig
