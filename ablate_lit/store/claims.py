"""Claims on points: the process evaluating a point right now, so processes sharing a run folder
evaluate each point once.

    <run>/points/<point>.claim   {"host", "pid", "start", "time"} of the claiming process, kept fresh

A claim whose owner is gone (same host: its process no longer runs, or a later process took its
pid; another host: not refreshed for CLAIM_STALE_S) is stale and may be taken over.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ablate_lit.common.labels import Point
from ablate_lit.store.atomic import HOST, create_text, pid_alive

CLAIM_STALE_S = 600.0
CLAIM_REFRESH_S = 60.0


def safe_name(method: str) -> str:
    """A method label as part of a file name."""
    return method.replace(":", "-").replace("/", "_")


class Claims:
    """The claims of one run folder's points (files in ``folder``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, point: Point) -> Path:
        return self.folder / f"{safe_name(point.claim_name)}.claim"

    def claim(self, point: Point) -> bool:
        """Claim ``point`` for this process; False while a live process holds it."""
        path = self.path(point)
        mine = json.dumps({"host": HOST, "pid": os.getpid(), "start": _start_time(os.getpid()), "time": time.time()})
        if create_text(path, mine):
            return True
        if self.holder(point) is not None:
            return False
        path.unlink(missing_ok=True)  # stale: its owner is gone
        return create_text(path, mine)

    def holder(self, point: Point) -> str | None:
        """``host:pid`` of the live process evaluating ``point``, or None (no claim, or a stale one)."""
        path = self.path(point)
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
            os.utime(self.path(point))
        except OSError:
            pass

    def release(self, point: Point) -> None:
        self.path(point).unlink(missing_ok=True)


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; Linux), to tell it from a later process
    given the same pid; None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None
