"""One progress display for a whole run, and an ETA that counts every step by its cost.

A run is a sequence of steps: converting or loading the model, the calibration sweep, the neuron
figures, each resample cache (and the text generation of resample:generated), each fit of optimal
ablation, each evaluation. ``plan(works)`` names the steps still ahead (``Work``: what, its kind, how
much); ``step(...)`` runs one (its ``tick`` says how far it is). The time left is the current step's
rest (from its own pace) plus every planned step's cost: its amount times the seconds per unit its
kind has taken so far in this run (``Rates``: the forward passes of a calibration sweep price an
evaluation before one has run; a decode step is timed once, ``Rates.probe``).

The display: on a terminal, one tqdm bar over the whole run (the current step and its count on the
left, the share done, time so far and the ETA); anywhere else (a log file, a notebook, CI) plain
timestamped lines, one as each step ends, and for a step longer than ``QUIET_S`` one line per
``QUIET_S`` while it runs. Evaluations end quietly: their result line carries the ETA
(``runner.scheduler``). ``ABLATE_LIT_PROGRESS=lines`` asks for lines on a terminal too. Only process
0 speaks.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from ablate_lit.common import logs

BATCHED = ("forward", "evaluate", "attribute")
"""The kinds of step that a Lightning loop's batches count (``calibration.heartbeat``)."""

REDRAW_S = 0.2
"""The bar is redrawn at most this often (a batch may take milliseconds)."""

QUIET_S = 60.0
"""In lines (a log), a long step says where it is once per this many seconds of silence."""

FIGURES_S_PER_LAYER = 0.3
"""The neuron figures' cost per layer (matplotlib on the CPU), before they have been drawn in this run."""

FIGURES_FIXED_LAYERS = 5
"""The neuron figures drawn once per run (not per layer) cost about as much as this many layers'."""

GENERATION_BATCH = 8
"""Rows of text generated at once (resample:generated), which a decode step's timing must match."""

DECODE_SHARE = 0.25
"""Before a decode step is timed (``Rates.probe``), one costs this share of a forward pass over one input
(SmolLM2-135M on a CPU: 94 ms against 0.44 s for a window of 256 tokens)."""

FIT_PASSES = 3.0
"""A training step of optimal ablation costs about three forward passes (forward, backward, update)."""


