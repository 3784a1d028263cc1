"""Cached objects on disk (calibration statistics, resample caches, fitted constants): each file
carries the key it was made for, is written whole (``atomic_path``), and is used only when its key
matches; a missing, truncated or other-key file is rebuilt, never used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ablate_lit.common.logs import log
from ablate_lit.store.atomic import atomic_path


def digest(obj) -> str:
    """A short, stable hash of a JSON-able object (settings, identities, keys)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_object(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_object(path: Path) -> dict | None:
    """The object saved at ``path`` whatever its key (a run folder's own file), or None if unreadable."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return None
    return obj if isinstance(obj, dict) else None


def load_object(path: Path, key: str):
    """The cached object at ``path`` whose stored key is ``key``, or None (missing, corrupt or made
    with other settings)."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or corrupt file is rebuilt, never used
        log.warning("calibration cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if not isinstance(obj, dict) or obj.get("key") != key:
        log.warning("calibration cache %s was made with other settings; rebuilding it", path)
        return None
    return obj
