"""A result row: its columns, what makes it valid, and reading rows back from a results.csv."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from ablate_lit.common.labels import NO_TARGET, fraction_key

COLUMNS = [
    "model",
    "method",
    "seed",
    "fraction",
    "pct",
    "n_ablated",
    "n_neurons",
    "top1",
    "ce",
    "ppl",
    "kl",
    "n_tokens",
    "nonfinite",
    "evaluated_as",
    "site",
    "unit",
    "layers",
    "order",
    "selection",
    "eps",
    "bin_alignment",
    "n_bins",
    "n_resample",
    "precision",
    "mode",
    "model_id",
    "setup_id",
    "run_id",
    "time_s",
]
"""results.csv columns: the point, its scores (top1 as a fraction in [0, 1]), what was ablated, the settings that
shaped the numbers, and the run's identity (setup_id: the same model, data and settings, whatever is ablated)."""


UNIT_COLUMNS = [*COLUMNS[:4], "target", *COLUMNS[4:]]
"""results.csv columns of a single-unit run (``--ablation.schedule each``): ``target`` names the unit
(``L3.H5``, ``L3``); the baseline row's is ``-``."""


def columns_for(unit_map: bool, task: bool) -> list[str]:
    """results.csv's columns: ``target`` in a single-unit run's; in a task run's (``data.task``) also
    ``logit_diff`` (answer - distractor) and ``task`` (its name), and then top1 is the answer accuracy,
    ce the answer CE (nats per answer), kl that at the answer positions and n_tokens the rows scored."""
    columns = list(UNIT_COLUMNS if unit_map else COLUMNS)
    if task:
        columns.insert(columns.index("kl") + 1, "logit_diff")
        columns.insert(columns.index("site"), "task")
    return columns


OPTIONAL = ("kl", "site", "unit", "layers", "order", "n_bins", "n_resample", "mode", "model_id", "setup_id", "run_id")
"""Columns that results.csv files of earlier versions lack."""


_INT = ("seed", "n_ablated", "n_neurons", "n_tokens", "nonfinite")


_FLOAT = ("fraction", "top1", "ce", "eps")


def row_key(method: str, seed, fraction, target: str | None = None) -> tuple[str, int, float, str]:
    """What identifies a row: its method, seed, fraction and (single-unit rows) the unit it ablates."""
    return (str(method), int(seed), fraction_key(fraction), str(target or NO_TARGET))


def key_of(row: dict) -> tuple[str, int, float, str]:
    return row_key(row["method"], row["seed"], row["fraction"], row.get("target"))


def check_row(row) -> str | None:
    """Why ``row`` is not a complete result row, or None when it is."""
    if not isinstance(row, dict):
        return "not a row"
    missing = [c for c in COLUMNS if c not in row or row[c] in (None, "")]
    if missing:
        return f"missing {', '.join(missing[:4])}"
    for c in _INT:
        value = row[c]
        if not (
            isinstance(value, int)
            and not isinstance(value, bool)
            or isinstance(value, str)
            and re.fullmatch(r"\s*-?\d+\s*", value)
        ):
            return f"{c} '{value}' is not an integer"
    values = {}
    for c in _FLOAT:
        try:
            values[c] = float(row[c])
        except (TypeError, ValueError):
            return f"{c} '{row[c]}' is not a number"
    if not 0.0 <= values["fraction"] <= 1.0:
        return f"fraction {row['fraction']} outside [0, 1]"
    if int(float(row["n_tokens"])) <= 0:
        return "no scored token"
    if not math.isfinite(values["top1"]) or not 0.0 <= values["top1"] <= 1.0:
        return f"top1 {row['top1']} outside [0, 1]"
    return None


def read_csv_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a results.csv; a line that is not a complete row is reported (file and line) and skipped."""
    rows, problems = [], []
    required = [c for c in COLUMNS if c not in OPTIONAL]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                full = {**{c: "-" for c in COLUMNS if c not in required}, **{k: v for k, v in row.items() if k}}
                problem = check_row(full) if all(full.get(c) not in (None, "") for c in required) else "missing values"
                if problem:
                    problems.append(f"ignored {path}:{reader.line_num}: {problem}")
                else:
                    rows.append(full)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"ignored {path}: unreadable ({type(exc).__name__})")
    return rows, problems
