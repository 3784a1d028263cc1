"""What an attribution run tells: every unit's estimated effect per method (with a bootstrap interval
over windows), how the methods' estimates agree, and how well the estimates rank the units whose
effect was measured exactly.

From the per-window sums of ``stats.attribution`` (kept in the run folder's attribution.pt) and the
run's exact single-unit rows: ``attribution.csv`` (unit, layer, index, method, loss, estimate, low,
high, exact where measured; with GradDrop its score under the ranked loss), ``attribution.md`` (the
estimate against the exact effect per method: Spearman rank correlation and top-k recall over the
measured units, with 95% bootstrap intervals over windows; with GradDrop also its score and the
estimate's magnitude against the exact effect's magnitude; the methods' agreement over every unit),
and the figures: a neuron map and a head map per method, and a scatter of estimate against exact.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ablate_lit.common.labels import parse_target, target_kind, unit_names
from ablate_lit.report.attribution_figures import head_map, neuron_map, scatter
from ablate_lit.report.importance import agreement, agreement_table, spearman, top_overlap
from ablate_lit.report.paired import N_BOOT
from ablate_lit.report.style import Scored, save
from ablate_lit.stats.attribution import (
    GRADDROP,
    graddrop_estimates,
    graddrop_windows,
    harm,
    level_of,
    losses_of,
    window_estimates,
)
from ablate_lit.store.atomic import write_csv, write_text
from ablate_lit.store.rows import as_rows

CHUNK = 4096
"""Units per chunk of a bootstrap (its draws of every unit would take n_boot x units numbers at once)."""


def draws(n_windows: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """How often each window is drawn in each bootstrap resample [n_boot, n_windows]."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_windows, (n_boot, n_windows))
    counts = np.zeros((n_boot, n_windows))
    np.add.at(counts, (np.arange(n_boot)[:, None], picks), 1.0)
    return counts


def records(sums: dict, targets: list[str], shape: tuple, methods: list[str], n_boot: int = N_BOOT) -> list[dict]:
    """One record per (unit, method, loss): the estimated change of the mean loss, and its 95% interval
    from a bootstrap over windows. ``shape`` is (width, unit_size, chosen layers) of ``targets``."""
    out = []
    dropped = sums.get(GRADDROP)
    for loss in losses_of(sums):
        per = sums[loss]
        count = per["count"].double().numpy()
        boot = draws(len(count), n_boot)
        denominator = boot @ count
        width, unit_size, layers = shape
        graddrop = dropped is not None and loss == losses_of(sums)[-1]
        for method in methods:
            per_window = window_estimates(per[method], *shape).numpy()  # [n_windows, n_units]
            estimate = per_window.sum(0) / max(count.sum(), 1)
            low, high = np.empty_like(estimate), np.empty_like(estimate)
            for start in range(0, per_window.shape[1], CHUNK):
                drawn = (boot @ per_window[:, start : start + CHUNK]) / np.maximum(denominator, 1)[:, None]
                low[start : start + CHUNK], high[start : start + CHUNK] = np.percentile(drawn, [2.5, 97.5], axis=0)
            if graddrop:
                n_layers = per[method].shape[1] // width
                level = dropped[method][level_of(width, unit_size)]
                gd = graddrop_estimates(level, per["count"], n_layers, layers).numpy()
            for i, target in enumerate(targets):
                layer, index = parse_target(target)
                where = {"unit": target, "kind": target_kind(target), "layer": layer}
                what = {"index": "-" if index is None else index, "method": method, "loss": loss}
                value = {"estimate": float(estimate[i]), "low": float(low[i]), "high": float(high[i])}
                if dropped is not None:
                    value["graddrop"] = float(gd[i]) if graddrop else math.nan
                out.append({**where, **what, **value})
    return out


def exact_effects(rows, loss: str) -> dict[tuple[str, str], dict]:
    """{(method, unit): {"exact": change of the mean loss, "per_window": [n_windows], "base": ...}} of the
    exact single-unit rows, against the run's baseline row (``logit_diff`` on a task; else ``ce``)."""
    rows = as_rows(rows)
    base = next((r for r in rows if r.evaluated_as == "baseline" and r.windows), None)
    if base is None:
        return {}
    key = "logit_diff" if loss == "logit_diff" else "nll"
    b = np.asarray(base.windows[key], dtype=np.float64)
    out = {}
    for r in rows:
        if r.is_unit and r.windows and key in r.windows:
            diff = np.asarray(r.windows[key], dtype=np.float64) - b
            exact = r.logit_diff - base.logit_diff if loss == "logit_diff" else r.ce - base.ce
            out[(r.method, r.target)] = {"exact": exact, "per_window": diff}
    return out


