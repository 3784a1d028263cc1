"""Telling local paths from hub names."""

from __future__ import annotations


def looks_like_path(name: str) -> bool:
    """True for names that can only be local paths (hub ids are ``name`` or ``org/name``)."""
    suffixes = (".gguf", ".safetensors", ".bin", ".pt", ".txt", ".json", ".jsonl", ".csv", ".parquet", ".bz2", ".xml")
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(suffixes)
