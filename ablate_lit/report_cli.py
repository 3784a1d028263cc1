"""``python -m ablate_lit report RUN_DIR [RUN_DIR ...]``: the paper's Table 2 and Figures 2-3 from runs."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ablate_lit.ablation.schedule import fraction_key
from ablate_lit.atomic import check_folder, write_csv, write_text
from ablate_lit.errors import AblateError
from ablate_lit.paired import default_pairs, paired_figures, paired_table
from ablate_lit.report import aggregate, format_cell, mean_std, metrics
from ablate_lit.store import read_rows


def load_runs(run_dirs: list[str]) -> list[dict]:
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
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        runs.append((Path(d), found))
    models: dict[str, dict] = {}  # model name -> {setup (model, data, settings): the first run folder with it}
    for d, found in runs:
        for r in found:
            models.setdefault(r["model"], {}).setdefault(_setup(r, d), d.name)
    rows, seen = [], set()
    for d, found in runs:
        for r in found:
            r = {**r, "method": method_label(r)}  # attention neurons, heads and MLP units of one model: separate lines
            setups = models[r["model"]]
            if len(setups) > 1:
                r = {**r, "model": f"{r['model']} ({setups[_setup(r, d)]})"}
            key = (r["model"], r["method"], int(r["seed"]), fraction_key(r["fraction"]))
            if key not in seen:
                seen.add(key)
                rows.append(r)
    if not rows:
        raise AblateError("the runs hold no results yet")
    return rows


def _setup(row: dict, run_dir: Path) -> str:
    for key in ("setup_id", "run_id"):
        if row.get(key) not in (None, "", "-"):
            return row[key]
    return str(run_dir)


def method_label(row: dict) -> str:
    """The method, with what was ablated where it is not the paper's (attention neurons, all layers, at random)."""
    parts = []
    if row.get("site") == "mlp":
        parts.append("MLP")
    if row.get("unit") == "head":
        parts.append("heads")
    if row.get("layers") not in (None, "", "-", "all"):
        parts.append(f"layers {row['layers']}")
    if row.get("order") not in (None, "", "-", "random"):
        parts.append(f"by {row['order']}")
    if row.get("selection") == "global":
        parts.append("global")
    return row["method"] + (f" [{', '.join(parts)}]" if parts else "")


