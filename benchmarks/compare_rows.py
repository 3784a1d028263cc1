"""Whether two run folders hold the same rows, up to a tolerance: ``python benchmarks/compare_rows.py A B``.

Used by ``gpu_check.sh`` to hold a run with several ablations per pass against the same run one at
a time (bf16 on a GPU: the batched matmuls may round differently, so the tolerance is bf16's).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def rows(run: Path) -> dict:
    with open(run / "results.csv", newline="") as fh:
        return {(r["method"], r["seed"], r["fraction"], r.get("target", "-")): r for r in csv.DictReader(fh)}


def main(a: str, b: str, tolerance: float = 1e-2) -> None:
    one, other = rows(Path(a)), rows(Path(b))
    if one.keys() != other.keys():
        sys.exit(f"the runs hold other rows: {sorted(set(one) ^ set(other))[:5]}")
    worst = max(
        abs(float(one[k][m]) - float(other[k][m])) for k in one for m in ("ce", "top1", "kl") if one[k][m] != "-"
    )
    print(f"{len(one)} rows; largest difference of ce, top1, kl: {worst:.2e}")
    if worst > tolerance:
        sys.exit(f"the rows differ by {worst:.2e}, more than {tolerance}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
