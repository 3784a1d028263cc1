"""Which differences are real: paired differences between two methods with bootstrap intervals.

At one point every method sees the same windows (or images) and, for a seed, the same units, so
methods are compared pair by pair: the difference of their token-weighted CE (or Top1) over the
same windows, averaged over seeds. Its 95% interval is a percentile bootstrap that resamples the
windows (the same draw for both methods: paired) and the seeds, both with replacement.
"""

from __future__ import annotations

import numpy as np

from ablate_lit.common.labels import Label, fraction_key, method_rank, pct
from ablate_lit.common.words import counted
from ablate_lit.report import style
from ablate_lit.report.figures import save_plot
from ablate_lit.store.rows import as_rows

N_BOOT = 2000
FEW_WINDOWS = 20
"""Below this many windows the paired table says its intervals are rough."""


def paired_difference(
    a: list[dict], b: list[dict], metric: str = "ce", n_boot: int = N_BOOT, seed: int = 0
) -> tuple[float, float, float]:
    """(difference A - B, 2.5th percentile, 97.5th percentile). ``a`` and ``b`` hold, per seed (in the same
    order), the per-window totals {"nll", "correct", "total"} (a task's: per row, with "logit_diff") of the
    two methods on the same windows. CE is in nats per scored token (per answer), Top1 a fraction."""
    key = {"ce": "nll", "top1": "correct", "logit_diff": "logit_diff"}[metric]
    diff = np.array([np.asarray(x[key], dtype=np.float64) - np.asarray(y[key], dtype=np.float64) for x, y in zip(a, b)])
    # a logit difference is averaged over the rows with a distractor (rows stored before that count: all)
    over = "with_distractor" if metric == "logit_diff" and "with_distractor" in a[0] else "total"
    tokens = np.array([np.asarray(x[over], dtype=np.float64) for x in a])  # [seeds, windows]
    n_seeds, n_windows = diff.shape
    point = float(np.mean(diff.sum(1) / tokens.sum(1)))
    rng = np.random.default_rng(seed)
    windows = rng.integers(0, n_windows, (n_boot, n_windows))
    with np.errstate(invalid="ignore", divide="ignore"):  # a draw of rows none of which has a distractor
        per_seed = np.take(diff, windows, axis=1).sum(-1) / np.take(tokens, windows, axis=1).sum(-1)  # [seeds, boot]
    seeds = rng.integers(0, n_seeds, (n_boot, n_seeds))
    boot = per_seed[seeds.T, np.arange(n_boot)].mean(0)
    lo, hi = np.nanpercentile(boot, [2.5, 97.5]) if np.isfinite(boot).any() else (np.nan, np.nan)
    return point, float(lo), float(hi)


def default_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """Every method against ``mean`` of the same kind (``peak [MLP]`` against ``mean [MLP]``)."""
    pairs = []
    for m in methods:
        label = Label.parse(m)
        mean = str(label.with_method("mean"))
        if label.method != "mean" and mean in methods:
            pairs.append((m, mean))
    return pairs


def _windows_by(rows) -> dict:
    """{(model, method, fraction): {seed: per-window totals}} of the rows that carry them."""
    out: dict = {}
    for r in as_rows(rows):
        if r.windows:
            out.setdefault((r.model, r.method, fraction_key(r.fraction)), {})[r.seed] = r.windows
    return out


