"""``python -m ablate_lit report RUN_DIR [RUN_DIR ...]``: the paper's Table 2, its figures and paired
differences, from finished runs. The arguments are read and checked before the report's libraries
(pandas, matplotlib, torch) are imported: ``--help`` and a bad argument answer at once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ablate_lit.common.errors import AblateError

if TYPE_CHECKING:
    from ablate_lit.store.rows import ResultRow


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m ablate_lit report",
        description="Merge runs into the paper's Table 2 (Markdown + CSV) and Figures 2-3 (PNG).",
    )
    ap.add_argument("runs", nargs="+", help="run folders (lightning_logs/<run>), several models or seeds")
    ap.add_argument(
        "--fractions", type=float, nargs="+", default=[0.5, 0.9], help="fractions in the table (default 0.5 0.9)"
    )
    ap.add_argument("--out", default=None, help="output folder (default: lightning_logs/report)")
    ap.add_argument(
        "--pairs",
        nargs="*",
        default=None,
        metavar="A,B",
        help="pairs of methods to compare (A - B with 95%% bootstrap intervals), e.g. peak,mean "
        "'peak [MLP],mean [MLP]' (default: every method against mean of the same kind)",
    )
    args = ap.parse_args(argv)
    for f in args.fractions:
        if not 0 < f <= 1:
            raise AblateError(f"--fractions holds {f}; table fractions must be in (0, 1]")
    from ablate_lit.report.figures import eps_figures, figures
    from ablate_lit.report.paired import default_pairs, paired_figures, paired_table
    from ablate_lit.report.tables import load_runs, table
    from ablate_lit.store.atomic import check_folder, write_csv, write_text

    rows = load_runs(args.runs)
    maps = [r for r in rows if r.is_unit and r.record.get("schedule") == "each"]
    bases = [r for r in rows if not r.is_unit]  # the unablated rows a map compares with (one per setup)
    rows = [r for r in bases if r.record.get("schedule") not in ("each", "attribution")]  # the nested runs
    methods = list(dict.fromkeys(r.method for r in rows))
    pairs = default_pairs(methods) if args.pairs is None else [_pair(p, methods) for p in args.pairs]
    out = check_folder(args.out or Path(args.runs[0]).parent / "report", "--out", create=True)  # all checked
    if maps:
        _unit_maps(bases, maps, out)
    _attribution_maps(args.runs, out)
    if not any(r.evaluated_as != "baseline" for r in rows):
        return  # single-unit runs only
    markdown, records = table(rows, args.fractions)
    write_text(out / "table.md", markdown)
    write_csv(out / "table.csv", records, list(records[0]))
    pngs = figures(rows, out) + eps_figures(rows, out)
    if pairs and any(r.windows for r in rows):
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
        raise AblateError(
            f"--pairs '{text}' must be two methods of the runs joined by a comma, e.g. peak,mean "
            f"(methods: {', '.join(methods)})"
        )
    return a.strip(), b.strip()


def _attribution_maps(runs: list[str], out: Path) -> None:
    """Per attribution run among ``runs``: its attribution.csv, attribution.md and figures in ``out``, the
    estimates held against its own exact checks and against every unit of the single-unit maps of the
    same setup among ``runs``, and the tables on standard output."""
    from ablate_lit.report.attribution import write_attribution
    from ablate_lit.store.folder import read_rows, with_family
    from ablate_lit.store.objects import read_object

    stored = {run: with_family(read_rows(Path(run), windows=True)[0], Path(run)) for run in runs}
    for run in runs:
        saved = Path(run) / "attribution.pt"
        if not saved.is_file():
            continue
        found = read_object(saved)
        if found is None or "layout" not in found:
            raise AblateError(f"'{saved}' is unreadable; rerun the attribution run to write it again")
        own = stored[run]
        setup, measured = next((r.setup_id for r in own), None), {(r.method, r.target) for r in own}
        maps = [r for other in runs if other != run for r in stored[other] if r.record.get("schedule") == "each"]
        exact = own + [r for r in maps if r.is_unit and r.setup_id == setup and (r.method, r.target) not in measured]
        model = own[0].model if own else Path(run).name
        folder = out / Path(run).name
        folder.mkdir(parents=True, exist_ok=True)
        markdown, written = write_attribution(found["sums"], exact, found["layout"], folder, model)
        print(f"## {model}: attribution ({run})\n\n{markdown}")
        print("attribution: " + ", ".join(str(p) for p in written) + "\n")


def _unit_maps(bases: list[ResultRow], units: list[ResultRow], out: Path) -> None:
    """Per model with single-unit rows (``bases``: the maps' unablated rows): importance.csv,
    agreement.csv and the heatmaps in ``out`` (prefixed by the model where there are several), and the
    tables on standard output; a map without its unablated row is refused, an unfinished one said so."""
    from ablate_lit.report.importance import write_importance

    models = list(dict.fromkeys(r.model for r in units))
    for model in models:
        mine = [r for r in bases + units if r.model == model]
        if not any(r.model == model for r in bases):
            raise AblateError(
                f"the single-unit map of {model} has no unablated row to compare its units with; run the "
                "map's command again (it resumes) to evaluate it"
            )
        by_method: dict[str, set] = {}
        for r in units:
            if r.model == model:
                by_method.setdefault(r.method, set()).add(r.target)
        every = set().union(*by_method.values())
        short = {m: len(t) for m, t in by_method.items() if len(t) < len(every)}
        note = (
            f"incomplete: {', '.join(f'{m} has {n} of {len(every)} units' for m, n in short.items())}; run the "
            "map's command again (it resumes) to finish it\n\n"
            if short
            else ""
        )
        folder = out if len(models) == 1 else out / model
        markdown, written = write_importance(mine, folder, model)
        print(f"## {model}: single-unit importance\n\n{note}{markdown}")
        print("importance: " + ", ".join(str(p) for p in written) + "\n")
