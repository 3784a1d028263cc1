"""The schedule's loop: every point without a row is evaluated once, by whichever process claims it.

Process 0 decides from the shared run folder what to do with each point and tells the others
(``decide``); a point another process is evaluating is set aside and looked at again later, and a
point whose evaluation exists elsewhere only gets its missing rows copied.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Callable

import torch.distributed as dist

from ablate_lit.common import progress, signals
from ablate_lit.common.labels import Point
from ablate_lit.common.logs import empty_pass, say
from ablate_lit.data.sampler import make_loader

POLL_S = 2.0
"""Seconds between looks at points another process is evaluating."""


class Action(enum.Enum):
    DONE = "done"  # every row of the point exists
    COPY = "copy"  # another process evaluated it: copy its rows
    BUSY = "busy"  # another process is evaluating it now
    EVALUATE = "evaluate"  # claimed by this run: evaluate it


@dataclass(frozen=True)
class Decision:
    action: Action
    missing: tuple[tuple[str, int], ...] = ()
    """The (method, seed) rows still to write (COPY, EVALUATE)."""
    evaluated: dict | None = None
    """COPY: the row of the evaluation made elsewhere."""
    holder: str | None = None
    """BUSY: who holds the point's claim (host:pid)."""


def decide(store, point: Point) -> Decision:
    """What to do with ``point`` now, from the run folder (claims the point when it is to be evaluated)."""
    rows = store.read()
    missing = tuple(store.missing(point, store.keys(rows)))
    if not missing:
        return Decision(Action.DONE)
    evaluated = store.evaluation_of(point, rows)
    if evaluated is not None:
        return Decision(Action.COPY, missing, evaluated=evaluated)
    if not store.claims.claim(point):
        return Decision(Action.BUSY, holder=store.claims.holder(point))
    return Decision(Action.EVALUATE, missing)


def cost(point) -> int:
    """A point's work, in forward passes over the evaluation data (a single-unit group: one per entry),
    so that the time left is estimated from the work left, not the count of points."""
    return len(getattr(point, "entries", ())) or 1


class Scheduler:
    """Runs ``points`` through ``evaluate`` (one ``trainer.test`` each) and ``writer`` (their rows),
    counting progress in ``done`` of ``total`` and saying each evaluated point with ``line`` (given the
    run's ETA in words: ``common.progress``)."""

    def __init__(
        self, trainer, writer, evaluate: Callable[[Point], None], line: Callable[[Point, str], str], step_of=None
    ):
        self.trainer, self.writer, self.store = trainer, writer, writer.store
        self.evaluate, self.line = evaluate, line
        self.step_of = step_of or (lambda point: None)
        """The name of a point's step in the run's progress plan (a point evaluated elsewhere leaves it)."""
        self.total = self.done = 0
        self.points: list[Point] = []

    def _decide(self, point: Point) -> Decision:
        """Process 0's decision, told to every process."""
        decision = decide(self.store, point) if self.trainer.is_global_zero else None
        return self.trainer.strategy.broadcast(decision, src=0)

    def join(self, module) -> None:
        """Under several processes, start them all now (Lightning starts them at its first call; an
        empty validation pass of ``module`` is that call), so that process 0's decisions can be broadcast."""
        if self.trainer.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            with empty_pass():
                self.trainer.validate(module, dataloaders=make_loader([], 1), verbose=False)

    def pending(self, points: list[Point]) -> list[Point]:
        self.points = points
        have = self.store.keys(self.store.read())
        todo = [p for p in points if self.store.missing(p, have)]
        self.total, self.done = len(points), len(points) - len(todo)
        return todo

    def finished(self) -> int:
        """Points whose rows are all in the run folder now (read from it: a point whose rows were stored
        just before a signal counts, though the loop had not counted it yet)."""
        try:
            have = self.store.keys(self.store.read())
        except Exception:  # the folder cannot be read: what the loop counted
            return self.done
        return sum(not self.store.missing(p, have) for p in self.points)

    def run(self, todo: list[Point]) -> None:
        """Evaluate or copy every point of ``todo``; points another process holds are waited for."""
        waiting, told = [], set()
        while todo or waiting:
            if not todo:
                time.sleep(POLL_S)
                todo, waiting = waiting, []
            point = todo.pop(0)
            decision = self._decide(point)
            if decision.action is Action.BUSY:
                if decision.holder not in told:
                    say(
                        self.trainer,
                        f"waiting for {point.describe()}: another process ({decision.holder}) is evaluating it",
                    )
                    told.add(decision.holder)
                waiting.append(point)
                continue
            if decision.action is not Action.EVALUATE:
                progress.RUN.drop(self.step_of(point))
            if decision.action is Action.COPY and self.trainer.is_global_zero:
                self.writer.copy(point, decision.evaluated, list(decision.missing))
            elif decision.action is Action.EVALUATE:
                self._evaluate(point)
            self.done += 1
            signals.raise_if_signalled()  # a signal whose exception a destructor swallowed still stops the run here
            if decision.action is Action.EVALUATE:
                say(
                    self.trainer,
                    "\n".join(map(progress.stamped, self.line(point, progress.RUN.eta_words()).split("\n"))),
                )

    def _evaluate(self, point: Point) -> None:
        try:
            self.evaluate(point)
        finally:
            if self.trainer.is_global_zero:
                self.store.claims.release(point)