def against_exact(sums: dict, targets: list[str], shape: tuple, rows, n_boot: int = N_BOOT) -> list[dict]:
    """Per (loss, method, score): over the units measured exactly, the Spearman rank correlation of the
    score and the exact effect, and the top-k recall (the share of the k measured units of largest exact
    effect that the score also ranks in its k), each with a 95% interval from one bootstrap over windows.
    The scores: the estimated harm against the exact harm; under the ranked loss with GradDrop also the
    estimate's magnitude (``magnitude``) and the GradDrop score, both against the exact effect's magnitude."""
    out = []
    index = {t: i for i, t in enumerate(targets)}
    width, unit_size, layers = shape
    ranked = losses_of(sums)[-1]
    for loss in losses_of(sums):
        per, exact = sums[loss], exact_effects(rows, loss)
        count = per["count"].double().numpy()
        boot = draws(len(count), n_boot)
        denominator = np.maximum(boot @ count, 1)[:, None]
        for method in [m for m in per if m != "count"]:
            units = [t for (m, t) in exact if m == method and t in index]
            if len(units) < 3:
                continue
            columns = [index[t] for t in units]
            estimate_w = window_estimates(per[method], *shape).numpy()[:, columns]
            exact_w = np.stack([exact[(method, t)]["per_window"] for t in units], 1)
            ex = harm(loss, np.array([exact[(method, t)]["exact"] for t in units]))
            ex_b = harm(loss, (boot @ exact_w) / denominator)
            est = harm(loss, estimate_w.sum(0) / max(count.sum(), 1))
            est_b = harm(loss, (boot @ estimate_w) / denominator)
            scores = [("estimate", est, est_b, ex, ex_b)]
            if loss == ranked and GRADDROP in sums:
                n_layers = per[method].shape[1] // width
                dropped = sums[GRADDROP][method][level_of(width, unit_size)]
                gd_w = graddrop_windows(dropped, n_layers, layers).numpy()[:, columns] / max(n_layers - 1, 1)
                gd, gd_b = gd_w.sum(0) / max(count.sum(), 1), (boot @ gd_w) / denominator
                scores += [
                    ("magnitude", np.abs(est), np.abs(est_b), np.abs(ex), np.abs(ex_b)),
                    ("GradDrop", gd, gd_b, np.abs(ex), np.abs(ex_b)),
                ]
            k = min(10, len(units) // 2) or 1
            for score, value, value_b, truth, truth_b in scores:
                for name, point, drawn in (
                    ("spearman", spearman(value, truth), spearman(value_b, truth_b)),
                    (f"top-{k} recall", top_overlap(truth, value, k), top_overlap(truth_b, value_b, k)),
                ):
                    finite = np.isfinite(drawn).any()
                    lo, hi = np.nanpercentile(drawn, [2.5, 97.5]) if finite else (math.nan,) * 2
                    bounds = {"value": float(point), "low": float(lo), "high": float(hi), "n_units": len(units)}
                    out.append({"loss": loss, "method": method, "score": score, "statistic": name, **bounds})
    return out


def against_exact_table(records_: list[dict]) -> str:
    """Markdown: per method, loss and score, Spearman and top-k recall against exact ablation."""
    if not records_:
        return ""
    lines = [
        "### The estimate against exact ablation, over the units measured exactly (each method's top-k and a "
        "random sample): [95% bootstrap interval over windows]",
        "",
        "| method | unit | loss | score | units | Spearman | top-k recall |",
        "|---|---|---|---|---|---|---|",
    ]
    cells: dict = {}
    for r in records_:
        key = (r["method"], r.get("kind", "-"), r["loss"], r.get("score", "estimate"))
        cells.setdefault(key, {})[r["statistic"].split()[0]] = r
    for (method, kind, loss, score), stats in cells.items():
        text = {k: f"{v['value']:.2f} [{v['low']:.2f}, {v['high']:.2f}]" for k, v in stats.items()}
        recall = next((f"{v['statistic'].split()[0]}: {text[k]}" for k, v in stats.items() if k.startswith("top")), "—")
        n = next(iter(stats.values()))["n_units"]
        lines.append(f"| {method} | {kind} | {loss} | {score} | {n} | {text.get('spearman', '—')} | {recall} |")
    note = (
        "\nmagnitude (the estimate's absolute value) and GradDrop (which scores magnitudes) are compared with the "
        "exact effect's magnitude.\n"
        if any(r.get("score") == "GradDrop" for r in records_)
        else ""
    )
    return "\n".join(lines) + "\n" + note


def method_agreement(sums: dict, targets: list[str], shape: tuple, loss: str, n_boot: int = 200) -> list[dict]:
    """The methods' agreement over every unit of ``targets`` (``report.importance.agreement``: Spearman of
    their estimated harm and top-k overlaps), with intervals from one bootstrap over windows."""
    per = sums[loss]
    count = per["count"].double().numpy()
    boot = draws(len(count), n_boot)
    denominator = np.maximum(boot @ count, 1).astype(np.float32)[:, None]
    found, drawn = [], []
    for method in [m for m in per if m != "count"]:
        per_window = window_estimates(per[method], *shape).numpy().astype(np.float32)
        estimate = harm(loss, per_window.sum(0) / max(count.sum(), 1))
        found += [{"unit": t, "method": method, "d_ce": float(estimate[i])} for i, t in enumerate(targets)]
        drawn.append(harm(loss, (boot.astype(np.float32) @ per_window) / denominator).T)
    return agreement(found, np.concatenate(drawn, 0))


def levels(layout: dict) -> list[tuple[str, list[str], tuple]]:
    """(kind, the unit names, their (width, unit_size, layers)) of every level of a run's ``layout`` (its
    width, head_dim or None, chosen layers and checked unit): neurons, heads where there are, layers."""
    width, head_dim, layers = layout["width"], layout["head_dim"], layout["layers"]
    sizes = {"neuron": 1, **({"head": head_dim} if head_dim else {}), "layer": width}
    return [(kind, unit_names(layers, width, size), (width, size, layers)) for kind, size in sizes.items()]


def write_attribution(sums: dict, rows, layout: dict, out: Path, model: str, writer=None):
    """attribution.csv (every unit of every level: neurons, heads, layers), attribution.md (the estimate
    against the exact rows of every level that has them: the run's checks of ``layout["unit"]``, and any
    single-unit map among ``rows``; the methods' agreement over every unit of the checked level) and
    the figures, in ``out`` (and in ``writer``, a series of the run's loggers). Returns (the Markdown,
    the files written)."""
    every = levels(layout)
    head_dim = layout["head_dim"]
    losses = losses_of(sums)
    methods = [m for m in sums[losses[0]] if m != "count"]
    found = [r for _, targets, shape in every for r in records(sums, targets, shape, methods)]
    _, targets, shape = next(level for level in every if level[0] == layout["unit"])
    exact = {loss: exact_effects(rows, loss) for loss in losses}
    for r in found:
        measured = exact[r["loss"]].get((r["method"], r["unit"]))
        r["exact"] = measured["exact"] if measured else math.nan
    out = Path(out)
    write_csv(out / "attribution.csv", found, list(found[0]))
    checks = []
    for kind, level_targets, level_shape in every:  # the run's checks, and any exact map's units
        checks += [{"kind": kind, **r} for r in against_exact(sums, level_targets, level_shape, rows)]
    loss = losses[-1]  # a task's logit difference, else CE
    agree = method_agreement(sums, targets, shape, loss)
    quantity = "the estimated logit difference fall" if loss == "logit_diff" else "the estimated ΔCE"
    markdown = against_exact_table(checks) + ("\n" + agreement_table(agree, quantity) if agree else "")
    write_text(out / "attribution.md", markdown)
    written = [out / "attribution.csv", out / "attribution.md"]
    per = Scored(rows).one
    figures = {
        "neurons": neuron_map(sums, shape, head_dim, loss, model, per),
        "scatter": scatter(found, loss, model, per),
    }
    if head_dim:
        figures["heads"] = head_map(sums, shape, head_dim, loss, model, per)
    for name, fig in figures.items():
        if fig is None:
            continue
        if writer is not None:
            writer.add_figure(f"attribution/{name}", fig, 0, close=False)
        written.append(save(fig, out / f"{model}-attribution-{name}.png"))
    return markdown, written
