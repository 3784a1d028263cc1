"""results.csv -> the paper-style summary table; calibration histograms -> TensorBoard figures."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from ablate_lit.atomic import write_text
from ablate_lit.stats.histogram import bin_centre


def _pct(f: float) -> str:
    return f"{round(100 * float(f))}%"


def aggregate(rows: list[dict]) -> dict:
    """{(model, method, fraction): {"top1": [...], "ce": [...], "kl": [...]}} over seeds; baseline under method 'baseline'."""
    out: dict = defaultdict(lambda: {"top1": [], "ce": [], "kl": [], "seeds": []})
    seen = set()
    for r in rows:
        f = round(float(r["fraction"]), 6)
        if r["evaluated_as"] == "baseline":
            key = (r["model"], "baseline", 0.0)
            if key in seen:
                continue
            seen.add(key)
        else:
            key = (r["model"], r["method"], f)
        out[key]["top1"].append(float(r["top1"]))
        out[key]["ce"].append(float(r["ce"]))
        if r.get("kl") not in (None, "", "-"):
            out[key]["kl"].append(float(r["kl"]))
        out[key]["seeds"].append(int(r["seed"]))
    return out


def metrics(rows: list[dict]) -> list[tuple[str, str, float, int]]:
    """(column, title, scale, digits) of the scores to tabulate: Top1 (in %), CE, and KL where measured."""
    out = [("top1", "Top1 accuracy (%)", 100.0, 2), ("ce", "cross-entropy (nats per scored token or image)", 1.0, 3)]
    if any(r.get("kl") not in (None, "", "-") for r in rows):
        out.append(("kl", "KL(unablated || ablated) (nats per scored token or image)", 1.0, 4))
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan with a single seed)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def format_cell(values: list[float], scale: float, digits: int, empty: str = "") -> str:
    """``mean ± std`` of the values (no ± with one value); ``non-finite!`` flags a NaN or inf mean."""
    if not values:
        return empty
    m, s = mean_std(values)
    if not math.isfinite(m):
        return "non-finite!"
    text = f"{m * scale:.{digits}f}"
    return text + (f" ± {s * scale:.{digits}f}" if math.isfinite(s) else "")


def summary_table(rows: list[dict], methods: list[str], fractions: list[float]) -> str:
    """Markdown like the paper's Table 2: baseline row, then each method's mean ± std over seeds."""
    agg = aggregate(rows)
    models = sorted({r["model"] for r in rows})
    fractions = sorted(set(round(float(f), 6) for f in fractions) | {0.0})
    blocks = []
    for model in models:
        n_seeds = max((len(v["seeds"]) for k, v in agg.items() if k[0] == model and k[1] != "baseline"), default=1)
        tokens = "/".join(map(str, sorted({int(r["n_tokens"]) for r in rows if r["model"] == model})))
        for metric, title, scale, digits in metrics(rows):
            header = "| method | " + " | ".join(_pct(f) for f in fractions) + " |"
            lines = [f"### {model}: {title}, mean ± std over {n_seeds} seed(s), {tokens} scored tokens (or images) per point",
                     "", header, "|---" * (len(fractions) + 1) + "|"]
            base = agg.get((model, "baseline", 0.0), {}).get(metric, [])
            lines.append("| baseline | " + " | ".join(format_cell(base, scale, digits) if f == 0 else "" for f in fractions) + " |")
            for method in methods:
                cells = [format_cell(agg.get((model, method, f), {}).get(metric, []), scale, digits) if f > 0 else ""
                         for f in fractions]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_summary(run_dir: Path, table: str) -> None:
    write_text(Path(run_dir) / "summary.md", table)


def _window_values(stats: dict, layer: int, neuron: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin centres and counts of one neuron's histogram, trimmed to its occupied range."""
    counts = stats["counts"][layer, neuron, 1:-1].double()
    centres = bin_centre(stats["origin"][layer, neuron] + torch.arange(counts.numel()), stats["eps"], stats["alignment"])
    nz = counts.nonzero().squeeze(1)
    if nz.numel() == 0:
        return centres[:1], counts[:1]
    lo, hi = int(nz.min()), int(nz.max()) + 1
    return centres[lo:hi], counts[lo:hi]


