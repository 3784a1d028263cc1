"""A result row: its columns in one schema, the typed ``ResultRow`` every stage reads, what makes a
row valid, and reading rows back from a results.csv.

``SCHEMA`` is the one definition of a row's layout: each column's name, type, how it is written
(the same strings results.csv and a row's file have always held), whether older results.csv files
may lack it, and in which runs it exists. ``ResultRow`` reads a stored row through that schema:
``row.ce`` is a float, ``row.kl`` is None where KL was not measured (written ``-``), ``row.target``
None for a nested set; ``row.record`` is the row as stored. The writer makes rows with ``make_row``,
the store checks them with ``check_row``, the report and ``Results`` read typed fields.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ablate_lit.common.labels import NO_TARGET, Label, fraction_key

MISSING = ("", "-", None)
"""How a stored row writes a value that is not there (a KL not measured, a column of a later version)."""


def _fixed(digits: int, finite_only: str | None = None) -> Callable:
    def write(value):
        if value is None or (finite_only is not None and not math.isfinite(value)):
            return finite_only if value is not None else "-"
        return f"{value:.{digits}f}"

    return write


def _general(value) -> str:
    return f"{value:.6g}" if math.isfinite(value) else "inf"


@dataclass(frozen=True)
class Column:
    name: str
    kind: type
    """str, int or float: what ``ResultRow`` reads the stored value as."""
    doc: str
    write: Callable | None = None
    """How the writer stores a value (None: as it is)."""
    required: bool = True
    """False: results.csv files of earlier versions lack it (read as None)."""
    runs: str = "all"
    """In which runs' results.csv it is: all, unit_map (single-unit runs) or task (runs on task data)."""


SCHEMA: tuple[Column, ...] = (
    Column("model", str, "the model's name (its folder, hub id or GGUF file)"),
    Column("method", str, "the method label (peak:eps=0.04, resample:random_tokens, ...)"),
    Column("seed", int, "the seed of the neuron set"),
    Column("fraction", float, "the share of the chosen layers' neurons ablated, in [0, 1]", lambda f: f"{f:.6g}"),
    Column("target", str, "the unit ablated alone (L3.H5, L3); - for the baseline", runs="unit_map"),
    Column("pct", int, "the fraction as a whole percentage"),
    Column("n_ablated", int, "neurons ablated"),
    Column("n_neurons", int, "neurons of the chosen layers"),
    Column("top1", float, "Top1 accuracy (a task's answer accuracy), a fraction in [0, 1]", _fixed(8)),
    Column("ce", float, "cross-entropy in nats per scored token or image (a task's: per answer)", _fixed(8)),
    Column("ppl", float, "exp(ce)", _general),
    Column("kl", float, "KL(unablated || ablated) per scored token; - where not measured", _fixed(8, "-"), False),
    Column("logit_diff", float, "log p(answer) - log p(distractor)", _fixed(8, "-"), runs="task"),
    Column("n_tokens", int, "tokens (images, a task's rows) scored"),
    Column("nonfinite", int, "scored tokens whose CE was NaN or inf"),
    Column("evaluated_as", str, "the evaluation that gave the numbers (baseline for every method's 0%)"),
    Column("task", str, "the task's name", runs="task"),
    Column("site", str, "attn or mlp", required=False),
    Column("unit", str, "neuron, head or layer", required=False),
    Column("layers", str, "the chosen layers (all, or 0;5)", required=False),
    Column("order", str, "random, or a calibration statistic", required=False),
    Column("selection", str, "per_layer or global"),
    Column("eps", float, "the histogram's bin width"),
    Column("bin_alignment", str, "edge or centered bins"),
    Column("n_bins", int, "bins per neuron window", required=False),
    Column("n_resample", int, "rows of a resample cache", required=False),
    Column("precision", str, "the trainer's precision"),
    Column("mode", str, "hook or fold", required=False),
    Column("model_id", str, "the fingerprint of the weights", required=False),
    Column("setup_id", str, "the same model, data and settings, whatever is ablated", required=False),
    Column("run_id", str, "the run folder's identity", required=False),
    Column("time_s", float, "seconds the evaluation took", lambda s: f"{s:.3f}"),
)
"""Every column of results.csv, in its order."""

BY_NAME = {c.name: c for c in SCHEMA}


def columns_for(unit_map: bool, task: bool) -> list[str]:
    """results.csv's columns: ``target`` in a single-unit run's; in a task run's (``data.task``) also
    ``logit_diff`` (answer - distractor) and ``task`` (its name), and then top1 is the answer accuracy,
    ce the answer CE (nats per answer), kl that at the answer positions and n_tokens the rows scored."""
    wanted = {"all", *(("unit_map",) if unit_map else ()), *(("task",) if task else ())}
    return [c.name for c in SCHEMA if c.runs in wanted]


COLUMNS = columns_for(unit_map=False, task=False)
"""results.csv's columns in a nested run (the paper's)."""


class _Typed:
    """A column of ``ResultRow``: the stored value read as the column's type (None where it is missing)."""

    def __init__(self, column: Column):
        self.column = column

    def __get__(self, row, owner=None):
        if row is None:
            return self
        value = row.record.get(self.column.name)
        if value in MISSING:
            return None
        if self.column.kind is float:
            return float(value)
        if self.column.kind is int:
            return int(float(value)) if isinstance(value, str) else int(value)
        return str(value)


