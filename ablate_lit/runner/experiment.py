"""One experiment: the schedule's points, each ablating its neuron set with its method's values.

``Experiment`` is handed its parts by ``runner.launch``: the neuron sets (``ablation.schedule``) or
the single-unit map (``maps.units``), the replacement values (``ablation.values``), and the
scheduler (``runner.scheduler``), which decides point by point what this process evaluates. Each
evaluated point is one ``trainer.test`` over the evaluation data, its rows written by the
``ResultWriter`` callback.
"""

from __future__ import annotations

import torch

from ablate_lit.ablation.fold import folded
from ablate_lit.ablation.schedule import NeuronSets, group_points, plan
from ablate_lit.ablation.values import Replacements
from ablate_lit.calibration.heartbeat import loop_callbacks
from ablate_lit.common import progress
from ablate_lit.common.labels import NO_TARGET, Point, PointGroup, UnitGroup, percent
from ablate_lit.common.logs import say
from ablate_lit.common.words import counted
from ablate_lit.maps.step import AblationsStep
from ablate_lit.maps.units import UnitMap
from ablate_lit.runner.scheduler import Scheduler, cost
from ablate_lit.runner.writer import ResultWriter


class Experiment:
    """The points of a run over ``trainer``, ``module`` (scoring set by ``evaluate_with``) and ``data``:
    nested neuron sets of ``sets``, or the single-unit map ``units``; every method's values from
    ``values``; ``per_pass`` ablations in one forward pass per batch (the methods of one neuron set, or
    the units of one layer); constants written into the weights instead of hooked when ``fold``."""

    def __init__(
        self,
        trainer,
        module,
        data,
        values: Replacements,
        sets: NeuronSets,
        units: UnitMap | None = None,
        fold: bool = False,
        per_pass: int = 1,
    ):
        self.trainer, self.module, self.data = trainer, module, data
        self.values, self.sets, self.units, self.fold = values, sets, units, fold
        self.per_pass = per_pass
        self.scheduler: Scheduler | None = None
        self._said: set[str] = set()

    def points(self, methods: list[str], seeds: list[int], fractions: list[float]) -> list:
        """Every point of the schedule, in the order they are evaluated."""
        if self.units is not None:
            return self.units.plan()
        return group_points(plan(methods, seeds, fractions), self.per_pass)

    def reads_statistics(self, points: list) -> bool:
        """Whether evaluating ``points`` needs the calibration statistics: a nested set other than the
        baseline (the sets and most methods read them), or a single unit whose method reads them."""
        if self.units is None:
            return any(p.method != "baseline" for p in points)
        methods = self.values.methods
        return any(methods[e.method].reads_statistics for g in points if isinstance(g, UnitGroup) for e in g.entries)

    def _todo(self, group, writer: ResultWriter) -> tuple:
        """The entries of ``group`` that have no row yet."""
        have = writer.store.keys(writer.store.read())
        return tuple(e for e in group.entries if any(k not in have for k in e.keys()))

    def mask(self, point: Point) -> torch.Tensor:
        """Boolean [n_layers, width]: the neurons ablated at ``point`` (the same for every method)."""
        if point.target != NO_TARGET:
            return self.units.mask(point)
        return self.sets.mask(point.seed, point.fraction)

    def _ablated(self, mask: torch.Tensor, replacement: dict):
        if self.fold and "values" in replacement and replacement["values"].dim() == 2:
            # one constant per unit; resampling and per-position constants are always hooked
            return folded(self.module.pre_outs, mask, replacement["values"])
        return self.module.hooks.ablating(mask, device=self.module.device, **replacement)

    # -- the schedule --------------------------------------------------------------------------------
    def work(self, point) -> progress.Work:
        """``point``'s evaluation as a step of the run: forward passes over the evaluation inputs, one per
        ablation (a group's entries) even where several share a pass (their copies cost as much)."""
        return progress.Work(f"evaluating {point.describe()}", "evaluate", cost(point) * len(self.data.eval_dataset()))

    def _evaluate(self, point: Point, writer: ResultWriter) -> None:
        work = self.work(point)
        with progress.step(work.what, work.kind, work.amount, "batches", say_end=False, trainer=self.trainer):
            self._evaluate_point(point, writer)

    def _evaluate_point(self, point: Point, writer: ResultWriter) -> None:
        if isinstance(point, UnitGroup):
            self._evaluate_units(point, writer)
            return
        if isinstance(point, PointGroup):
            self._evaluate_methods(point, writer)
            return
        trainer, module = self.trainer, self.module
        if point.method == "baseline":
            writer.begin(point, 0, self.sets.n_neurons, module.scores)
            trainer.test(module, dataloaders=self.data.test_dataloader(), verbose=False)
            return
        mask = self.mask(point)
        replacement = self.values.of(point, mask, module.device)  # (a resample cache or a fit: steps of their own)
        writer.begin(point, int(mask.sum()), self.sets.n_neurons, module.scores)
        with self._ablated(mask, replacement):
            trainer.test(module, dataloaders=self.data.test_dataloader(), verbose=False)

    def _evaluate_methods(self, group: PointGroup, writer: ResultWriter) -> None:
        """The methods of one neuron set still without a row, each in its own copy of every batch, in one
        ``trainer.test`` over the evaluation data."""
        todo = PointGroup(self._todo(group, writer))
        mask = self.mask(todo.entries[0])
        values = self.values.of_many(list(todo.entries), mask, self.module.device)
        step = AblationsStep(self.module, [(mask, v) for v in values], self.module.kl, self.per_pass)
        writer.begin_group(todo, [int(mask.sum())] * len(values), self.sets.n_neurons, step.scores)
        with self.module.scoring_with(step):
            self.trainer.test(self.module, dataloaders=self.data.test_dataloader(), verbose=False)

    def _evaluate_units(self, group: UnitGroup, writer: ResultWriter) -> None:
        """The group's entries still without a row, in one ``trainer.test`` over the evaluation data."""
        todo = UnitGroup(group.layer, self._todo(group, writer))
        step = self.units.step(self.module, todo, self.values, self.module.kl, self.per_pass)
        writer.begin_group(todo, [int(m.sum()) for m, _ in step.entries], self.sets.n_neurons, step.scores)
        with self.module.scoring_with(step):
            self.trainer.test(self.module, dataloaders=self.data.test_dataloader(), verbose=False)
        if not step.prefix and step.blocks:
            self._say_once(
                "single-unit map: this model's blocks could not answer from kept outputs; every "
                "evaluation runs the whole model"
            )

    def _progress(self, writer: ResultWriter):
        def line(point: Point, eta: str) -> str:
            s, eta = self.scheduler, f"  ({eta})" if eta else ""
            if isinstance(point, UnitGroup):
                return f"[{s.done}/{s.total}] {self.units.progress(point, writer.last)}{eta}"
            if isinstance(point, PointGroup):  # a line per method evaluated, as when each has a pass of its own
                return "\n".join(entry_line(e, last, eta) for e, last in writer.last)
            return entry_line(point, writer.last, eta)

        def entry_line(point: Point, last: dict, eta: str) -> str:
            s = self.scheduler
            kl = f"  kl {last['kl']:.4f}" if self.module.kl else ""
            ld = f"  logit diff {last['logit_diff']:.3f}" if "logit_diff" in last else ""
            top1, ce = ("answer acc", "answer ce") if "logit_diff" in last else ("top1", "ce")
            return (
                f"[{s.done}/{s.total}] {point.method:>24} seed {point.seed} {percent(point.fraction):3d}% ablated: "
                f"{top1} {100 * last['top1']:.2f}%  {ce} {last['ce']:.4f}{ld}{kl}{eta}"
            )

        return line

    def _say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            say(self.trainer, message)

    @property
    def done(self) -> int:
        """Points with all their rows stored (for the line a signal ends the run with)."""
        return self.scheduler.finished() if self.scheduler else 0

    @property
    def total(self) -> int:
        return self.scheduler.total if self.scheduler else 0

    def start(self, points: list, writer: ResultWriter) -> list:
        """The points of ``points`` that have no row yet (every process started: ``Scheduler.join``)."""
        self.scheduler = Scheduler(
            self.trainer,
            writer,
            lambda p: self._evaluate(p, writer),
            self._progress(writer),
            lambda p: self.work(p).what,
        )
        self.scheduler.join(self.module)
        todo = self.scheduler.pending(points)
        say(
            self.trainer,
            f"schedule: {counted(self.scheduler.total, 'evaluation')} ({self.scheduler.done} already in "
            f"{writer.store.csv}), each over {self.data.describe('evaluation')}",
        )
        return todo

    def run(self, todo: list, writer: ResultWriter) -> None:
        """Evaluate every point of ``todo`` (from ``start``). Points another process is evaluating are
        left to it and waited for; a point whose evaluation exists gets its rows copied."""
        try:
            with loop_callbacks(self.trainer, writer):
                self.scheduler.run(todo)
        finally:
            writer.close()
