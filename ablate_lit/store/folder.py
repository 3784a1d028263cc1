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

import json
from pathlib import Path

from ablate_lit.common.errors import AblateError
from ablate_lit.common.labels import NO_TARGET, Point, fraction_key, parse_target
from ablate_lit.common.logs import log
from ablate_lit.store.atomic import clear_stale, create_text, csv_text, write_text
from ablate_lit.store.claims import Claims, safe_name
from ablate_lit.store.objects import digest
from ablate_lit.store.rows import ResultRow, as_rows, check_row, columns_for, read_csv_rows

RESULT_FORMAT = 5


def run_id_of(identity: dict) -> str:
    """The short hash naming a run's identity (with the result format it was stored in)."""
    return digest({"format": RESULT_FORMAT, **identity})


class ResultStore:
    """The rows of one run folder; ``identity`` is what they all depend on."""

    def __init__(self, run_dir: Path, identity: dict, run_id: str | None = None):
        self.run_dir = Path(run_dir)
        self.points = self.run_dir / "points"
        self.claims = Claims(self.points)
        """Who evaluates which point now (``store.claims``)."""
        self.csv = self.run_dir / "results.csv"
        self.identity = {"format": RESULT_FORMAT, **identity}
        self.run_id = run_id or run_id_of(identity)
        self.problems: list[str] = []
        self._reported: set[str] = set()
        self.quiet = False
        """Collect problems without printing them (report prints its own list)."""
        self._opened: tuple[int, int] | None = None  # (device, inode) of identity.json when opened
        self._written: set[tuple] = set()  # keys of the rows this process wrote or found

    # -- the folder's identity -------------------------------------------------------------------
    def open(self) -> None:
        """Create the folder's identity.json, or check it: results of another identity are refused, and
        so is a folder whose files were edited or removed by hand in a way that would lose rows."""
        path, fix = self.run_dir / "identity.json", "use another ⟨--name⟩, or remove the folder to start over"
        if self.points.exists() and not self.points.is_dir():
            raise AblateError(f"'{self.points}' is a file, not the folder of result rows; {fix}")
        if not path.exists() and self.csv.exists() and not self.points.exists():
            raise AblateError(
                f"run folder '{self.run_dir}' holds results of an earlier ablate_lit without their identity; {fix}"
            )
        text = json.dumps({"run_id": self.run_id, **self.identity}, indent=1, sort_keys=True, default=str) + "\n"
        if not create_text(path, text):
            check_identity(path, self.identity, self.run_id, self.run_dir, fix)
        self._opened = _file_id(path)
        lost = self._rows_only_in_csv()
        if lost:
            raise AblateError(
                f"results.csv in '{self.run_dir}' holds {lost} row(s) that points/ lacks (was points/ removed?); "
                "restore points/, or remove results.csv to evaluate those points again"
            )

    def _rows_only_in_csv(self) -> int:
        if not self.csv.is_file():
            return 0
        rows, _ = read_csv_rows(self.csv)
        return sum(r.run_id == self.run_id and not self.path_of(r).exists() for r in as_rows(rows))

    # -- rows ---------------------------------------------------------------------------------------
    def row_path(self, method: str, seed: int, fraction: float, target: str | None = None) -> Path:
        unit = f"__{target}" if target not in (None, NO_TARGET) else ""
        return self.points / f"{safe_name(method)}{unit}__s{int(seed)}__f{fraction_key(fraction):.6f}.json"

    def path_of(self, row: ResultRow) -> Path:
        """The file of ``row``."""
        return self.row_path(row.method, row.seed, row.fraction, row.target)

    @property
    def columns(self) -> list[str]:
        """results.csv's columns (``store.rows.columns_for``)."""
        return columns_for(self.identity.get("schedule") in ("each", "attribution"), "task" in self.identity)

    def read(self, windows: bool = False) -> list[ResultRow]:
        """Every valid row of this run, in a fixed order; invalid files are reported once and skipped.
        With ``windows`` each row carries its per-window totals (``row.windows``, None if it has none)."""
        rows: dict[tuple, ResultRow] = {}
        for path in sorted(self.points.glob("*.json")) if self.points.is_dir() else []:
            row, problem = self._check_file(path)
            if problem:
                self._report(f"ignored {path}: {problem}")
                continue
            kept = json.loads(path.read_text()).get("windows") if windows else None
            typed = ResultRow(row, kept, with_windows=windows)
            rows.setdefault(typed.key, typed)
        return [rows[k] for k in sorted(rows, key=_order)]

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
        if path.name != self.path_of(ResultRow(row)).name:
            return None, "its file name does not match its row"
        return row, None

    def check_intact(self, rows: list[dict] | None = None) -> None:
        """Refuse to go on in a folder that is not the one this store opened (removed, or replaced by
        another), or that lost rows this process wrote (``rows``: the valid rows read just now): the
        run would end with a results.csv missing them, and say nothing."""
        if self._opened is None:
            return
        if _file_id(self.run_dir / "identity.json") != self._opened:
            raise AblateError(
                f"run folder '{self.run_dir}' was removed or replaced while this run wrote to it "
                f"({len(self._written)} row(s) written before are gone with it); ⟨rerun⟩ and they are evaluated again"
            )
        if rows is not None and self._written - self.keys(rows):
            lost = sorted(self._written - self.keys(rows))
            raise AblateError(
                f"{len(lost)} result row(s) this run wrote to '{self.points}' are gone (e.g. {lost[0][0]} seed "
                f"{lost[0][1]} at {lost[0][2]:g}); ⟨rerun⟩ and they are evaluated again"
            )

    def add(self, row: dict, windows: dict | None = None) -> bool:
        """Create the file of ``row`` (a row as stored: ``store.rows.make_row``) with its per-window totals;
        False if a valid one exists already (another process wrote it). A damaged or edited file in its
        place (reported by ``read``) is replaced."""
        self.check_intact()
        typed = ResultRow(row)
        path = self.path_of(typed)
        text = (
            json.dumps(
                {
                    "format": RESULT_FORMAT,
                    "run_id": self.run_id,
                    "identity": self.identity,
                    "row": row,
                    "windows": windows,
                    "checksum": self._checksum(row, windows),
                },
                default=str,
            )
            + "\n"
        )
        key = typed.key
        if create_text(path, text):
            self._written.add(key)
            return True
        if self._check_file(path)[1] is None:
            self._written.add(key)  # another process's row: it must stay too
            return False
        write_text(path, text)
        self._written.add(key)
        return True

    def write_csv(self) -> list[ResultRow]:
        """Rebuild results.csv from the rows; repeated while other processes add rows meanwhile."""
        for _ in range(10):
            before = self._listing()
            rows = self.read()
            self.check_intact(rows)
            write_text(self.csv, csv_text([r.record for r in rows], self.columns))
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
                log.warning(f"warning: {message}")

    # -- points -------------------------------------------------------------------------------------
    def windows_of(self, row: ResultRow) -> dict | None:
        """The per-window totals stored with ``row`` (None for a row written without them)."""
        path = self.path_of(row)
        found, problem = self._check_file(path)
        return None if problem else json.loads(path.read_text()).get("windows")

    @staticmethod
    def keys(rows: list[ResultRow]) -> set[tuple[str, int, float, str]]:
        return {r.key for r in rows}

    def missing(self, point: Point, have: set) -> list[tuple[str, int]]:
        """The (method, seed) rows of ``point`` not in ``have`` (``keys`` of valid rows)."""
        return [row[:2] for row, key in zip(point.rows, point.keys(), strict=True) if key not in have]

    @staticmethod
    def evaluation_of(point: Point, rows: list[ResultRow]) -> ResultRow | None:
        """A valid row that already holds this point's evaluation (written by any process)."""
        for row in rows:
            if row.is_unit or point.target != NO_TARGET:
                continue  # a single unit's row is evaluated for itself, never shared
            if row.evaluated_as != point.method or fraction_key(row.fraction) != point.fraction:
                continue
            if 0.0 < point.fraction < 1.0 and row.seed != point.seed:
                continue
            return row
        return None

    def clear_stale(self) -> None:
        clear_stale(self.run_dir)
        clear_stale(self.points)


