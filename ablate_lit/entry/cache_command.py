"""python -m ablate_lit cache {list,clear}: what ablate_lit keeps on disk between runs, and removing it.

Two caches, both safe to delete (they are rebuilt when next needed):
  models       $ABLATE_LIT_CACHE (default ~/.cache/ablate_lit): GGUF files converted to safetensors
               folders, one per GGUF file (the first run converts, later runs load).
  calibration  <root>/.calibration_cache (or --ablation.cache_dir): per model, data and settings, the
               calibration statistics (stats-*), resample caches (resample-*) and optimal
               constants (optimal-*), each keyed by everything it depends on.
Run folders (results) are never touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from ablate_lit.common.errors import AblateError

KINDS = {"stats": "calibration statistics", "resample": "resample caches", "optimal": "optimal constants"}


def models_dir() -> Path:
    return Path(os.environ.get("ABLATE_LIT_CACHE", Path.home() / ".cache" / "ablate_lit"))


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def listing(calibration_dirs: list[Path]) -> list[tuple[str, Path, int, int]]:
    """(what, folder, files, bytes) of every cache."""
    out = []
    gguf = models_dir() / "gguf"
    folders = sorted(p for p in gguf.iterdir() if p.is_dir()) if gguf.is_dir() else []
    out.append(("converted GGUF models", gguf, len(folders), _size(gguf)))
    for folder in calibration_dirs:
        files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
        for kind, what in KINDS.items():
            mine = [f for f in files if f.name.startswith(kind + "-")]
            out.append((what, folder, len(mine), sum(f.stat().st_size for f in mine)))
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m ablate_lit cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("action", choices=("list", "clear"), help="list the caches and their sizes, or clear them")
    ap.add_argument(
        "which",
        nargs="?",
        choices=("all", "models", "calibration"),
        default="all",
        help="clear: which cache (default all)",
    )
    ap.add_argument(
        "--root",
        action="append",
        default=None,
        help="run root whose .calibration_cache to include (default lightning_logs; repeatable)",
    )
    ap.add_argument("--cache-dir", action="append", default=[], help="a --ablation.cache_dir to include (repeatable)")
    args = ap.parse_args(argv)
    for root in args.root or []:
        if Path(root).exists() and not Path(root).is_dir():
            raise AblateError(f"--root '{root}' is a file, not a folder; pass the folder holding the run folders")
    dirs = [Path(r) / ".calibration_cache" for r in (args.root or ["lightning_logs"])] + [
        Path(d) for d in args.cache_dir
    ]
    for d in dirs:
        if d.exists() and not d.is_dir():
            raise AblateError(f"'{d}' is a file, not a cache folder")
    if args.action == "list":
        total = 0
        for what, folder, n, size in listing(dirs):
            print(f"{human(size):>10}  {n:4d}  {what:<22} {folder}")
            total += size
        roots = "".join(f" --root {r}" for r in args.root or []) + "".join(f" --cache-dir {d}" for d in args.cache_dir)
        print(
            f"{human(total):>10}        in all (python -m ablate_lit cache clear "
            f"[models|calibration]{roots} removes them)"
        )
        return
    removed = 0
    if args.which in ("all", "models"):
        gguf = models_dir() / "gguf"
        removed += _size(gguf)
        shutil.rmtree(gguf, ignore_errors=True)
    if args.which in ("all", "calibration"):
        for folder in dirs:
            for f in folder.glob("*.pt") if folder.is_dir() else []:
                removed += f.stat().st_size
                f.unlink(missing_ok=True)
    print(
        f"removed {human(removed)} of cached {'files' if args.which == 'all' else args.which + ' files'}; "
        "they are rebuilt when next needed"
    )