def table(rows: list[dict], fractions: list[float]) -> tuple[str, list[dict]]:
    """Markdown (Top1 then CE; rows baseline, then method @ fraction; columns models) and CSV records."""
    agg = aggregate(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    records, blocks = [], []
    for metric, title, scale, digits in metrics(rows):
        lines = [f"### {title}, mean ± std over seeds", "", "| | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
        entries = [("baseline", 0.0)] + [(m, f) for f in fractions for m in methods]
        for method, f in entries:
            cells = []
            for model in models:
                values = agg.get((model, method, 0.0 if method == "baseline" else round(f, 6)), {}).get(metric, [])
                cells.append(format_cell(values, scale, digits, empty="—"))
                m, s = mean_std(values) if values else (float("nan"), float("nan"))
                records.append({"metric": metric, "method": method, "fraction": f, "model": model, "mean": m,
                                "std": s, "n_seeds": len(values)})
            label = "baseline" if method == "baseline" else f"{method} @ {round(100 * f)}%"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n", records


STYLES = ["-", "--", ":", "-."]


def figures(rows: list[dict], out: Path) -> list[Path]:
    """One PNG per model (``model_figure``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for model in dict.fromkeys(r["model"] for r in rows):
        fig = model_figure(rows, model)
        path = out / f"{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def model_figure(rows: list[dict], model: str):
    """A matplotlib Figure: Top1 and CE of ``model`` (and KL, where measured) against % ablated, a line
    per method (colour: the method; line style: what was ablated), a band of +- one std over seeds,
    the unablated model as a dashed line, and the seeds and scored tokens behind every point in the title."""
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    mine = [r for r in rows if r["model"] == model]
    methods = list(dict.fromkeys(r["method"] for r in mine))
    bases = list(dict.fromkeys(m.split(" [")[0] for m in methods))
    kinds = list(dict.fromkeys(m[len(m.split(" [")[0]):] for m in methods))
    colours = {b: f"C{i % 10}" for i, b in enumerate(bases)}
    panels = [(metric, scale) for metric, _, scale, _ in metrics(mine)]  # top1 (%), ce, and kl where measured
    fig, axes = plt.subplots(1, len(panels), figsize=(5.75 * len(panels), 4.3), squeeze=False)
    axes = list(axes[0])
    base = agg.get((model, "baseline", 0.0))
    for method in methods:
        points = sorted(f for (mo, me, f) in agg if mo == model and me == method)
        kind = method[len(method.split(" [")[0]):]
        style = dict(color=colours[method.split(" [")[0]], ls=STYLES[kinds.index(kind) % len(STYLES)])
        for ax, (metric, scale) in zip(axes, panels):
            xs, means, stds = [], [], []
            if base and base[metric]:
                xs.append(0.0), means.append(mean_std(base[metric])[0] * scale), stds.append(0.0)
            for f in points:
                values = agg[(model, method, f)][metric]
                if not values:
                    continue
                m, s = mean_std(values)
                xs.append(100 * f), means.append(m * scale), stds.append(0.0 if not math.isfinite(s) else s * scale)
            ax.plot(xs, means, marker="o", ms=3, label=method, **style)
            top = 100.0 if metric == "top1" else float("inf")  # the band stays where the metric can be
            ax.fill_between(xs, [max(0.0, m - s) for m, s in zip(means, stds)],
                            [min(top, m + s) for m, s in zip(means, stds)], color=style["color"], alpha=0.15)
    for ax, (metric, scale) in zip(axes, panels):
        if base and base[metric]:
            ax.axhline(mean_std(base[metric])[0] * scale, color="0.4", ls="--", lw=1, label="unablated")
        ax.set_xlabel("units ablated (%): neurons, or heads for [heads]" if any("heads" in k for k in kinds)
                      else "neurons ablated (%)")
        ax.set_ylabel({"top1": "Top1 accuracy (%)", "ce": "cross-entropy (nats per scored token or image)",
                       "kl": "KL(unablated || ablated) (nats per token or image)"}[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2 if len(methods) > 6 else 1)
    seeds = max(len({r["seed"] for r in mine if r["method"] == m}) for m in methods)
    tokens = sorted({int(r["n_tokens"]) for r in mine})
    fig.suptitle(f"{model}: {seeds} seed(s), {'/'.join(map(str, tokens))} scored tokens (or images) per point, "
                 "band: +- one std over seeds", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m ablate_lit report",
                                 description="Merge runs into the paper's Table 2 (Markdown + CSV) and Figures 2-3 (PNG).")
    ap.add_argument("runs", nargs="+", help="run folders (lightning_logs/<run>), several models or seeds")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.9], help="fractions in the table (default 0.5 0.9)")
    ap.add_argument("--out", default=None, help="output folder (default: lightning_logs/report)")
    ap.add_argument("--pairs", nargs="*", default=None, metavar="A,B",
                    help="pairs of methods to compare (A - B with 95%% bootstrap intervals), e.g. peak,mean "
                         "'peak [MLP],mean [MLP]' (default: every method against mean of the same kind)")
    args = ap.parse_args(argv)
    for f in args.fractions:
        if not 0 < f <= 1:
            raise AblateError(f"--fractions holds {f}; table fractions must be in (0, 1]")
    rows = load_runs(args.runs)
    out = check_folder(args.out or Path(args.runs[0]).parent / "report", "--out")
    markdown, records = table(rows, args.fractions)
    write_text(out / "table.md", markdown)
    write_csv(out / "table.csv", records, list(records[0]))
    pngs = figures(rows, out) + eps_figures(rows, out)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    pairs = default_pairs(methods) if args.pairs is None else [_pair(p, methods) for p in args.pairs]
    if pairs and any(r.get("_windows") for r in rows):
        paired_md, paired_records = paired_table(rows, pairs, args.fractions)
        write_text(out / "paired.md", paired_md)
        write_csv(out / "paired.csv", paired_records, list(paired_records[0]) if paired_records else ["a"])
        markdown += "\n" + paired_md
        pngs += paired_figures(rows, pairs, out)
    print(markdown)
    print(f"table:   {out / 'table.md'}, {out / 'table.csv'}")
    print("figures: " + ", ".join(str(p) for p in pngs))


def _pair(text: str, methods: list[str]) -> tuple[str, str]:
    a, sep, b = text.partition(",")
    if not sep or a.strip() not in methods or b.strip() not in methods:
        raise AblateError(f"--pairs '{text}' must be two methods of the runs joined by a comma, e.g. peak,mean "
                          f"(methods: {', '.join(methods)})")
    return a.strip(), b.strip()


def eps_figures(rows: list[dict], out: Path) -> list[Path]:
    """For runs with peaks at several bin widths (peak, peak:eps=E): CE of the peak method against eps,
    one line per fraction (the grid bias the paper's definition carries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    written = []
    for model in dict.fromkeys(r["model"] for r in rows):
        widths = {}
        for r in rows:
            if r["model"] == model and r["method"].split(" [")[0].startswith("peak") and r["method"] != "peak_refined":
                eps = float(r["method"].split("eps=")[1].split(" ")[0].rstrip("]")) if "eps=" in r["method"] else float(r["eps"])
                widths[r["method"]] = eps
        if len(set(widths.values())) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        fractions = sorted({f for (mo, me, f) in agg if mo == model and me in widths and 0 < f < 1})
        for f in fractions:
            pts = sorted((eps, mean_std(agg[(model, m, f)]["ce"])[0]) for m, eps in widths.items() if (model, m, f) in agg)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{round(100 * f)}% ablated")
        ax.set_xscale("log")
        ax.set_xlabel("histogram bin width eps (log scale)")
        ax.set_ylabel("CE with peak ablation (nats per token)")
        mine = [r for r in rows if r["model"] == model and r["method"] in widths]
        seeds, tokens = len({r["seed"] for r in mine}), "/".join(map(str, sorted({int(r["n_tokens"]) for r in mine})))
        ax.set_title(f"{model}: peak ablation against the bin width\n{seeds} seed(s), {tokens} scored tokens (or images) "
                     "per point", fontsize=9)
        written.append(save_plot(fig, ax, out / f"{model}-peak-eps.png"))
    return written


def save_plot(fig, ax, path: Path) -> Path:
    """Grid, legend, layout, a PNG at ``path``; the figure is closed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