def layer_average(stats: dict, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The average distribution of a layer's neurons: each neuron's histogram normalised to 1, placed
    on the shared bin grid and averaged over neurons. Returns (bin centres, average density per bin)."""
    counts = stats["counts"][layer, :, 1:-1].double()  # [width, n_bins]
    origin = stats["origin"][layer]
    width, n_bins = counts.shape
    low = int(origin.min())
    grid = torch.zeros(int(origin.max()) - low + n_bins, dtype=torch.float64)
    flat = ((origin - low)[:, None] + torch.arange(n_bins)).reshape(-1)
    grid.index_add_(0, flat, (counts / counts.sum(1, keepdim=True).clamp_min(1)).reshape(-1))
    centres = bin_centre(low + torch.arange(grid.numel()), stats["eps"], stats["alignment"])
    cdf = grid.cumsum(0) / grid.sum().clamp_min(1e-300)  # show the central 99.8% of the mass
    lo = int(torch.searchsorted(cdf, torch.tensor(0.001, dtype=torch.float64)))
    hi = int(torch.searchsorted(cdf, torch.tensor(0.999, dtype=torch.float64))) + 1
    return centres[lo:hi], grid[lo:hi] / width


def atypical_scores(stats: dict) -> dict[str, torch.Tensor]:
    """Scores per neuron [n_layers, width]:
      off-zero peak: |peak| / (median std of the layer's neurons), the mode's distance from zero in
        the layer's typical scale;
      several modes: Sarle's bimodality coefficient (> 5/9 suggests several modes; heavy tails raise it);
      strong skew: |skew|.
    Neurons whose fullest bin holds a quarter of their values or more are nearly constant: their
    moment ratios are dominated by a few outliers, so they score -inf (not ranked)."""
    layer_scale = stats["std"].median(dim=1, keepdim=True).values.clamp_min(1e-12)
    spread = stats["peak_count"].double() < 0.25 * stats["count"].double()
    scores = {"off-zero peak": stats["peak"].abs() / layer_scale, "several modes": stats["bimodality"],
              "strong skew": stats["skew"].abs()}
    return {k: torch.where(spread, v.double(), torch.tensor(float("-inf"), dtype=torch.float64)) for k, v in scores.items()}


def neuron_table(stats: dict) -> str:
    """CSV, one row per neuron: layer, neuron, mean, peak, std, skew, kurtosis, bimodality, ..."""
    cols = ["mean", "peak", "std", "skew", "kurtosis", "bimodality", "min", "max", "count", "peak_count", "underflow", "overflow"]
    L, D = stats["mean"].shape
    flat = {c: stats[c].reshape(-1).tolist() for c in cols}
    lines = ["layer,neuron," + ",".join(cols)]
    for i in range(L * D):
        lines.append(f"{i // D},{i % D}," + ",".join(f"{flat[c][i]:.9g}" if isinstance(flat[c][i], float) else str(flat[c][i]) for c in cols))
    return "\n".join(lines) + "\n"


CENTRAL = 0.99
"""Share of a neuron's calibration values its plot shows (the central range; tails are clipped)."""


def _plot_neuron(ax, stats, layer, n, title=None, log=False):
    x, c = _window_values(stats, layer, n)
    edges = torch.cat([x - stats["eps"] / 2, x[-1:] + stats["eps"] / 2])
    ax.stairs(c.numpy(), edges.numpy(), fill=True, color="0.6")
    mean, peak = float(stats["mean"][layer, n]), float(stats["peak"][layer, n])
    ax.axvline(0.0, color="k", ls="--", lw=1, label="zero")
    ax.axvline(mean, color="tab:blue", lw=1.5, label=f"mean {mean:.3g}")
    ax.axvline(peak, color="tab:red", lw=1.5, ls="-.", label=f"peak {peak:.3g}")
    # the central CENTRAL share of the values (one outlier must not squeeze the mode into a spike),
    # widened to show zero, the mean and the peak
    cdf = c.cumsum(0) / c.sum().clamp_min(1)
    tail = (1 - CENTRAL) / 2
    lo = float(edges[int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))])
    hi = float(edges[min(len(x), int(torch.searchsorted(cdf, torch.tensor(1 - tail, dtype=cdf.dtype))) + 1)])
    lo, hi = min(lo, 0.0, mean, peak), max(hi, 0.0, mean, peak)
    pad = 0.05 * (hi - lo) or stats["eps"]
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_title(title or f"layer {layer} neuron {n}", fontsize=9)
    ax.set_xlabel("activation (pre-out value)", fontsize=8)
    ax.set_ylabel(f"calibration values per {stats['eps']:g}-wide bin" + (" (log)" if log else ""), fontsize=8)
    if log:  # a tall mode beside a long, thin second mode: both visible
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def neuron_views(stats: dict, run_dir: Path, per_score: int = 3) -> list[Path]:
    """neurons.csv, neurons/layer_average.png and neurons/atypical.png in the run folder, and the same
    figures (plus one per layer) in TensorBoard under tb/calibration. Written once per run folder."""
    out = Path(run_dir) / "neurons"
    if (out / "atypical.png").exists():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    write_text(Path(run_dir) / "neurons.csv", neuron_table(stats))
    writer = SummaryWriter(str(Path(run_dir) / "tb" / "calibration"))
    L = stats["mean"].shape[0]
    written = []

    layers = sorted({0, L // 2, L - 1})
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 3.2), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        x, density = layer_average(stats, layer)
        ax.plot(x.numpy(), density.numpy(), color="0.3")
        mean, peak = float(stats["mean"][layer].mean()), float(stats["peak"][layer].median())
        # the three often nearly coincide: distinct styles, and the values in the legend
        ax.axvline(0.0, color="k", ls="--", lw=1, label="zero")
        ax.axvline(mean, color="tab:blue", lw=2.5, alpha=0.6, label=f"mean of means {mean:.3g}")
        ax.axvline(peak, color="tab:red", lw=1.2, ls="-.", label=f"median peak {peak:.3g}")
        ax.set_title(f"layer {layer}: average neuron distribution", fontsize=9)
        ax.set_xlabel("activation (pre-out value); central 99.8% of the mass", fontsize=8)
        ax.set_ylabel(f"share of a neuron's values per {stats['eps']:g}-wide bin", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "layer_average.png", dpi=100)
    writer.add_figure("distribution/layer_average", fig, 0)
    plt.close(fig)
    written.append(out / "layer_average.png")

    scores = atypical_scores(stats)
    fig, axes = plt.subplots(len(scores), per_score, figsize=(4.2 * per_score, 3 * len(scores)), squeeze=False)
    for row, (name, score) in zip(axes, scores.items()):
        flat = torch.nan_to_num(score.reshape(-1), nan=float("-inf"))
        for ax, idx in zip(row, flat.argsort(descending=True)[:per_score].tolist()):
            layer, n = divmod(idx, score.shape[1])
            _plot_neuron(ax, stats, layer, n, f"{name} {float(score[layer, n]):.2f}: layer {layer} neuron {n}",
                         log=name == "several modes")
    fig.suptitle(f"the most atypical neurons by each score (x axis: the central {100 * CENTRAL:g}% of each neuron's "
                 "calibration values, widened to show zero, mean and peak; several modes: counts on a log scale)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "atypical.png", dpi=100)
    writer.add_figure("distribution/atypical", fig, 0)
    plt.close(fig)
    written.append(out / "atypical.png")

    off_zero = scores["off-zero peak"]
    for layer in range(L):
        picks = off_zero[layer].argsort(descending=True)[:per_score].tolist()
        fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 3), squeeze=False)
        for ax, n in zip(axes[0], picks):
            _plot_neuron(ax, stats, layer, n)
        fig.tight_layout()
        writer.add_figure(f"neurons/layer_{layer:02d}", fig, 0)
        plt.close(fig)
        writer.add_histogram(f"peak_per_neuron/layer_{layer:02d}", stats["peak"][layer].float(), 0)
        writer.add_histogram(f"mean_per_neuron/layer_{layer:02d}", stats["mean"][layer].float(), 0)
    writer.close()
    return written
