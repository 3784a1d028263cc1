"""Appends one row per (method, seed) to results.csv after every evaluated point, and logs curves.

results.csv is rewritten whole into a temporary file and moved into place, so a crash never leaves
it half-written; rows already there mark points as done, which is how an interrupted run resumes.
TensorBoard gets one run per (method, seed) under ``tb/``, with the ablated percentage as the step.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import lightning as L

from ablate_lit.ablation.schedule import Point
from ablate_lit.atomic import clear_stale, write_csv

COLUMNS = ["model", "method", "seed", "fraction", "pct", "n_ablated", "n_neurons", "top1", "ce", "ppl", "n_tokens",
           "nonfinite", "evaluated_as", "selection", "eps", "bin_alignment", "precision", "time_s"]


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def row_key(method: str, seed, fraction) -> tuple[str, int, float]:
    return (method, int(seed), round(float(fraction), 6))


class ResultWriter(L.Callback):
    def __init__(self, run_dir: Path, fixed: dict):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.csv"
        clear_stale(self.path)  # left by a run killed mid-write
        self.fixed = fixed
        self.rows = read_results(self.path)
        self.point: Point | None = None
        self.n_ablated = 0
        self.n_neurons = 0
        self._writers: dict = {}
        self._t0 = 0.0
        self.last: dict = {}

    def done(self, point: Point) -> bool:
        have = {row_key(r["method"], r["seed"], r["fraction"]) for r in self.rows}
        return all(row_key(m, s, point.fraction) in have for m, s in point.rows)

    def begin(self, point: Point, n_ablated: int, n_neurons: int) -> None:
        self.point, self.n_ablated, self.n_neurons = point, n_ablated, n_neurons

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        scores = {k: v.item() for k, v in pl_module.scores.compute().items()}  # synchronised over processes
        self.last = scores
        if not trainer.is_global_zero or self.point is None:
            return
        p = self.point
        new = [{**self.fixed, "method": m, "seed": s, "fraction": f"{p.fraction:.6g}", "pct": round(100 * p.fraction),
                "n_ablated": self.n_ablated, "n_neurons": self.n_neurons,
                "top1": f"{scores['top1']:.8f}", "ce": f"{scores['ce']:.8f}",
                "ppl": f"{scores['ppl']:.6g}" if math.isfinite(scores["ppl"]) else "inf",
                "n_tokens": int(scores["n_tokens"]), "nonfinite": int(scores["nonfinite"]), "evaluated_as": p.method,
                "time_s": f"{time.perf_counter() - self._t0:.3f}"} for m, s in p.rows]
        self.rows += new
        write_csv(self.path, self.rows, COLUMNS)
        for row in new:
            writer = self._writer(row["method"], row["seed"])
            writer.add_scalar("ablation/top1", float(row["top1"]), row["pct"])
            writer.add_scalar("ablation/ce", float(row["ce"]), row["pct"])
            writer.flush()
        self.point = None

    def _writer(self, method: str, seed: int):
        key = (method, seed)
        if key not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[key] = SummaryWriter(str(self.run_dir / "tb" / f"{method.replace(':', '-')}_seed{seed}"))
        return self._writers[key]

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
