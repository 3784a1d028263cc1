"""The results of a run folder: one file per result row, created once, by any number of processes.

    <run>/identity.json         everything the numbers depend on (model and data fingerprints, settings)
    <run>/points/<row>.json     one result row, created by hard link, never rewritten
    <run>/points/<point>.claim  the process evaluating that point right now (host, pid), kept fresh
    <run>/results.csv           every valid row, rebuilt from points/ after each new row (a view)

Why one file per row: when several processes share a run folder (array jobs on a shared file
system), appending to or rewriting one file loses rows, and file locks are unreliable on network
file systems; creating a file by ``link`` is atomic on NFS too, so each row is written by exactly
one process and a second writer of the same row learns that it exists. A point (one evaluation,
which may stand for several rows: 0% for every method and seed, 100% for every seed) is claimed
before it is evaluated, so processes that share points do not evaluate them twice: the others wait
for the row, or take the point over when its claim is stale (owner gone on this host, or not
refreshed for CLAIM_STALE_S on another host).

A row counts only if it parses, has every column with a value of the right type, and carries this
folder's ``run_id``; anything else is reported (file and reason) and not counted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

from ablate_lit.ablation.schedule import Point, fraction_key
from ablate_lit.atomic import HOST, clear_stale, create_text, csv_text, pid_alive, write_text
from ablate_lit.errors import AblateError

RESULT_FORMAT = 5
CLAIM_STALE_S = 600.0
CLAIM_REFRESH_S = 60.0

COLUMNS = ["model", "method", "seed", "fraction", "pct", "n_ablated", "n_neurons", "top1", "ce", "ppl", "kl", "n_tokens",
           "nonfinite", "evaluated_as", "site", "unit", "layers", "order", "selection", "eps", "bin_alignment", "n_bins",
           "n_resample", "precision", "mode", "model_id", "setup_id", "run_id", "time_s"]
"""results.csv columns: the point, its scores (top1 as a fraction in [0, 1]), what was ablated, the settings that
shaped the numbers, and the run's identity (setup_id: the same model, data and settings, whatever is ablated)."""
OPTIONAL = ("kl", "site", "unit", "layers", "order", "n_bins", "n_resample", "mode", "model_id", "setup_id", "run_id")
"""Columns that results.csv files of earlier versions lack."""

_INT = ("seed", "n_ablated", "n_neurons", "n_tokens", "nonfinite")
_FLOAT = ("fraction", "top1", "ce", "eps")


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_id_of(identity: dict) -> str:
    """The short hash naming a run's identity (with the result format it was stored in)."""
    return digest({"format": RESULT_FORMAT, **identity})


def row_key(method: str, seed, fraction) -> tuple[str, int, float]:
    return (str(method), int(seed), fraction_key(fraction))


def check_row(row) -> str | None:
    """Why ``row`` is not a complete result row, or None when it is."""
    if not isinstance(row, dict):
        return "not a row"
    missing = [c for c in COLUMNS if c not in row or row[c] in (None, "")]
    if missing:
        return f"missing {', '.join(missing[:4])}"
    for c in _INT:
        value = row[c]
        if not (isinstance(value, int) and not isinstance(value, bool)
                or isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value)):
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


def _safe(method: str) -> str:
    return method.replace(":", "-").replace("/", "_")


