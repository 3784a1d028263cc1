"""Result rows -> the paper-style summary table (mean ± std over seeds), and the numbers behind it."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from ablate_lit.common.labels import fraction_key, pct
from ablate_lit.common.words import counted
from ablate_lit.report.style import Scored, ordered, ylabel
from ablate_lit.store.atomic import write_text
from ablate_lit.store.rows import as_rows


def aggregate(rows) -> dict:
    """{(model, method, fraction): {"top1": [...], "ce": [...], "kl": [...]}} over seeds; the baseline under
    method 'baseline'."""
    out: dict = defaultdict(lambda: {"top1": [], "ce": [], "kl": [], "logit_diff": [], "seeds": []})
    seen = set()
    for r in as_rows(rows):
        if r.evaluated_as == "baseline":
            key = (r.model, "baseline", 0.0)
            if key in seen:
                continue
            seen.add(key)
        else:
            key = (r.model, r.method, fraction_key(r.fraction))
        for metric in ("top1", "ce", "kl", "logit_diff"):
            if r.value(metric) is not None:
                out[key][metric].append(r.value(metric))
        out[key]["seeds"].append(r.seed)
    return out


def is_task(rows) -> bool:
    """The rows score a task's answers (``data.task``: they have a ``task`` column)."""
    return any(r.task is not None for r in as_rows(rows))


def metrics(rows) -> list[tuple[str, str, float, int]]:
    """(column, title, scale, digits) of the scores to tabulate: Top1 (in %), CE, and KL where measured;
    on a task, answer accuracy, answer CE, KL at the answer positions and the logit difference. Titles
    carry the unit of what was scored (``report.style``)."""
    rows = as_rows(rows)
    scored = Scored(rows)
    digits = {"top1": 2, "ce": 3, "kl": 4, "logit_diff": 3}
    shown = ["top1", "ce"]
    if any(r.kl is not None for r in rows) or is_task(rows):
        shown.append("kl")
    if is_task(rows) and any(r.logit_diff is not None for r in rows):
        shown.append("logit_diff")
    return [(m, ylabel(m, scored), 100.0 if m == "top1" else 1.0, digits[m]) for m in shown]


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


def summary_table(rows, methods: list[str], fractions: list[float]) -> str:
    """Markdown like the paper's Table 2: baseline row, then each method's mean ± std over seeds."""
    rows = as_rows(rows)
    agg = aggregate(rows)
    models = sorted({r.model for r in rows})
    methods = ordered(methods)  # the paper's order: zero, mean, peak, ..., resample sources
    fractions = sorted(set(fraction_key(f) for f in fractions) | {0.0})
    blocks = []
    for model in models:
        n_seeds = max((len(v["seeds"]) for k, v in agg.items() if k[0] == model and k[1] != "baseline"), default=1)
        scored = Scored([r for r in rows if r.model == model]).per_point()
        over = f"mean ± std over {counted(n_seeds, 'seed')}" if n_seeds > 1 else "1 seed"
        for metric, title, scale, digits in metrics(rows):
            header = "| method | " + " | ".join(pct(f) for f in fractions) + " |"
            lines = [
                f"### {model}: {title}, {over}, {scored}",
                "",
                header,
                "|---" * (len(fractions) + 1) + "|",
            ]
            base = agg.get((model, "baseline", 0.0), {}).get(metric, [])
            lines.append(
                "| baseline | "
                + " | ".join(format_cell(base, scale, digits) if f == 0 else "" for f in fractions)
                + " |"
            )
            for method in methods:
                cells = [
                    format_cell(agg.get((model, method, f), {}).get(metric, []), scale, digits) if f > 0 else ""
                    for f in fractions
                ]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_summary(run_dir: Path, table: str) -> None:
    write_text(Path(run_dir) / "summary.md", table)