def clock(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    s = int(round(max(seconds, 0.0)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


@dataclass
class Work:
    """A step of the run, ahead or running. ``kind`` prices it (``Rates``): forward (passes over
    ``amount`` inputs: windows, images or rows), evaluate (the same, scored), attribute (the same with a
    backward pass), generate (``amount`` decode steps), fit (``amount`` training inputs of optimal
    ablation), figures (``amount`` layers) or other (no estimate)."""

    what: str
    kind: str = "other"
    amount: float = 0.0


class Rates:
    """Seconds per unit of each kind of work, as measured in this run (the latest step of a kind wins),
    with the stand-ins used before a kind has run."""

    def __init__(self):
        self.measured: dict[str, float] = {}

    def record(self, kind: str, seconds: float, amount: float) -> None:
        if amount > 0 and seconds > 0 and kind != "other":
            self.measured[kind] = seconds / amount

    def with_pace(self, kind: str, seconds_per_unit: float) -> Rates:
        """These rates and a provisional one for ``kind`` (from a running step's pace)."""
        out = Rates()
        out.measured = {**self.measured, kind: seconds_per_unit}
        return out

    def probe(self, kind: str, seconds_per_unit: float) -> None:
        """A rate timed directly (a decode step) before any step of ``kind`` has run."""
        self.measured.setdefault(kind, seconds_per_unit)

    def per_unit(self, kind: str) -> float | None:
        m = self.measured
        if kind in m:
            return m[kind]
        forward = m.get("forward", m.get("evaluate"))
        if kind in ("forward", "evaluate"):
            return forward
        if kind in ("fit", "attribute"):  # a forward and a backward pass (and, for a fit, an update)
            return FIT_PASSES * forward if forward is not None else None
        if kind == "figures":
            return FIGURES_S_PER_LAYER
        if kind == "generate":
            return DECODE_SHARE * forward if forward is not None else None
        return None

    def seconds(self, work: Work) -> float | None:
        if work.kind == "other" or work.amount <= 0:
            return 0.0
        rate = self.per_unit(work.kind)
        return None if rate is None else rate * work.amount


@dataclass
class Step:
    """A running step: ``tick(done, total)`` records its count; its own time leaves out that of the steps
    run inside it (``inner_s``, added as each ends; ``RunProgress.eta`` leaves out a running one's too)."""

    work: Work
    unit: str = ""
    say_end: bool = True
    done: int = 0
    total: int | None = None
    detail: str = ""
    started: float = field(default_factory=lambda: time.perf_counter())
    inner_s: float = 0.0
    """Seconds spent in steps run inside this one (a resample cache built during an evaluation)."""

    def tick(self, done: int, total: int | None = None) -> None:
        self.done, self.total = done, total if total is not None else self.total
        RUN.show()

    def own_s(self, now: float | None = None) -> float:
        return (now or time.perf_counter()) - self.started - self.inner_s

    def count(self) -> str:
        if not (self.done or self.total):
            return ""
        text = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        return text + (f" {self.unit}" if self.unit else "")

    def left_s(self, rates: Rates, now: float, child_s: float = 0.0) -> float | None:
        """Seconds this step still needs: from its own pace once it has counted some of a known total,
        else its estimate less the time it has run (``child_s``: of a step running inside it now, whose
        time is not this one's)."""
        own = self.own_s(now) - child_s
        if self.total and self.done:
            return own / self.done * max(self.total - self.done, 0)
        estimate = rates.seconds(self.work)
        return None if estimate is None else max(estimate - own, 0.0)


def _rank() -> int:
    """This process's rank: torch.distributed's, or before its group exists (Lightning's processes load
    the model first) the one its launcher set in the environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def on_terminal() -> bool:
    """A person watches a terminal (``ABLATE_LIT_PROGRESS=lines`` asks for lines there too)."""
    return (
        os.environ.get("ABLATE_LIT_PROGRESS", "") != "lines"
        and logs.printing()
        and logs.log.isEnabledFor(logging.INFO)  # (run(verbose=False): warnings only, no bar)
        and sys.stderr.isatty()
    )


class RunProgress:
    """The steps ahead (``plan``), the running ones (``step``), the ETA (``eta``) and the display."""

    def __init__(self):
        self.rates = Rates()
        self.ahead: list[Work] = []
        self.planned = False
        """Whether the run's steps are known (before, while the model loads, there is no run ETA)."""
        self.running: list[Step] = []
        self.started = time.perf_counter()
        self._bar = None
        self._lock = threading.RLock()
        self._watch: threading.Event | None = None
        self._drawn = 0.0

    # -- the plan ----------------------------------------------------------------------------------
    def plan(self, works: list[Work]) -> None:
        """The steps still ahead of the run, in order (replacing an earlier plan)."""
        with self._lock:
            self.ahead, self.planned = [w for w in works if w.kind != "other"], True

    def drop(self, what: str) -> None:
        """A planned step that will not run after all (a fit found in the cache, a point another process
        evaluated): out of the plan, so that the ETA does not wait for it."""
        with self._lock:
            self.ahead = [w for w in self.ahead if w.what != what]

    def close(self) -> None:
        """The run is over (or stopped): the bar and its watcher go."""
        with self._lock:
            self.planned = False
            self._stop_display_if_idle()

    def eta(self) -> float | None:
        """Seconds until the planned steps are done, or None before the plan or while a step has no price."""
        if not self.planned:
            return None
        now = time.perf_counter()
        with self._lock:
            rates = self.rates
            for s in self.running:  # a running step's pace prices its kind until one of that kind has ended
                if s.total and s.done and s.work.amount and s.work.kind not in rates.measured:
                    rates = rates.with_pace(s.work.kind, s.own_s(now) / s.done * s.total / s.work.amount)
            inside = [now - s.started for s in self.running[1:]] + [0.0] * bool(self.running)  # its running child
            parts = [s.left_s(rates, now, child) for s, child in zip(self.running, inside, strict=True)]
            parts += [rates.seconds(w) for w in self.ahead]
        return None if any(p is None for p in parts) else sum(parts)

    # -- steps -------------------------------------------------------------------------------------
    @contextmanager
    def step(self, what: str, kind: str = "other", amount: float = 0, unit: str = "", say_end: bool = True,
             trainer=None, detail: str = "") -> Iterator[Step]:  # fmt: skip
        """Run one step (the planned one of the same name, if any; ``amount`` of ``kind``, counted in
        ``unit`` by its ticks). Its own time prices its kind. When it ends (``say_end``), one line: what,
        ``detail``, its count, its time and the run's ETA."""
        with self._lock:
            planned = next((w for w in self.ahead if w.what == what), None)
            if planned is not None:
                self.ahead.remove(planned)
            work = planned or Work(what, kind, amount)
            if amount:
                work.amount = amount
            s = Step(work, unit, say_end, detail=detail)
            self.running.append(s)
            self._start_display()
        ok = False
        try:
            yield s
            ok = True
        finally:
            now = time.perf_counter()
            with self._lock:
                self.running.remove(s)
                elapsed = now - s.started
                if self.running:
                    self.running[-1].inner_s += elapsed
                if ok:
                    self.rates.record(work.kind, s.own_s(now), work.amount)
                self._stop_display_if_idle()
            if ok and say_end:
                said = ", ".join(x for x in (s.detail, s.count(), clock(elapsed)) if x)
                self._line(trainer, f"{what}: {said}", eta=True)

    def tick(self, kinds: tuple[str, ...], done: int, total: int | None = None) -> None:
        """Count into the innermost running step when it is of one of ``kinds``: a Lightning loop's batches
        into a sweep or an evaluation (``BATCHED``; not the held-out pass inside a fit), a fit's epochs."""
        if self.running and self.running[-1].work.kind in kinds:
            self.running[-1].tick(done, total)

    def eta_words(self) -> str:
        eta = self.eta()
        return "" if eta is None else f"eta {clock(eta)}"

    # -- display -----------------------------------------------------------------------------------
    def _line(self, trainer, text: str, eta: bool) -> None:
        if trainer is None and _rank() != 0:
            return
        words = self.eta_words() if eta else ""
        logs.say(trainer, stamped(f"{text}{f' ({words})' if words else ''}"))

    def show(self) -> None:
        """Redraw the bar (terminal), or say where a long step is after ``QUIET_S`` of silence (lines); at
        most once per ``REDRAW_S`` (a tick comes with every batch or generated token)."""
        with self._lock:
            now = time.perf_counter()
            if not self.running or now - self._drawn < REDRAW_S or _rank() != 0:
                return
            self._drawn = now
            s = self.running[-1]
            if self._bar is not None:
                eta = self.eta()
                elapsed = time.perf_counter() - self.started
                share = elapsed / (elapsed + eta) if eta is not None and elapsed + eta > 0 else 0.0
                self._bar.set_description_str(f"{s.work.what}{': ' + s.count() if s.count() else ''}", refresh=False)
                self._bar.n = int(1000 * share)
                self._bar.unit = f"{clock(elapsed)} so far" + (f", eta {clock(eta)}" if eta is not None else "")
                self._bar.refresh()
                return
        if on_terminal() or time.perf_counter() - logs.last_said() < QUIET_S:
            return
        self._line(None, f"{s.work.what}: {s.count() + ', ' if s.count() else ''}{clock(s.own_s())} so far", True)

    def _start_display(self) -> None:
        if self._watch is None:
            self._watch = threading.Event()
            threading.Thread(target=self._watcher, args=(self._watch,), daemon=True, name="ablate_lit-progress").start()
        if self._bar is None and on_terminal() and _rank() == 0:
            from tqdm import tqdm

            self._bar = tqdm(
                total=1000,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {unit}",  # unit: the run's time so far and ETA
                unit="",
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def _stop_display_if_idle(self) -> None:
        """The bar and watcher go when no step runs and the run is not between its planned steps."""
        if self.running or self.planned:
            return
        if self._watch is not None:
            self._watch.set()
            self._watch = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _watcher(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            self.show()


def stamped(text: str) -> str:
    """A progress line with the time of day in front, where output is a log (not a terminal)."""
    return text if on_terminal() else f"{time.strftime('%H:%M:%S')} {text}"


RUN = RunProgress()
"""This process's run (a run in Python starts a fresh one: ``start``)."""


def start() -> RunProgress:
    """A fresh display and clock for a new run in this process."""
    global RUN
    RUN = RunProgress()
    return RUN


def step(what: str, kind: str = "other", amount: float = 0, unit: str = "", say_end: bool = True, trainer=None,
         detail: str = ""):  # fmt: skip
    """``RUN.step``: run one step of the run."""
    return RUN.step(what, kind, amount, unit, say_end, trainer, detail)
