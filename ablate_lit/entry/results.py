"""``Results``: one run folder's results from Python (``ablate_lit.run`` returns it, ``ablate_lit.load``
reopens any run folder): its rows as a table, the paper's summary, figures, the single-unit map, the
neuron statistics, and ``export`` of one point as a model (``entry.export_command``)."""

from __future__ import annotations

from pathlib import Path

from ablate_lit.common.errors import AblateError
from ablate_lit.report.figures import model_figure
from ablate_lit.report.importance import agreement, agreement_table, importance, top_units_table, unit_rows
from ablate_lit.report.importance_figures import importance_figure
from ablate_lit.report.style import Scored, ordered
from ablate_lit.report.summary import summary_table
from ablate_lit.report.tables import method_label
from ablate_lit.store.folder import check_run_folder, read_rows, with_family
from ablate_lit.store.rows import ResultRow, column_kinds


class Results:
    """A run folder's results: ``table()`` (a pandas DataFrame, one row per method, seed and fraction),
    ``summary()`` (Table 2 layout, Markdown), ``figure()`` (Top1 and CE against % ablated, a matplotlib
    Figure), ``statistics`` (per-neuron calibration statistics, a DataFrame), ``run_dir``, and
    ``export(...)``, which saves one point as a model."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = check_run_folder(run_dir)

    def rows(self) -> list[dict]:
        """The run's valid result rows, as stored (strings); malformed rows are left out."""
        return [dict(r.record) for r in self._rows()]

    def _rows(self, windows: bool = False) -> list[ResultRow]:
        return read_rows(self.run_dir, windows=windows)[0]

    def _described_rows(self, windows: bool = False) -> list[ResultRow]:
        """The rows with their run's family beside them (figure and table titles say what was scored)."""
        return with_family(self._rows(windows), self.run_dir)

    READ_FIRST = ("method", "fraction", "top1", "ce", "kl", "logit_diff", "seed", "n_ablated", "n_neurons", "n_tokens")
    """The columns ``table()`` leads with: what a reader compares, then what each number rests on."""

    def table(self):
        """One row per (method, seed, fraction), led by method, fraction, top1 (a fraction in [0, 1]), ce
        (nats per scored token, image or answer), kl where measured, seed and the counts, then the rest
        (the settings and hashes that identify the run); numbers as numbers, methods in the paper's order."""
        import pandas as pd

        df = pd.DataFrame(self.rows())
        if df.empty:
            return df
        for col, kind in column_kinds().items():  # numbers as numbers (a missing value, written -, is NaN)
            if col in df and kind in (int, float):
                df[col] = pd.to_numeric(df[col].replace("-", float("nan")), errors="coerce")
                if kind is float:  # floats even when every value is whole
                    df[col] = df[col].astype(float)
        first = [c for c in self.READ_FIRST if c in df and not (c in ("kl", "logit_diff") and df[c].isna().all())]
        df = df[first + [c for c in df.columns if c not in first]]
        rank = {m: i for i, m in enumerate(ordered(df["method"]))}
        order = df["method"].map(rank)
        return (
            df.assign(_order=order)
            .sort_values(["_order", "seed", "fraction"], kind="stable")
            .drop(columns="_order")
            .reset_index(drop=True)
        )

    def summary(self, fractions: list[float] | None = None) -> str:
        """Baseline, then mean ± std over seeds per method and fraction (Top1 in %, CE), in Markdown; for
        a single-unit run, each method's most important units and the method-agreement table."""
        rows = self._described_rows()
        if (self.run_dir / "attribution.md").is_file():
            return (self.run_dir / "attribution.md").read_text()
        if any(r.is_unit for r in rows):
            records, boot = importance(self._unit_rows())
            return top_units_table(records) + "\n" + agreement_table(agreement(records, boot))
        methods = ordered(r.method for r in rows)  # zero, mean, ..., resample
        if fractions is None:
            fractions = sorted({r.fraction for r in rows})
        elif isinstance(fractions, (int, float)) and not isinstance(fractions, bool):
            fractions = [fractions]
        if not isinstance(fractions, (list, tuple)) or not all(
            isinstance(f, (int, float)) and 0 <= f <= 1 for f in fractions
        ):
            raise AblateError(f"fractions={fractions!r}: pass a list of fractions in [0, 1], e.g. [0.5, 0.9]")
        return summary_table(rows, methods, fractions)

    def importance(self):
        """The single-unit map (a run with ``schedule="each"``): one row per (unit, method) with
        layer, head, unit, top1, ce, kl and the loss increase d_ce / d_top1 over the unablated model
        with 95% bootstrap intervals over windows (a pandas DataFrame)."""
        import pandas as pd

        records, _ = importance(self._unit_rows())
        return pd.DataFrame(records)

    def agreement(self):
        """Per pair of methods: Spearman rank correlation of the units' d_ce and top-k overlaps, with
        95% bootstrap intervals (a pandas DataFrame)."""
        import pandas as pd

        records, boot = importance(self._unit_rows())
        return pd.DataFrame(agreement(records, boot))

    def importance_figure(self):
        """The map as a matplotlib Figure: per method a layer x head heatmap of d_ce on one shared scale
        (or a bar per layer for whole-layer units)."""
        rows = self._unit_rows()
        return importance_figure(importance(rows)[0], rows[0].model, Scored(with_family(rows, self.run_dir)))

    def attribution(self):
        """An attribution run's estimates (``schedule="attribution"``): one row per (unit, method, loss) with
        kind (neuron, head, layer), layer, index, the estimated change of the mean loss with its 95%
        bootstrap interval, the GradDrop score where the run kept it (``attribution_graddrop``), and the
        exact change where the unit was measured (a pandas DataFrame)."""
        import pandas as pd

        path = self.run_dir / "attribution.csv"
        if not path.is_file():
            raise AblateError(f"'{self.run_dir}' holds no attribution estimates; run with schedule='attribution'")
        return pd.read_csv(path)

    def _unit_rows(self) -> list[ResultRow]:
        rows = self._rows(windows=True)
        base, units = unit_rows(rows)
        if base is None or not units:
            raise AblateError(f"'{self.run_dir}' holds no single-unit rows; run with schedule='each'")
        return rows

    def figure(self):
        """Top1 (%) and CE against the percentage ablated: a line per method, ± one std over seeds,
        the unablated model dashed, seeds and scored tokens in the title."""
        rows = [r.replace(method=method_label(r)) for r in self._described_rows()]
        if not rows:
            raise AblateError(f"'{self.run_dir}' holds no results yet")
        return model_figure(rows, rows[0].model)

    @property
    def statistics(self):
        """Per-neuron calibration statistics (layer, neuron, mean, peak, std, skew, ...), from neurons.csv."""
        import pandas as pd

        path = self.run_dir / "neurons.csv"
        if not path.is_file():
            raise AblateError(
                f"'{self.run_dir}' has no neurons.csv (the run had log_histograms=False or no method "
                "needed calibration); rerun with log_histograms=True"
            )
        return pd.read_csv(path)

    def export(self, method: str, fraction: float, seed: int = 0, out: str | Path = "ablated") -> Path:
        """Save the model of one point (``method`` at ``fraction``, neuron set of ``seed``) in ``out``:
        its constants folded into the out-projections, loadable with plain ``from_pretrained`` (or timm),
        with its tokenizer or preprocessing and ``ablation.json``. Returns ``out``."""
        from ablate_lit.entry.export_command import export

        return export(self.run_dir, method, float(fraction), int(seed), out)

    def __repr__(self) -> str:
        return f"Results('{self.run_dir}': {len(self.rows())} rows)"


def load(run_dir: str | Path) -> Results:
    """Reopen a finished (or partly finished) run folder."""
    return Results(run_dir)