def check_identity(path: Path, identity: dict, run_id: str, run_dir: Path, fix: str) -> None:
    """Refuse an identity.json that is unreadable, edited by hand, or of another identity (naming what differs)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        stored = None
    if not isinstance(stored, dict):
        raise AblateError(f"'{path}' is unreadable; {fix}")
    if stored.get("run_id") != digest({k: v for k, v in stored.items() if k != "run_id"}):
        raise AblateError(f"'{path}' was edited by hand (its run_id does not match its content); {fix}")
    if stored.get("run_id") == run_id:
        return
    differ = [k for k in sorted(set(stored) | set(identity)) if k != "run_id" and stored.get(k) != identity.get(k)]
    what = "; ".join(f"{k}: {_short(stored.get(k))} there, {_short(identity.get(k))} now" for k in differ[:3])
    raise AblateError(f"run folder '{run_dir}' holds results of other settings ({what or 'another format'}); {fix}")


def _short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def check_run_folder(run_dir) -> Path:
    """``run_dir`` as a Path, refused in one line unless it holds results (rows or a results.csv)."""
    path = Path(run_dir)
    if not (path / "points").is_dir() and not (path / "results.csv").is_file():
        raise AblateError(f"'{run_dir}' holds no results; pass a run folder such as lightning_logs/<run>")
    return path


def read_rows(run_dir: Path, windows: bool = False) -> tuple[list[ResultRow], list[str]]:
    """(valid rows, problems) of a run folder: from points/ where it exists (with ``windows``, each row
    carries its per-window totals), else from results.csv (a folder copied without points/, or written
    by an earlier version), each line validated."""
    run_dir = Path(run_dir)
    identity_path = run_dir / "identity.json"
    if (run_dir / "points").is_dir() and identity_path.is_file():
        try:
            identity = json.loads(identity_path.read_text())
        except (OSError, ValueError):
            return [], [f"ignored {run_dir}: '{identity_path.name}' is unreadable"]
        store = ResultStore(
            run_dir, {k: v for k, v in identity.items() if k not in ("run_id", "format")}, identity.get("run_id")
        )
        store.quiet = True
        return store.read(windows), store.problems
    rows, problems = read_csv_rows(run_dir / "results.csv")
    return as_rows(rows), problems


def with_family(rows: list[ResultRow], run_dir: Path) -> list[ResultRow]:
    """``rows`` with their run's model family (causal_lm, masked_lm, vision: from identity.json) beside
    their columns, for words that depend on what was scored (tokens, masked tokens, images)."""
    try:
        family = json.loads((Path(run_dir) / "identity.json").read_text()).get("family")
    except (OSError, ValueError):
        return rows
    return [r.replace(family=family) for r in rows] if family else rows


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``: the same file, not another one of that name; None if it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _order(key: tuple) -> tuple:
    """Rows in a fixed order: by method, seed, fraction, then unit (layer, head) in number order."""
    method, seed, fraction, target = key
    unit = (-1, -1) if target == NO_TARGET else tuple(-1 if x is None else x for x in parse_target(target))
    return method, seed, fraction, unit