class ResultRow(Mapping):
    """One result row, typed through ``SCHEMA`` (``row.ce``, ``row.kl``, ``row.target``: None where the
    stored row writes ``-``), with the row as stored (``record``; the row also reads as that mapping,
    ``row["ce"]`` the stored string) and, where read with them, its per-window totals (``windows``, also
    ``row["_windows"]``)."""

    __slots__ = ("record", "windows", "_with_windows")

    def __init__(self, record: dict, windows: dict | None = None, with_windows: bool | None = None):
        self.record, self.windows = record, windows
        self._with_windows = windows is not None if with_windows is None else with_windows

    def __getitem__(self, name: str):
        if name == "_windows" and self._with_windows:
            return self.windows
        return self.record[name]

    def __iter__(self):
        yield from self.record
        if self._with_windows:
            yield "_windows"

    def __len__(self) -> int:
        return len(self.record) + self._with_windows

    def value(self, name: str):
        """A column's typed value by name (None where the row has none)."""
        return getattr(self, name) if name in BY_NAME else self.record.get(name)

    @property
    def key(self) -> tuple[str, int, float, str]:
        """What identifies a row: its method, seed, fraction and (single-unit rows) the unit it ablates."""
        return row_key(self.record["method"], self.record["seed"], self.record["fraction"], self.record.get("target"))

    @property
    def label(self) -> Label:
        """The method with what it ablated where that is not the paper's: ``mean [MLP]``, ``zero [heads,
        layers 0;5, by std]`` (from ``site``, ``unit``, ``layers``, ``order`` and ``selection``)."""
        kinds = []
        if self.site == "mlp":
            kinds.append("MLP")
        if self.unit == "head":
            kinds.append("heads")
        if self.layers not in (None, "all"):
            kinds.append(f"layers {self.layers}")
        if self.order not in (None, "random"):
            kinds.append(f"by {self.order}")
        if self.selection == "global":
            kinds.append("global")
        return Label(self.record["method"], tuple(kinds))

    @property
    def is_unit(self) -> bool:
        """A single unit's row (``target`` names the unit), not a nested set's."""
        return self.target not in (None, NO_TARGET)

    def replace(self, **values) -> ResultRow:
        """A copy with some stored values replaced (a report's label, a merged run's model name)."""
        return ResultRow({**self.record, **values}, self.windows, self._with_windows)

    def __repr__(self) -> str:
        return f"ResultRow({self.record!r})"


for _column in SCHEMA:
    setattr(ResultRow, _column.name, _Typed(_column))


def as_rows(rows) -> list[ResultRow]:
    """``rows`` as ResultRows (stored dicts are wrapped; a dict's ``_windows`` become its windows)."""
    return [
        r if isinstance(r, ResultRow) else ResultRow({k: v for k, v in r.items() if k != "_windows"}, r.get("_windows"))
        for r in rows
    ]


def make_row(fixed: dict, values: dict, columns: list[str]) -> dict:
    """A row as the store keeps it: ``fixed`` (the run's columns, as they are), then ``values`` (the
    point's), each written as ``SCHEMA`` says; a task column only where ``columns`` holds it."""
    out = dict(fixed)
    for name, value in values.items():
        column = BY_NAME.get(name)
        if column is not None and column.runs != "all" and name not in columns:
            continue
        out[name] = column.write(value) if column is not None and column.write is not None else value
    return out


def row_key(method: str, seed, fraction, target: str | None = None) -> tuple[str, int, float, str]:
    """What identifies a row: its method, seed, fraction and (single-unit rows) the unit it ablates."""
    return (str(method), int(seed), fraction_key(fraction), str(target or NO_TARGET))


def check_row(row) -> str | None:
    """Why ``row`` (a stored dict) is not a complete result row, or None when it is."""
    if not isinstance(row, dict):
        return "not a row"
    missing = [c.name for c in SCHEMA if c.runs == "all" and row.get(c.name) in (None, "")]
    if missing:
        return f"missing {', '.join(missing[:4])}"
    for c in SCHEMA:
        value = row.get(c.name)
        if c.runs != "all" or value in MISSING:
            continue
        if c.kind is int and not (
            isinstance(value, int)
            and not isinstance(value, bool)
            or isinstance(value, str)
            and re.fullmatch(r"\s*-?\d+\s*", value)
        ):
            return f"{c.name} '{value}' is not an integer"
        if c.kind is float and c.required:
            try:
                float(value)
            except (TypeError, ValueError):
                return f"{c.name} '{value}' is not a number"
    typed = ResultRow(row)
    if not 0.0 <= typed.fraction <= 1.0:
        return f"fraction {row['fraction']} outside [0, 1]"
    if typed.n_tokens <= 0:
        return "no scored token"
    if not math.isfinite(typed.top1) or not 0.0 <= typed.top1 <= 1.0:
        return f"top1 {row['top1']} outside [0, 1]"
    return None


def read_csv_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a results.csv; a line that is not a complete row is reported (file and line) and skipped."""
    rows, problems = [], []
    required = [c.name for c in SCHEMA if c.runs == "all" and c.required]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                optional = {c.name: "-" for c in SCHEMA if c.runs == "all" and not c.required}
                full = {**optional, **{k: v for k, v in row.items() if k}}
                problem = check_row(full) if all(full.get(c) not in (None, "") for c in required) else "missing values"
                if problem:
                    problems.append(f"ignored {path}:{reader.line_num}: {problem}")
                else:
                    rows.append(full)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"ignored {path}: unreadable ({type(exc).__name__})")
    return rows, problems


def column_kinds() -> dict[str, type]:
    """Each column's type (``Results.table`` converts by it)."""
    return {c.name: c.kind for c in SCHEMA}
