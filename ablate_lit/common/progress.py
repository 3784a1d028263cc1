"""A run is never silent for long: progress lines during long steps, and ETAs that count only evaluations.

``Heartbeat`` shows a long step's own progress and ETA (loading and converting a model, calibration
sweeps, generating the text of resample:generated, long evaluations): on a terminal as a tqdm
progress bar, as the ecosystem's tools do; in a log file, a notebook or CI (no terminal) as a line
whenever nothing has been printed for ``EVERY_S`` seconds. ``aside()`` marks one-off work (calibration, building a
resample cache) whose time the run's ETA must not spread over the evaluations: ``set_aside_s()`` is
the total so far.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from ablate_lit.common import logs

EVERY_S = 5.0
"""Seconds of silence after which a long step says where it is."""

_aside = [0.0]
_depth = [0]


@contextmanager
def aside() -> Iterator[None]:
    """Time spent inside this block is one-off work, not evaluation (nested blocks count once)."""
    started, depth = time.perf_counter(), _depth[0]
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if depth == 0:
            _aside[0] += time.perf_counter() - started


def set_aside_s() -> float:
    """Seconds spent in ``aside()`` blocks by this process so far."""
    return _aside[0]


def _rank() -> int:
    """This process's rank where torch.distributed runs (a step with no trainer at hand speaks from rank 0 only)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _on_terminal() -> bool:
    """A person watches a terminal (``ABLATE_LIT_PROGRESS=lines`` asks for lines there too)."""
    return os.environ.get("ABLATE_LIT_PROGRESS", "") != "lines" and logs.printing() and sys.stderr.isatty()


def _lightning_shows(trainer, in_loop: bool) -> bool:
    """Lightning's own progress bar draws this step (a loop of ``trainer``: a calibration sweep, an
    evaluation) on the terminal, so the heartbeat keeps quiet."""
    return in_loop and trainer is not None and trainer.progress_bar_callback is not None and _on_terminal()


def clock(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class Heartbeat:
    """Progress of one long step: ``tick(done, total)`` records how far it is, and a line ``what: done/total
    unit (elapsed, eta)`` is printed whenever the run has been silent for ``EVERY_S`` seconds, by
    ``tick`` itself and, between ticks (one slow batch, a library call that reports nothing), by a
    watcher thread while the heartbeat is started (``with Heartbeat(...):`` or ``start()``/``stop()``).
    On a terminal a step outside Lightning's loops (converting a model, generating text) is a tqdm bar
    instead, and a step inside one (``in_loop``: a calibration sweep, an evaluation) leaves the bar to
    Lightning's own progress bar."""

    def __init__(self, trainer, what: str, unit: str = "", in_loop: bool = False):
        self.trainer, self.what, self.unit, self.in_loop = trainer, what, unit, in_loop
        self.started = time.perf_counter()
        self.done, self.total, self.detail = 0, None, ""
        self._stop: threading.Event | None = None
        self._bar = None  # the tqdm bar, on a terminal, from the first tick on
        self._lock = threading.Lock()

    def tick(self, done: int, total: int | None = None, detail: str = "") -> None:
        self.done, self.total, self.detail = done, total, detail
        if self._bar is None and self.trainer is None and _rank() == 0 and _on_terminal():
            from tqdm import tqdm

            self._bar = tqdm(
                desc=f"  {self.what}",
                unit=f" {self.unit}" if self.unit else "it",
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        self._show()

    def _show(self) -> None:
        if _lightning_shows(self.trainer, self.in_loop):
            return
        with self._lock:
            if self._bar is None:
                self._say_if_quiet()
                return
            self._bar.total = self.total
            self._bar.n = self.done
            self._bar.set_postfix_str(self.detail, refresh=False)
            self._bar.refresh()

    def _say_if_quiet(self) -> None:
        now = time.perf_counter()
        if now - logs.last_said() < EVERY_S or (self.trainer is None and _rank() != 0):
            return
        elapsed, done, total = now - self.started, self.done, self.total
        count = (f"{done}/{total}" if total else f"{done}") + (f" {self.unit}" if self.unit else "")
        count = f"{count}, " if done or total else ""
        eta = f", eta {clock(elapsed / done * (total - done))}" if total and done else ""
        extra = f"{self.detail}, " if self.detail else ""
        logs.say(self.trainer, f"  {self.what}: {count}{extra}{clock(elapsed)} so far{eta}")

    def start(self) -> "Heartbeat":
        self.started, self._stop = time.perf_counter(), threading.Event()
        threading.Thread(target=self._watch, args=(self._stop,), daemon=True, name="ablate_lit-heartbeat").start()
        return self

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(min(1.0, EVERY_S or 1.0)):
            self._show()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