def paired_table(rows, pairs: list[tuple[str, str]], fractions: list[float]) -> tuple[str, list[dict]]:
    """Markdown and records: for each pair and fraction, per model, A - B in CE (nats per token) and Top1
    (percentage points) with 95% bootstrap intervals over windows and seeds; * marks an interval
    that excludes 0."""
    by = _windows_by(rows)
    models = list(dict.fromkeys(r.model for r in as_rows(rows)))
    lines = [
        "### Paired differences A - B: mean over seeds, [95% bootstrap interval over windows and seeds], "
        "* = the interval excludes 0",
        "",
        "| | " + " | ".join(models) + " |",
        "|---" * (len(models) + 1) + "|",
    ]
    records = []
    for a, b in pairs:
        for f in fractions:
            cells = []
            for model in models:
                wa, wb = by.get((model, a, round(f, 6)), {}), by.get((model, b, round(f, 6)), {})
                seeds = sorted(set(wa) & set(wb))
                if not seeds:
                    cells.append("—")
                    continue
                text = []
                scores = [("ce", 1.0, "CE"), ("top1", 100.0, "Top1 pp")]
                if "logit_diff" in wa[seeds[0]]:  # a task's rows: answer CE, accuracy, logit difference
                    scores = [("ce", 1.0, "CE"), ("top1", 100.0, "acc pp"), ("logit_diff", 1.0, "LD")]
                for metric, scale, unit in scores:
                    d, lo, hi = paired_difference([wa[s] for s in seeds], [wb[s] for s in seeds], metric)
                    star = "*" if lo > 0 or hi < 0 else ""
                    text.append(f"{unit} {d * scale:+.3f} [{lo * scale:+.3f}, {hi * scale:+.3f}]{star}")
                    records.append(
                        {
                            "a": a,
                            "b": b,
                            "fraction": f,
                            "model": model,
                            "metric": metric,
                            "difference": d,
                            "low": lo,
                            "high": hi,
                            "n_seeds": len(seeds),
                            "n_windows": len(wa[seeds[0]]["total"]),
                        }
                    )
                cells.append("<br>".join(text))
            lines.append(f"| {a} - {b} @ {pct(f)} | " + " | ".join(cells) + " |")
    fewest = min((r["n_windows"] for r in records), default=FEW_WINDOWS)
    if fewest < FEW_WINDOWS:
        caution = (
            f"Caution: only {fewest} evaluation windows (or images) behind these intervals; a bootstrap over fewer "
            f"than {FEW_WINDOWS} is rough, so read a * as a hint, not a finding (evaluate more tokens or images)."
        )
        lines += ["", caution]
    return "\n".join(lines) + "\n", records


def paired_figures(rows, pairs: list[tuple[str, str]], out) -> list:
    """One PNG per model: A - B in CE against % ablated for each pair (in A's colour: ``report.style``),
    with its 95% bootstrap band."""
    by = _windows_by(rows)
    written = []
    for model in dict.fromkeys(r.model for r in as_rows(rows)):
        fig, (ax,) = style.grid(1, 6.5, 4.2)
        drawn = False
        for a, b in sorted(pairs, key=lambda pair: method_rank(pair[0])):
            xs, ds, los, his = [], [], [], []
            for f in sorted({k[2] for k in by if k[0] == model and k[1] == a}):
                wa, wb = by.get((model, a, f), {}), by.get((model, b, f), {})
                seeds = sorted(set(wa) & set(wb))
                if not seeds:
                    continue
                d, lo, hi = paired_difference([wa[s] for s in seeds], [wb[s] for s in seeds], "ce")
                xs.append(100 * f), ds.append(d), los.append(lo), his.append(hi)
            if xs:
                look = style.method_style(a)
                ax.plot(xs, ds, ms=4, lw=1.4, label=f"{a} - {b}", **look)
                ax.fill_between(xs, los, his, color=look["color"], alpha=0.2)
                drawn = True
        if not drawn:
            style.close(fig)
            continue
        mine = [r for r in as_rows(rows) if r.model == model]
        scored = style.Scored(mine)
        ax.axhline(0.0, **style.UNABLATED)
        ax.set_xlabel(style.units_ablated({a for a, _ in pairs}))
        what = "answer CE" if scored.task else "CE"
        ax.set_ylabel(f"{what} difference A - B (nats per {scored.one})")
        seeds = max(len(v) for k, v in by.items() if k[0] == model)
        windows = max(len(w["total"]) for k, v in by.items() if k[0] == model for w in v.values())
        inputs = "rows" if scored.task else "images" if scored.one == "image" else "windows"
        ax.set_title(
            f"{model}: paired differences, 95% bootstrap band\nover {windows} {inputs} and {counted(seeds, 'seed')}",
            fontsize=9,
        )
        written.append(save_plot(fig, ax, out / f"{model}-paired.png"))
    return written
