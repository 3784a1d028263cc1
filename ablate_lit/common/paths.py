"""Telling local paths from hub names, and making sure a folder a library will write into can be written."""

from __future__ import annotations

import os
from pathlib import Path


def looks_like_path(name: str) -> bool:
    """True for names that can only be local paths (hub ids are ``name`` or ``org/name``)."""
    suffixes = (".gguf", ".safetensors", ".bin", ".pt", ".txt", ".json", ".jsonl", ".csv", ".parquet", ".bz2", ".xml")
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(suffixes)


def make_writable_folder(folder) -> None:
    """Create ``folder`` (and its parents) and write and remove a file in it, raising the OSError that a
    library writing there later would meet (a path under a file, a read-only folder)."""
    path = Path(os.path.expanduser(str(folder)))
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".ablate_lit-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