class ResultStore:
    """The rows of one run folder; ``identity`` is what they all depend on."""

    def __init__(self, run_dir: Path, identity: dict, run_id: str | None = None):
        self.run_dir = Path(run_dir)
        self.points = self.run_dir / "points"
        self.csv = self.run_dir / "results.csv"
        self.identity = {"format": RESULT_FORMAT, **identity}
        self.run_id = run_id or run_id_of(identity)
        self.problems: list[str] = []
        self._reported: set[str] = set()
        self.quiet = False
        """Collect problems without printing them (report prints its own list)."""

    # -- the folder's identity -------------------------------------------------------------------
    def open(self) -> None:
        """Create the folder's identity.json, or check it: results of another identity are refused, and
        so is a folder whose files were edited or removed by hand in a way that would lose rows."""
        path, fix = self.run_dir / "identity.json", "use another --name, or remove the folder to start over"
        if self.points.exists() and not self.points.is_dir():
            raise AblateError(f"'{self.points}' is a file, not the folder of result rows; {fix}")
        if not path.exists() and self.csv.exists() and not self.points.exists():
            raise AblateError(f"run folder '{self.run_dir}' holds results of an earlier ablate_lit without their identity; {fix}")
        text = json.dumps({"run_id": self.run_id, **self.identity}, indent=1, sort_keys=True, default=str) + "\n"
        if not create_text(path, text):
            self._check_identity(path, fix)
        lost = self._rows_only_in_csv()
        if lost:
            raise AblateError(f"results.csv in '{self.run_dir}' holds {lost} row(s) that points/ lacks (was points/ removed?); "
                              "restore points/, or remove results.csv to evaluate those points again")

    def _check_identity(self, path: Path, fix: str) -> None:
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            stored = None
        if not isinstance(stored, dict):
            raise AblateError(f"'{path}' is unreadable; {fix}")
        if stored.get("run_id") != digest({k: v for k, v in stored.items() if k != "run_id"}):
            raise AblateError(f"'{path}' was edited by hand (its run_id does not match its content); {fix}")
        if stored.get("run_id") == self.run_id:
            return
        differ = [k for k in sorted(set(stored) | set(self.identity)) if k != "run_id" and stored.get(k) != self.identity.get(k)]
        what = "; ".join(f"{k}: {_short(stored.get(k))} there, {_short(self.identity.get(k))} now" for k in differ[:3])
        raise AblateError(f"run folder '{self.run_dir}' holds results of other settings ({what or 'another format'}); {fix}")

    def _rows_only_in_csv(self) -> int:
        if not self.csv.is_file():
            return 0
        rows, _ = read_csv_rows(self.csv)
        return sum(r.get("run_id") == self.run_id and not self.row_path(r["method"], r["seed"], r["fraction"]).exists()
                   for r in rows)

    # -- rows ---------------------------------------------------------------------------------------
    def row_path(self, method: str, seed: int, fraction: float) -> Path:
        return self.points / f"{_safe(method)}__s{int(seed)}__f{fraction_key(fraction):.6f}.json"

    def read(self, windows: bool = False) -> list[dict]:
        """Every valid row of this run, in a fixed order; invalid files are reported once and skipped.
        With ``windows`` each row carries its per-window totals under ``_windows`` (None if it has none)."""
        rows: dict[tuple, dict] = {}
        for path in sorted(self.points.glob("*.json")) if self.points.is_dir() else []:
            row, problem = self._check_file(path)
            if windows and not problem:
                row = {**row, "_windows": json.loads(path.read_text()).get("windows")}
            if problem:
                self._report(f"ignored {path}: {problem}")
                continue
            rows.setdefault(row_key(row["method"], row["seed"], row["fraction"]), row)
        return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1], k[2]))]

    def _checksum(self, row: dict, windows: dict | None = None) -> str:
        return digest({"run_id": self.run_id, "row": row, "windows": windows})

    def _check_file(self, path: Path) -> tuple[dict | None, str | None]:
        """(the row, None) for a valid row file of this run, else (None, why not)."""
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            return None, f"unreadable ({type(exc).__name__})"
        row = record.get("row") if isinstance(record, dict) else None
        problem = check_row(row)
        if problem:
            return None, problem
        if record.get("run_id") != self.run_id:
            return None, "made by another run"
        if record.get("checksum") != self._checksum(row, record.get("windows")):
            return None, "edited by hand (its checksum does not match)"
        if path.name != self.row_path(row["method"], row["seed"], row["fraction"]).name:
            return None, "its file name does not match its row"
        return row, None

    def add(self, row: dict, windows: dict | None = None) -> bool:
        """Create the row's file (with its per-window totals); False if a valid one exists already
        (another process wrote it). A damaged or edited file in its place (reported by ``read``) is replaced."""
        path = self.row_path(row["method"], row["seed"], row["fraction"])
        text = json.dumps({"format": RESULT_FORMAT, "run_id": self.run_id, "identity": self.identity, "row": row,
                           "windows": windows, "checksum": self._checksum(row, windows)}, default=str) + "\n"
        if create_text(path, text):
            return True
        if self._check_file(path)[1] is None:
            return False
        write_text(path, text)
        return True

    def write_csv(self) -> list[dict]:
        """Rebuild results.csv from the rows; repeated while other processes add rows meanwhile."""
        for _ in range(10):
            before = self._listing()
            rows = self.read()
            write_text(self.csv, csv_text(rows, COLUMNS))
            if self._listing() == before:
                break
        return rows

    def _listing(self) -> set[str]:
        return {p.name for p in self.points.glob("*.json")} if self.points.is_dir() else set()

    def _report(self, message: str) -> None:
        if message not in self._reported:
            self._reported.add(message)
            self.problems.append(message)
            if not self.quiet:
                print(f"warning: {message}", flush=True)

    # -- points -------------------------------------------------------------------------------------
    def windows_of(self, row: dict) -> dict | None:
        """The per-window totals stored with ``row`` (None for a row written without them)."""
        path = self.row_path(row["method"], row["seed"], row["fraction"])
        found, problem = self._check_file(path)
        return None if problem else json.loads(path.read_text()).get("windows")

    @staticmethod
    def keys(rows: list[dict]) -> set[tuple[str, int, float]]:
        return {row_key(r["method"], r["seed"], r["fraction"]) for r in rows}

    def missing(self, point: Point, have: set) -> list[tuple[str, int]]:
        """The (method, seed) rows of ``point`` not in ``have`` (``keys`` of valid rows)."""
        return [(m, s) for m, s in point.rows if row_key(m, s, point.fraction) not in have]

    @staticmethod
    def evaluation_of(point: Point, rows: list[dict]) -> dict | None:
        """A valid row that already holds this point's evaluation (written by any process)."""
        for row in rows:
            if row["evaluated_as"] != point.method or fraction_key(row["fraction"]) != point.fraction:
                continue
            if 0.0 < point.fraction < 1.0 and int(row["seed"]) != point.seed:
                continue
            return row
        return None

    def claim_path(self, point: Point) -> Path:
        seed = f"__s{point.seed}" if 0.0 < point.fraction < 1.0 else ""
        return self.points / f"{_safe(point.method)}{seed}__f{point.fraction:.6f}.claim"

    def claim(self, point: Point) -> bool:
        """Claim ``point`` for this process; False while a live process holds it."""
        path = self.claim_path(point)
        mine = json.dumps({"host": HOST, "pid": os.getpid(), "start": _start_time(os.getpid()), "time": time.time()})
        if create_text(path, mine):
            return True
        if self.claim_holder(point) is not None:
            return False
        path.unlink(missing_ok=True)  # stale: its owner is gone
        return create_text(path, mine)

    def claim_holder(self, point: Point) -> str | None:
        """``host:pid`` of the live process evaluating ``point``, or None (no claim, or a stale one)."""
        path = self.claim_path(point)
        try:
            holder = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
            host, pid = holder["host"], int(holder["pid"])
        except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError):
            return None  # no claim, or an unreadable one: nobody holds the point
        if host == HOST and pid == os.getpid():
            return None
        alive = age < CLAIM_STALE_S  # a live owner refreshes its claim every CLAIM_REFRESH_S
        if host == HOST:  # ... and on this host it must still run, as the same process (pids are reused)
            alive = alive and pid_alive(pid) and holder.get("start") in (None, _start_time(pid))
        return f"{host}:{pid}" if alive else None

    def refresh(self, point: Point) -> None:
        try:
            os.utime(self.claim_path(point))
        except OSError:
            pass

    def release(self, point: Point) -> None:
        self.claim_path(point).unlink(missing_ok=True)

    def clear_stale(self) -> None:
        clear_stale(self.run_dir)
        clear_stale(self.points)


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; Linux), to tell it from a later process
    given the same pid; None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def read_rows(run_dir: Path, windows: bool = False) -> tuple[list[dict], list[str]]:
    """(valid rows, problems) of a run folder: from points/ where it exists (with ``windows``, each row
    carries its per-window totals under ``_windows``), else from results.csv (a folder copied
    without points/, or written by an earlier version), each line validated."""
    run_dir = Path(run_dir)
    identity_path = run_dir / "identity.json"
    if (run_dir / "points").is_dir() and identity_path.is_file():
        try:
            identity = json.loads(identity_path.read_text())
        except (OSError, ValueError):
            return [], [f"ignored {run_dir}: '{identity_path.name}' is unreadable"]
        store = ResultStore(run_dir, {k: v for k, v in identity.items() if k not in ("run_id", "format")}, identity.get("run_id"))
        store.quiet = True
        return store.read(windows), store.problems
    return read_csv_rows(run_dir / "results.csv")


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
