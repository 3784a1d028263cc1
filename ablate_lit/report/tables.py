"""Rows of several runs merged (``load_runs``), labelled by what they ablated, and the paper's Table 2."""

from __future__ import annotations

import sys
from pathlib import Path

from ablate_lit.common.errors import AblateError
from ablate_lit.common.labels import NO_TARGET, fraction_key, pct
from ablate_lit.report.style import ordered
from ablate_lit.report.summary import aggregate, format_cell, mean_std, metrics
from ablate_lit.store.folder import read_rows, with_family
from ablate_lit.store.rows import ResultRow, as_rows


def load_runs(run_dirs: list[str]) -> list[ResultRow]:
    """Valid rows of every run (malformed ones reported on stderr, file and line, and skipped); a
    (model, method, seed, fraction) seen twice is kept once (first run wins). Runs of one model name
    with different setups (other weights, data or settings) are never merged: each gets its run
    folder added to the name, so each has its own column. Runs of one setup that ablate other units
    (MLP units, heads, some layers, an order) are lines of their own in the same column."""
    runs = []
    for d in run_dirs:
        if not (Path(d) / "results.csv").is_file() and not (Path(d) / "points").is_dir():
            raise AblateError(f"'{d}' holds no results.csv; pass run folders such as lightning_logs/<run>")
        found, problems = read_rows(Path(d), windows=True)
        found = with_family(found, Path(d))
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        runs.append((Path(d), found))
    models: dict[str, dict] = {}  # model name -> {setup (model, data, settings): the first run folder with it}
    for d, found in runs:
        for r in found:
            models.setdefault(r.model, {}).setdefault(_setup(r, d), d.name)
    rows, seen = [], set()
    for d, found in runs:
        for r in found:
            r = r.replace(method=method_label(r))  # attention neurons, heads and MLP units of one model: separate lines
            setups = models[r.model]
            if len(setups) > 1:
                r = r.replace(model=f"{r.model} ({setups[_setup(r, d)]})")
            key = (r.model, r.method, r.seed, fraction_key(r.fraction), r.target or NO_TARGET)
            if key not in seen:
                seen.add(key)
                rows.append(r)
    if not rows:
        raise AblateError("the runs hold no results yet")
    return rows


def _setup(row: ResultRow, run_dir: Path) -> str:
    return row.setup_id or row.run_id or str(run_dir)


def method_label(row: ResultRow) -> str:
    """The method, with what was ablated where it is not the paper's (attention neurons, all layers, at random)."""
    return str(row.label)


def table(rows, fractions: list[float]) -> tuple[str, list[dict]]:
    """Markdown (Top1 then CE; rows baseline, then method @ fraction; columns models) and CSV records."""
    rows = as_rows(rows)
    agg = aggregate(rows)
    models = list(dict.fromkeys(r.model for r in rows))
    methods = ordered(r.method for r in rows)
    records, blocks = [], []
    for metric, title, scale, digits in metrics(rows):
        lines = [
            f"### {title}, mean ± std over seeds",
            "",
            "| | " + " | ".join(models) + " |",
            "|---" * (len(models) + 1) + "|",
        ]
        entries = [("baseline", 0.0)] + [(m, f) for f in fractions for m in methods]
        for method, f in entries:
            cells = []
            for model in models:
                values = agg.get((model, method, 0.0 if method == "baseline" else round(f, 6)), {}).get(metric, [])
                cells.append(format_cell(values, scale, digits, empty="—"))
                m, s = mean_std(values) if values else (float("nan"), float("nan"))
                records.append(
                    {
                        "metric": metric,
                        "method": method,
                        "fraction": f,
                        "model": model,
                        "mean": m,
                        "std": s,
                        "n_seeds": len(values),
                    }
                )
            label = "baseline" if method == "baseline" else f"{method} @ {pct(f)}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n", records
