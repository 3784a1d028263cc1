"""results.csv -> the paper-style summary table; calibration histograms -> TensorBoard figures."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import torch


def _pct(f: float) -> str:
    return f"{round(100 * float(f))}%"


def aggregate(rows: list[dict]) -> dict:
    """{(model, method, fraction): {"top1": [...], "ce": [...]}} over seeds; baseline under method 'baseline'."""
    out: dict = defaultdict(lambda: {"top1": [], "ce": [], "seeds": []})
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
        out[key]["seeds"].append(int(r["seed"]))
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan with a single seed)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _cell(values: list[float], scale: float, digits: int) -> str:
    if not values:
        return ""
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
        for metric, title, scale, digits in (("top1", "Top1 accuracy (%)", 100.0, 2), ("ce", "cross-entropy (nats per scored token or image)", 1.0, 3)):
            header = "| method | " + " | ".join(_pct(f) for f in fractions) + " |"
            lines = [f"### {model}: {title}, mean ± std over {n_seeds} seed(s)", "", header,
                     "|---" * (len(fractions) + 1) + "|"]
            base = agg.get((model, "baseline", 0.0), {}).get(metric, [])
            lines.append("| baseline | " + " | ".join(_cell(base, scale, digits) if f == 0 else "" for f in fractions) + " |")
            for method in methods:
                cells = [_cell(agg.get((model, method, f), {}).get(metric, []), scale, digits) if f > 0 else ""
                         for f in fractions]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_summary(run_dir: Path, table: str) -> None:
    from ablate_lit.callbacks.results import write_atomic

    write_atomic(Path(run_dir) / "summary.md", table)


def _window_values(stats: dict, layer: int, neuron: int) -> tuple[torch.Tensor, torch.Tensor]:
    eps, shift = stats["eps"], 0.0 if stats["alignment"] == "edge" else 0.5
    counts = stats["counts"][layer, neuron, 1:-1].double()
    centres = (stats["origin"][layer, neuron] + torch.arange(counts.numel()) + 0.5 - shift).double() * eps
    nz = counts.nonzero().squeeze(1)
    lo, hi = int(nz.min()), int(nz.max()) + 1
    return centres[lo:hi], counts[lo:hi]


def log_histograms(tb_dir: Path, stats: dict, per_layer: int = 3) -> None:
    """One figure per layer: the neurons whose peak lies furthest from their mean (in std units),
    each with zero, mean and peak marked. Written once per run folder."""
    marker = Path(tb_dir) / ".written"
    if marker.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir))
    mean, peak, std = stats["mean"], stats["peak"], stats["std"].clamp_min(1e-12)
    score = ((peak - mean).abs() / std)
    for layer in range(mean.shape[0]):
        picks = score[layer].argsort(descending=True)[:per_layer].tolist()
        fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 3))
        for ax, n in zip(axes if len(picks) > 1 else [axes], picks):
            x, c = _window_values(stats, layer, n)
            edges = torch.cat([x - stats["eps"] / 2, x[-1:] + stats["eps"] / 2])
            ax.stairs(c.numpy(), edges.numpy(), fill=True, color="0.6")
            ax.axvline(0.0, color="k", ls="--", lw=1, label="zero")
            ax.axvline(float(mean[layer, n]), color="tab:blue", lw=1.5, label=f"mean {float(mean[layer, n]):.3f}")
            ax.axvline(float(peak[layer, n]), color="tab:red", lw=1.5, label=f"peak {float(peak[layer, n]):.3f}")
            ax.set_title(f"layer {layer} neuron {n}", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        writer.add_figure(f"neurons/layer_{layer:02d}", fig, 0)
        plt.close(fig)
        writer.add_histogram(f"peak_per_neuron/layer_{layer:02d}", peak[layer].float(), 0)
        writer.add_histogram(f"mean_per_neuron/layer_{layer:02d}", mean[layer].float(), 0)
    writer.close()
    marker.touch()
