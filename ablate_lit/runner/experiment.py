"""One experiment: the schedule's points, each ablating its neuron set with its method's values.

``Experiment`` ties the parts together: the calibration cache (``calibration.cache``), the optimal
fitter (``ablation.fitter``), the neuron sets (``ablation.schedule``), the methods, which read a
``MethodContext``, and the scheduler (``runner.scheduler``), which decides point by point what this
process evaluates.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ablate_lit.ablation.context import MethodContext
from ablate_lit.ablation.fitter import OptimalFitter
from ablate_lit.ablation.fold import folded
from ablate_lit.ablation.methods import parse_method
from ablate_lit.ablation.schedule import ablation_mask, neuron_order, parse_order, plan, unit_scores
from ablate_lit.calibration.cache import CalibrationCache
from ablate_lit.calibration.heartbeat import SweepHeartbeat
from ablate_lit.calibration.statistics import CalibrationStats
from ablate_lit.common.curves import Curves
from ablate_lit.common.labels import NO_TARGET, Point, UnitGroup, percent
from ablate_lit.common.logs import say
from ablate_lit.common.progress import Heartbeat, aside, clock
from ablate_lit.common.sharding import is_sharded
from ablate_lit.data.sampler import make_loader
from ablate_lit.report.neurons import neuron_views
from ablate_lit.runner.config import AblationConfig, resolve_for
from ablate_lit.runner.scheduler import Scheduler
from ablate_lit.runner.unit_map import UnitMap
from ablate_lit.runner.writer import ResultWriter


class Experiment:
    def __init__(self, trainer, module, data, cfg: AblationConfig, run_dir: Path, cache_dir: Path):
        self.trainer, self.module, self.data, self.cfg = trainer, module, data, cfg
        self.layers = resolve_for(cfg, module, trainer)
        """The layers whose units are ablated (execution order)."""
        self.run_dir = Path(run_dir)
        self.cache = CalibrationCache(trainer, module, data, cfg, cache_dir)
        self.curves = Curves([])
        """The run's loggers (the result writer's, from ``run``)."""
        self.fitter = OptimalFitter(trainer, module, data, cfg, self.cache, lambda: self.curves)
        self.methods = {m.label: m for m in map(parse_method, cfg.methods)}
        self.unit_size = module.pre_outs[0].head_dim if cfg.unit == "head" else 1
        self.context = self._context()
        self._stats: CalibrationStats | None = None
        self._other_stats: dict[str, CalibrationStats] = {}
        self._orders: dict = {}
        self._current: tuple[object, dict] = (None, {})
        self.scheduler: Scheduler | None = None
        self.units = UnitMap(self)
        self._said: set[str] = set()
        for method in self.methods.values():
            method.check(self.context)

    def _context(self) -> MethodContext:
        module, cfg = self.module, self.cfg
        counterfactual = bool(getattr(self.data, "has_counterfactual", False))
        return MethodContext(
            eps=cfg.eps,
            bin_alignment=cfg.bin_alignment,
            n_layers=module.hooks.n_layers,
            width=module.hooks.width,
            family=module.family,
            resample_sources=module.resample_sources + (("counterfactual",) if counterfactual else ()),
            batch_major=all(p.batch_major for p in module.pre_outs),
            sharded=is_sharded(self.trainer.strategy),
            statistics=lambda: self.stats,
            statistics_of=self._statistics_of,
            resample=self.cache.resample,
            fitted=lambda point, objective, per_position: self.fitter.fitted(
                point, self.mask(point), self.stats, objective, per_position
            ),
            check_fit=self.fitter.split,
            counterfactual=counterfactual,
            fixed_template=bool(getattr(self.data, "fixed_template", False)),
        )

    def _statistics_of(self, which: str) -> CalibrationStats:
        if which not in self._other_stats:
            self._other_stats[which] = self.cache.statistics(which)
        return self._other_stats[which]

    # -- what a point needs --------------------------------------------------------------------------
    @property
    def stats(self) -> CalibrationStats:
        """The calibration statistics, computed (or loaded) when a point first needs them."""
        if self._stats is None:
            self._stats = self.cache.statistics()
            if self.cfg.log_histograms and self.trainer.is_global_zero:
                with Heartbeat(self.trainer, "writing neurons.csv, the neuron figures and histograms"):
                    neuron_views(self._stats, self.run_dir, self.curves.series("calibration"))
        return self._stats

    def on_device(self, point: Point) -> dict:
        """The point's replacement values on the model's device. They move there once per method
        (once per point for a method fitted per point): the schedule runs the points of one method
        together, and only the current values stay on the device (a resample cache can take GiBs)."""
        method = self.methods[point.method]
        key = (method.label, point.seed, point.fraction, point.target) if method.per_point else method.label
        if self._current[0] != key:
            self._current = (None, {})  # the previous method's values leave the device first
            values = method.replacement(self.context, point)
            self._current = (key, {k: v.to(self.module.device) for k, v in values.items()})
        return self._current[1]

    def mask(self, point: Point) -> torch.Tensor:
        """Boolean [n_layers, width]: the neurons ablated at ``point`` (the same for every method)."""
        if point.target != NO_TARGET:
            return self.units.mask(point)
        cfg, hooks = self.cfg, self.module.hooks
        if point.seed not in self._orders:
            scores = unit_scores(self.stats, cfg.order, self.unit_size)
            self._orders[point.seed] = neuron_order(
                point.seed,
                hooks.n_layers,
                hooks.width,
                cfg.selection,
                self.unit_size,
                self.layers,
                scores,
                parse_order(cfg.order)[1],
            )
        return ablation_mask(
            self._orders[point.seed], point.fraction, hooks.n_layers, hooks.width, self.unit_size, self.layers
        )

    def _ablated(self, mask: torch.Tensor, replacement: dict):
        if self.cfg.mode == "fold" and "values" in replacement and replacement["values"].dim() == 2:
            # one constant per unit; resampling and per-position constants are always hooked
            return folded(self.module.pre_outs, mask, replacement["values"])
        return self.module.hooks.ablating(mask, device=self.module.device, **replacement)

    # -- the schedule --------------------------------------------------------------------------------
    def _evaluate(self, point: Point, writer: ResultWriter) -> None:
        self.beat.what = f"evaluating {point.describe()}"
        if isinstance(point, UnitGroup):
            self.units.evaluate(point, writer)
            return
        trainer, module = self.trainer, self.module
        n_neurons = len(self.layers) * module.hooks.width
        if point.method == "baseline":
            writer.begin(point, 0, n_neurons)
            trainer.test(module, dataloaders=self.data.test_dataloader(), verbose=False)
            return
        with aside():  # calibration, a resample sweep or a fit may run here: one-off work, not in the ETA's rate
            replacement = self.on_device(point)
        mask = self.mask(point)
        writer.begin(point, int(mask.sum()), n_neurons)
        with self._ablated(mask, replacement):
            trainer.test(module, dataloaders=self.data.test_dataloader(), verbose=False)

    def _join_processes(self) -> None:
        """Under several processes, start them all now (Lightning starts them at its first call; an
        empty validation pass is that call), so that process 0's decisions can be broadcast."""
        if self.trainer.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            self.trainer.validate(self.module, dataloaders=make_loader([], 1), verbose=False)

    def _progress(self, writer: ResultWriter):
        def line(point: Point, eta: float) -> str:
            s = self.scheduler
            if isinstance(point, UnitGroup):
                return f"[{s.done}/{s.total}] {self.units.progress(point, writer.last)}  (eta {clock(eta)})"
            last = writer.last
            kl = f"  kl {last['kl']:.4f}" if self.module.kl else ""
            ld = f"  logit diff {last['logit_diff']:.3f}" if "logit_diff" in last else ""
            top1, ce = ("answer acc", "answer ce") if "logit_diff" in last else ("top1", "ce")
            return (
                f"[{s.done}/{s.total}] {point.method:>24} seed {point.seed} {percent(point.fraction):3d}% ablated: "
                f"{top1} {100 * last['top1']:.2f}%  {ce} {last['ce']:.4f}{ld}{kl}  (eta {clock(eta)})"
            )

        return line

    def say_once(self, message: str) -> None:
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

    def run(self, writer: ResultWriter) -> None:
        """Evaluate every point of the schedule that has no row yet. Points another process is
        evaluating are left to it and waited for; a point whose evaluation exists gets its rows copied."""
        self._join_processes()
        self.curves = writer.curves
        self.scheduler = Scheduler(self.trainer, writer, lambda p: self._evaluate(p, writer), self._progress(writer))
        cfg = self.cfg
        points = self.units.plan() if cfg.schedule == "each" else plan(cfg.methods, cfg.seeds, cfg.fractions)
        todo = self.scheduler.pending(points)
        say(
            self.trainer,
            f"schedule: {self.scheduler.total} evaluations ({self.scheduler.done} already in "
            f"{writer.store.csv}), each over {self.data.describe('evaluation')}",
        )
        self.beat = SweepHeartbeat("evaluation", "test")
        self.trainer.callbacks += [writer, self.beat]
        try:
            self.scheduler.run(todo)
        finally:
            self.trainer.callbacks.remove(writer)
            self.trainer.callbacks.remove(self.beat)
            self.module.hooks.remove()
            writer.close()
