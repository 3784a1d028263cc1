"""Which units matter, and whether the answer depends on the method: the single-unit importance map.

From the rows of a single-unit run (``--ablation.schedule each``): per (unit, method) the loss
increase over the unablated model, ΔCE and ΔTop1, with a 95% percentile-bootstrap interval over the
evaluation windows (paired: the unit's windows and the baseline's are the same); and per pair of
methods, how much their verdicts agree: the Spearman rank correlation of the units' ΔCE and the
overlap of their top-k units (k = 5, 10 and 10% of the units), with intervals from the same
bootstrap draw of windows (every unit and method resampled together, so the intervals are coherent).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ablate_lit.common.labels import method_rank, parse_target
from ablate_lit.report.paired import N_BOOT
from ablate_lit.store.rows import ResultRow, as_rows


def unit_rows(rows) -> tuple[ResultRow | None, list[ResultRow]]:
    """(the baseline row, the single-unit rows) of one model's rows."""
    rows = as_rows(rows)
    base = next((r for r in rows if r.evaluated_as == "baseline"), None)
    units = [r for r in rows if r.is_unit]

    def key(r):  # the registry's method order (zero, mean, ..., resample), then layer and head
        layer, head = parse_target(r.target)
        return (*method_rank(r.method), layer, -1 if head is None else head)

    return base, sorted(units, key=key)


def _window_matrix(units: list[ResultRow], base: ResultRow, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(per unit row, per window: the unit's total minus the baseline's [n_units, n_windows]; tokens
    per window [n_windows])."""
    b = np.asarray(base.windows[key], dtype=np.float64)
    diff = np.array([np.asarray(r.windows[key], dtype=np.float64) - b for r in units])
    return diff, np.asarray(base.windows["total"], dtype=np.float64)


def _draws(n_windows: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each window is drawn in each bootstrap resample [n_boot, n_windows]."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_windows, (n_boot, n_windows))
    counts = np.zeros((n_boot, n_windows))
    np.add.at(counts, (np.arange(n_boot)[:, None], picks), 1.0)
    return counts


def importance(rows, n_boot: int = N_BOOT, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Records (layer, head, unit, method, top1, ce, kl, d_ce [low, high], d_top1 [low, high], n_tokens)
    in the rows' order, and the bootstrap draws of d_ce [n_units, n_boot] they share."""
    base, units = unit_rows(rows)
    if base is None or not units:
        return [], np.zeros((0, n_boot))
    nll, tokens = _window_matrix(units, base, "nll")
    correct, _ = _window_matrix(units, base, "correct")
    draws = _draws(len(tokens), n_boot, seed)
    boot_ce = (nll @ draws.T) / (tokens @ draws.T)  # [n_units, n_boot]
    boot_top1 = (correct @ draws.T) / (tokens @ draws.T)
    records = []
    for i, r in enumerate(units):
        layer, head = parse_target(r.target)
        d_ce, d_top1 = nll[i].sum() / tokens.sum(), correct[i].sum() / tokens.sum()
        lo, hi = np.percentile(boot_ce[i], [2.5, 97.5])
        lo1, hi1 = np.percentile(boot_top1[i], [2.5, 97.5])
        records.append(
            {
                **{"layer": layer, "head": "-" if head is None else head, "unit": r.target, "method": r.method},
                **{"top1": r.top1, "ce": r.ce, "kl": math.nan if r.kl is None else r.kl},
                **{"d_ce": float(d_ce), "d_ce_low": float(lo), "d_ce_high": float(hi)},
                **{"d_top1": float(d_top1), "d_top1_low": float(lo1), "d_top1_high": float(hi1)},
                **{"n_tokens": r.n_tokens, "n_windows": len(tokens)},
            }
        )
    return records, boot_ce


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, axis=-1, kind="stable")
    s = np.take_along_axis(x, order, -1)
    n = x.shape[-1]
    idx = np.broadcast_to(np.arange(n), x.shape)
    same = s[..., 1:] == s[..., :-1]  # a value equal to the one before it in sorted order
    first = np.maximum.accumulate(np.where(np.concatenate([np.zeros_like(same[..., :1]), same], -1), 0, idx), -1)
    last_mark = np.where(np.concatenate([same, np.zeros_like(same[..., :1])], -1), n, idx)
    last = np.flip(np.minimum.accumulate(np.flip(last_mark, -1), -1), -1)
    ranked = np.empty_like(x)
    np.put_along_axis(ranked, order, (first + last) / 2 + 1, -1)
    return ranked


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of ``a`` and ``b`` along the last axis (NaN where one is constant)."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    den = np.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The share of ``a``'s k largest that are among ``b``'s k largest, along the last axis (ties: the
    unit listed first counts as the larger)."""
    top_a = np.argsort(-a, axis=-1, kind="stable")[..., :k]
    top_b = np.argsort(-b, axis=-1, kind="stable")[..., :k]
    hits = (top_a[..., :, None] == top_b[..., None, :]).any(-1).sum(-1)
    return hits / k


def top_ks(n_units: int) -> list[tuple[str, int]]:
    """(label, k): 5, 10 and 10% of the units, those smaller than the number of units."""
    ks = [("top-5", 5), ("top-10", 10), ("top-10%", max(1, math.ceil(0.1 * n_units)))]
    return [(label, k) for label, k in ks if k < n_units]


def agreement(records: list[dict], boot: np.ndarray) -> list[dict]:
    """Per pair of methods: Spearman of the units' ΔCE and the top-k overlaps, each with a 95% interval."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    by = {m: [i for i, r in enumerate(records) if r["method"] == m] for m in methods}
    units = [records[i]["unit"] for i in by[methods[0]]] if methods else []
    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            if [records[j]["unit"] for j in by[b]] != units:
                continue  # the two methods cover other units (a partly finished run)
            da = np.array([records[j]["d_ce"] for j in by[a]])
            db = np.array([records[j]["d_ce"] for j in by[b]])
            ba, bb = boot[by[a]].T, boot[by[b]].T  # [n_boot, n_units]
            stats = [("spearman", spearman(da, db), spearman(ba, bb))]
            stats += [(label, top_overlap(da, db, k), top_overlap(ba, bb, k)) for label, k in top_ks(len(units))]
            for name, value, draws in stats:
                lo, hi = np.nanpercentile(draws, [2.5, 97.5]) if np.isfinite(draws).any() else (math.nan,) * 2
                out.append({"a": a, "b": b, "statistic": name, "value": float(value), "low": float(lo),
                            "high": float(hi), "n_units": len(units)})  # fmt: skip
    return out


