"""Per-neuron views of the calibration statistics: neurons.csv, the average distribution per layer
(the paper's Figure 1) and the most atypical neurons, as PNGs in the run folder and in TensorBoard."""

from __future__ import annotations

from pathlib import Path

import torch

from ablate_lit.stats.histogram import bin_centre
from ablate_lit.store.atomic import write_text


def _window_values(stats: dict, layer: int, neuron: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin centres and counts of one neuron's histogram, trimmed to its occupied range."""
    counts = stats["counts"][layer, neuron, 1:-1].double()
    centres = bin_centre(
        stats["origin"][layer, neuron] + torch.arange(counts.numel()), stats["eps"], stats["alignment"]
    )
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
    scores = {
        "off-zero peak": stats["peak"].abs() / layer_scale,
        "several modes": stats["bimodality"],
        "strong skew": stats["skew"].abs(),
    }
    return {
        k: torch.where(spread, v.double(), torch.tensor(float("-inf"), dtype=torch.float64)) for k, v in scores.items()
    }


def neuron_table(stats: dict) -> str:
    """CSV, one row per neuron: layer, neuron, mean, peak, std, skew, kurtosis, bimodality, ..."""
    cols = [
        "mean",
        "peak",
        "std",
        "skew",
        "kurtosis",
        "bimodality",
        "min",
        "max",
        "count",
        "peak_count",
        "underflow",
        "overflow",
    ]
    L, D = stats["mean"].shape
    flat = {c: stats[c].reshape(-1).tolist() for c in cols}
    lines = ["layer,neuron," + ",".join(cols)]
    for i in range(L * D):
        lines.append(
            f"{i // D},{i % D},"
            + ",".join(f"{flat[c][i]:.9g}" if isinstance(flat[c][i], float) else str(flat[c][i]) for c in cols)
        )
    return "\n".join(lines) + "\n"


CENTRAL = 0.99
"""Share of a neuron's calibration values its plot shows (the central range; tails are clipped)."""


def _mark_values(ax, values: dict[str, float], names: dict[str, str]) -> None:
    """Zero, the mean and the peak as lines in their methods' colours (``report.style``), each ending at its
    own height with its method's marker, so that values closer than a line's width still read apart."""
    from ablate_lit.report.style import method_style

    for i, (method, value) in enumerate(values.items()):
        look = method_style(method)
        top = 1.0 - 0.12 * i
        ax.axvline(value, ymax=top, color=look["color"], lw=1.3, ls=("--", "-", "-.")[i % 3])
        ax.plot([value], [top], marker=look["marker"], color=look["color"], ms=7, ls="none",
                transform=ax.get_xaxis_transform(), clip_on=False, label=names[method])  # fmt: skip


def _plot_neuron(ax, stats, layer, n, title=None, log=False):
    x, c = _window_values(stats, layer, n)
    edges = torch.cat([x - stats["eps"] / 2, x[-1:] + stats["eps"] / 2])
    ax.stairs(c.numpy(), edges.numpy(), fill=True, color="0.75")
    mean, peak = float(stats["mean"][layer, n]), float(stats["peak"][layer, n])
    names = {"zero": "zero", "mean": f"mean {mean:.3g}", "peak": f"peak {peak:.3g}"}
    _mark_values(ax, {"zero": 0.0, "mean": mean, "peak": peak}, names)
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
    log = log and bool((c > 0).any())  # (a window of empty bins has nothing to draw on a log scale)
    ax.set_ylabel(f"calibration values per {stats['eps']:g}-wide bin" + (" (log)" if log else ""), fontsize=8)
    if log:  # a tall mode beside a long, thin second mode: both visible
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def neuron_views(stats: dict, run_dir: Path, writer=None, per_score: int = 3, model: str = "") -> list[Path]:
    """neurons.csv, neurons/layer_average.png and neurons/atypical.png in the run folder, and the same
    figures (plus one per layer) and histograms in ``writer`` (the run loggers' ``calibration`` series,
    ``common.curves``: TensorBoard's tb/calibration by default), ``model`` named in their titles. Written
    once per run folder."""
    out = Path(run_dir) / "neurons"
    if (out / "atypical.png").exists():
        return []
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    write_text(Path(run_dir) / "neurons.csv", neuron_table(stats))
    scores = atypical_scores(stats)
    written = [
        _save(_layer_average_figure(stats, model), out / "layer_average.png", writer, "distribution/layer_average"),
        _save(_atypical_figure(stats, scores, per_score, model), out / "atypical.png", writer, "distribution/atypical"),
    ]
    if writer is not None:
        _per_layer_views(stats, scores["off-zero peak"], per_score, writer, model)
        writer.flush()
    return written


def _save(fig, path: Path, writer, tag: str) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    if writer is not None:
        writer.add_figure(tag, fig, 0, close=False)
    plt.close(fig)
    return path


def _layer_average_figure(stats: dict, model: str = ""):
    """The average neuron distribution of the first, middle and last layer (the paper's Figure 1)."""
    from ablate_lit.report.style import grid

    n_layers = stats["mean"].shape[0]
    layers = sorted({0, n_layers // 2, n_layers - 1})
    fig, axes = grid(len(layers), 4.6, 3.4)
    for ax, layer in zip(axes, layers):
        x, density = layer_average(stats, layer)
        ax.fill_between(x.numpy(), density.numpy(), color="0.8", step="mid")
        ax.plot(x.numpy(), density.numpy(), color="0.3", lw=1, drawstyle="steps-mid")
        mean, peak = float(stats["mean"][layer].mean()), float(stats["peak"][layer].median())
        names = {"zero": "zero", "mean": f"mean of means {mean:.3g}", "peak": f"median peak {peak:.3g}"}
        _mark_values(ax, {"zero": 0.0, "mean": mean, "peak": peak}, names)  # often nearly one place
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("activation (pre-out value); central 99.8% of the mass", fontsize=8)
        ax.set_ylabel(f"share of a neuron's values per {stats['eps']:g}-wide bin", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    named = f"{model}: " if model else ""
    fig.suptitle(f"{named}the average distribution of a neuron's calibration activations, per layer", fontsize=10)
    return fig


def _atypical_figure(stats: dict, scores: dict, per_score: int, model: str = ""):
    """The ``per_score`` most atypical neurons by each score, zero, mean and peak marked."""
    import numpy as np

    from ablate_lit.report.style import grid

    fig, flat = grid(len(scores) * per_score, 4.2, 3.0, columns=per_score)
    axes = np.array(flat, dtype=object).reshape(len(scores), per_score)
    for row, (name, score) in zip(axes, scores.items()):
        flat = torch.nan_to_num(score.reshape(-1), nan=float("-inf"))
        for ax, idx in zip(row, flat.argsort(descending=True)[:per_score].tolist()):
            layer, n = divmod(idx, score.shape[1])
            title = f"{name} {float(score[layer, n]):.2f}: layer {layer} neuron {n}"
            _plot_neuron(ax, stats, layer, n, title, log=name == "several modes")
    fig.suptitle(
        f"{model + ': ' if model else ''}the most atypical neurons by each score\n(x axis: the central "
        f"{100 * CENTRAL:g}% of each neuron's calibration values, widened to show zero, mean and peak; several "
        "modes: counts on a log scale)",
        fontsize=9,
    )
    return fig


def _per_layer_views(stats: dict, off_zero, per_score: int, writer, model: str = "") -> None:
    """TensorBoard only: each layer's most off-zero-peaked neurons, and histograms of peaks and means."""
    import matplotlib.pyplot as plt

    from ablate_lit.report.style import grid

    for layer in range(stats["mean"].shape[0]):
        picks = off_zero[layer].argsort(descending=True)[:per_score].tolist()
        fig, axes = grid(len(picks), 4.0, 3.0)
        for ax, n in zip(axes, picks):
            _plot_neuron(ax, stats, layer, n)
        fig.suptitle(f"{model + ': ' if model else ''}layer {layer}, the neurons of most off-zero peak", fontsize=9)
        writer.add_figure(f"neurons/layer_{layer:02d}", fig, 0, close=False)
        plt.close(fig)
        writer.add_histogram(f"peak_per_neuron/layer_{layer:02d}", stats["peak"][layer].float(), 0)
        writer.add_histogram(f"mean_per_neuron/layer_{layer:02d}", stats["mean"][layer].float(), 0)
