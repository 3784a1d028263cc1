"""Writes the rows of each evaluated point to the run's result store, and logs the curves.

Each row is its own file in ``points/`` (``ablate_lit.store.folder``), created once; ``results.csv`` is
rebuilt from them. The run's loggers (``common.curves``: TensorBoard under ``tb/`` by default) get one
series per (method, seed), with the ablated percentage as the step, for the rows this process created:
``ablation/top1_percent`` (Top1 in %, as in every table and figure; results.csv keeps the fraction),
``ablation/ce`` (nats), ``ablation/kl`` and, on a task, ``ablation/logit_diff``.
"""

from __future__ import annotations

import math
import time

import lightning as L

from ablate_lit.common import signals
from ablate_lit.common.curves import Curves, series_of
from ablate_lit.common.labels import Point, PointGroup, UnitGroup, percent
from ablate_lit.store.claims import CLAIM_REFRESH_S
from ablate_lit.store.folder import ResultStore
from ablate_lit.store.rows import ResultRow, make_row


class ResultWriter(L.Callback):
    def __init__(self, store: ResultStore, fixed: dict, curves: Curves | None = None):
        self.store = store
        self.run_dir = store.run_dir
        self.path = store.csv
        self.fixed = fixed
        """Columns that are the same for every row of this run (model, settings, identity)."""
        self.point: Point | None = None
        self.n_ablated = 0
        self.n_neurons = 0
        self.curves = curves or Curves([])
        self._t0 = self._refreshed = 0.0
        self.last: dict = {}
        self.group: UnitGroup | None = None
        self._unit_sizes: list[int] = []
        self._scores: list = []

    def begin(self, point: Point, n_ablated: int, n_neurons: int, scores) -> None:
        """Called just before the point's ``trainer.test``, whose epoch fills ``scores`` (the module's
        metric): ``time_s`` covers the whole call (setup included)."""
        self.point, self.n_ablated, self.n_neurons, self._scores = point, n_ablated, n_neurons, [scores]
        self._t0 = self._refreshed = time.perf_counter()

    def begin_group(self, group, unit_sizes: list[int], n_neurons: int, scores: list) -> None:
        """Called before the evaluations of a group (a layer's single units, ``UnitGroup``, or the methods
        of one neuron set, ``PointGroup``): ``group.entries`` get their rows from ``scores`` (one metric
        per entry; ``unit_sizes``: the neurons each ablates)."""
        self.begin(group, 0, n_neurons, None)
        self.group, self._unit_sizes, self._scores = group, unit_sizes, list(scores)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        signals.raise_if_signalled()  # a signal whose exception a destructor swallowed (ablate_lit.common.signals)
        if (
            trainer.is_global_zero
            and self.point is not None
            and time.perf_counter() - self._refreshed > CLAIM_REFRESH_S
        ):
            self.store.claims.refresh(self.point)  # the claim stays fresh while a long point runs
            self._refreshed = time.perf_counter()

    def row(self, point: Point, method: str, seed: int, scores: dict, elapsed: float) -> dict:
        """The stored row of ``method`` and ``seed`` at ``point`` (``store.rows.make_row``)."""
        values = {
            "method": method,
            "seed": seed,
            "fraction": point.fraction,
            "pct": percent(point.fraction),
            "n_ablated": self.n_ablated,
            "n_neurons": self.n_neurons,
            **{k: scores[k] for k in ("top1", "ce", "ppl")},
            "kl": scores["kl"] if math.isfinite(scores["kl"]) else None,
            "logit_diff": scores.get("logit_diff"),
            "n_tokens": int(scores["n_tokens"]),
            "nonfinite": int(scores["nonfinite"]),
            "evaluated_as": point.method,
            "time_s": elapsed,
            "target": point.target,
        }
        return make_row(self.fixed, values, self.store.columns)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        results = [_computed(scores) for scores in self._scores]  # every process computes: states are synchronised
        group, self.group = self.group, None
        if isinstance(group, UnitGroup):
            self.last = {"ce": [s["ce"] for s, _ in results], "top1": [s["top1"] for s, _ in results]}
        elif isinstance(group, PointGroup):
            self.last = [(entry, scores) for entry, (scores, _) in zip(group.entries, results, strict=True)]
        else:
            self.last = results[0][0]
        point, self.point = self.point, None
        if not trainer.is_global_zero or point is None:
            return
        entries = group.entries if group is not None else (point,)
        sizes = self._unit_sizes if group is not None else [self.n_ablated]
        elapsed = (time.perf_counter() - self._t0) / len(entries)  # each entry's share of the pass
        created = []
        for entry, size, (scores, windows) in zip(entries, sizes, results, strict=True):
            self.n_ablated = size
            for method, seed in entry.rows:
                row = self.row(entry, method, seed, scores, elapsed)
                if self.store.add(row, windows):  # False: another process wrote this row meanwhile; its row stands
                    created.append(row)
        self.store.write_csv()
        if not isinstance(group, UnitGroup):  # (a single-unit map's rows are drawn as a map, not as curves)
            self._log(created)

    def _log(self, created: list[dict]) -> None:
        """The curves of newly stored rows: one series per (method, seed), the ablated percentage as the step."""
        for row in map(ResultRow, created):
            writer = self.curves.series(series_of(row.method, row.seed))
            writer.add_scalar("ablation/top1_percent", 100 * row.top1, row.pct)  # % as in tables and figures
            writer.add_scalar("ablation/ce", row.ce, row.pct)
            if row.kl is not None:
                writer.add_scalar("ablation/kl", row.kl, row.pct)
            if row.logit_diff is not None:
                writer.add_scalar("ablation/logit_diff", row.logit_diff, row.pct)
            writer.flush()

    def copy(self, point: Point, evaluated: ResultRow, missing: list[tuple[str, int]]) -> None:
        """Write ``point``'s missing rows from an evaluation another process made (same identity)."""
        windows = self.store.windows_of(evaluated)
        for method, seed in missing:
            self.store.add({**evaluated.record, "method": method, "seed": seed}, windows)
        self.store.write_csv()

    def close(self) -> None:
        self.curves.flush()


def _computed(scores) -> tuple[dict, dict]:
    """(the scores as numbers, the per-window totals as lists) of a computed metric."""
    computed = scores.compute()
    windows = {k: v.tolist() for k, v in computed.pop("windows").items()}
    return {k: v.item() for k, v in computed.items()}, windows