def agreement_table(records: list[dict], quantity: str = "ΔCE") -> str:
    """Markdown: one row per pair of methods, one column per statistic, ``value [low, high]``;
    ``quantity``: what the methods' ranks are of."""
    if not records:
        return ""
    names = list(dict.fromkeys(r["statistic"] for r in records))
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in records))
    cells = {(r["a"], r["b"], r["statistic"]): r for r in records}
    lines = [
        f"### Method agreement over {records[0]['n_units']} units: Spearman rank correlation of {quantity} and top-k "
        "overlap, [95% bootstrap interval over windows]",
        "",
        "| methods | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for a, b in pairs:
        row = [cells.get((a, b, n)) for n in names]
        text = [f"{c['value']:.2f} [{c['low']:.2f}, {c['high']:.2f}]" if c else "—" for c in row]
        lines.append(f"| {a} vs {b} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def top_units_table(records: list[dict], k: int = 5) -> str:
    """Markdown: each method's k units with the largest ΔCE."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = [f"### The {k} units each method finds most important (ΔCE [95% interval], nats per token)", ""]
    lines += ["| method | " + " | ".join(f"#{i + 1}" for i in range(k)) + " |", "|---" * (k + 1) + "|"]
    for m in methods:
        mine = sorted((r for r in records if r["method"] == m), key=lambda r: -r["d_ce"])[:k]
        cells = [f"{r['unit']} {r['d_ce']:+.3f} [{r['d_ce_low']:+.3f}, {r['d_ce_high']:+.3f}]" for r in mine]
        cells += ["—"] * (k - len(cells))  # fewer units than k
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_importance(rows: list[dict], out: Path, model: str, writer=None) -> tuple[str, list[Path]]:
    """importance.csv, agreement.csv and <model>-importance.png in ``out`` (and the figure in ``writer``,
    a series of the run's loggers: ``common.curves``); returns (the Markdown tables, the files written)."""
    from ablate_lit.report.importance_figures import importance_figure
    from ablate_lit.report.style import Scored, save
    from ablate_lit.store.atomic import write_csv, write_text

    records, boot = importance(rows)
    if not records:
        return "", []
    agree = agreement(records, boot)
    out = Path(out)
    write_csv(out / "importance.csv", records, list(records[0]))
    written = [out / "importance.csv"]
    if agree:
        write_csv(out / "agreement.csv", agree, list(agree[0]))
        written.append(out / "agreement.csv")
    markdown = top_units_table(records) + ("\n" + agreement_table(agree) if agree else "")
    write_text(out / "importance.md", markdown)
    fig = importance_figure(records, model, Scored(rows))
    if writer is not None:
        writer.add_figure("importance/map", fig, 0, close=False)
    written += [out / "importance.md", save(fig, out / f"{model}-importance.png")]
    return markdown, written
