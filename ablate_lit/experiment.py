"""One experiment: calibrate (or load cached statistics), then run the schedule point by point."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ablate_lit.ablation.hooks import folded
from ablate_lit.ablation.methods import parse_method
from ablate_lit.stats.calibration import CalibrationStats
from ablate_lit.ablation.schedule import ablation_mask, neuron_order, parse_order, plan, unit_scores
from ablate_lit.callbacks.calibration import CalibrationCallback
from ablate_lit.callbacks.results import ResultWriter
from ablate_lit.atomic import atomic_path
from ablate_lit.config import AblationConfig
from ablate_lit.data.sampler import make_loader
from ablate_lit.errors import AblateError
from ablate_lit.report import neuron_views
from ablate_lit import signals
from ablate_lit.resources import check_fits
from ablate_lit.sharding import is_sharded
from ablate_lit.store import ResultStore, digest

log = logging.getLogger("ablate_lit")


CACHE_FORMAT = 3  # bump when the content of cached statistics changes, so older caches are rebuilt
# (3: histogram counts summed over processes; format 2 stored process 0's under several processes)


POLL_S = 2.0
"""Seconds between looks at points another process is evaluating."""


def say(trainer, msg: str) -> None:
    if trainer.is_global_zero:
        print(msg, flush=True)


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path, key: str):
    """A cached object whose stored key matches, or None (missing, corrupt or made with other settings)."""
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


class Experiment:
    def __init__(self, trainer, module, data, cfg: AblationConfig, run_dir: Path, cache_dir: Path):
        self.trainer, self.module, self.data, self.cfg = trainer, module, data, cfg
        cfg.resolve_methods(module.resample_sources)
        self.run_dir, self.cache_dir = Path(run_dir), Path(cache_dir)
        self.methods = {m.label: m for m in map(parse_method, cfg.methods)}
        self._stats: CalibrationStats | None = None
        self._orders: dict = {}
        n_layers = module.hooks.n_layers
        for layer in cfg.layers or []:
            if not -n_layers <= layer < n_layers:
                raise AblateError(f"ablation.layers holds {layer}, but the model has {n_layers} layers (0 to {n_layers - 1})")
        self.layers = sorted({layer % n_layers for layer in cfg.layers}) if cfg.layers else list(range(n_layers))
        """The layers whose units are ablated (execution order)."""
        self.unit_size = module.pre_outs[0].head_dim if cfg.unit == "head" else 1
        if parse_order(cfg.order)[0] is not None and len(cfg.seeds) > 1:
            say(trainer, f"order {cfg.order}: every seed gives the same sets, so only seed {cfg.seeds[0]} runs")
            cfg.seeds = cfg.seeds[:1]
        self._current: tuple[str | None, dict] = (None, {})
        self.total = self.done = 0
        for method in self.methods.values():
            method.check(self)

    # -- calibration -----------------------------------------------------------------------------
    def _validate(self, callback: CalibrationCallback, loader: DataLoader) -> dict:
        self.trainer.callbacks.append(callback)
        try:
            self.trainer.validate(self.module, dataloaders=loader, verbose=False)
        finally:
            self.trainer.callbacks.remove(callback)
            self.module.hooks.remove()
        return callback.result

    def _calibration_key(self, *extra) -> dict:
        """What cached statistics depend on: the model, where it is hooked (attention or MLP units,
        which layers), the precision, the inputs' layout, and ``extra``."""
        hooked = [(p.name, p.width, p.application) for p in self.module.pre_outs]
        return {"format": CACHE_FORMAT, "model": self.module.fingerprint(), "hooked": hooked,
                "precision": str(self.trainer.precision), "data": self.data.shape_key(), "extra": extra}

    def statistics(self) -> CalibrationStats:
        cfg = self.cfg
        key = digest(self._calibration_key("stats", self.data.fingerprint("calibration"), cfg.eps, cfg.n_bins, cfg.bin_alignment))
        path = self.cache_dir / f"stats-{key}.pt"
        stats = _load(path, key)
        if stats is not None:
            stats = CalibrationStats(stats)
            say(self.trainer, f"calibration statistics: cached ({path})")
            return stats
        self.check_statistics_fit(self.module.device)
        early = "" if is_sharded(self.trainer.strategy) else " (each forward pass stops after the last hooked layer)"
        say(self.trainer, f"calibration: {self.data.describe('calibration')}{early}")
        callback = CalibrationCallback(cfg.eps, cfg.n_bins, cfg.bin_alignment)
        stats = self._validate(callback, self.data.val_dataloader())
        stats["key"] = key
        if self.trainer.is_global_zero:
            _save(stats, path)
        self._warn_outside_window(stats)
        return CalibrationStats(stats)

    def check_statistics_fit(self, device) -> None:
        """Refuse histograms that cannot fit on ``device`` before anything is allocated or evaluated."""
        n_bins, n_layers, width = self.cfg.n_bins, self.module.hooks.n_layers, self.module.hooks.width
        check_fits(n_layers * width * ((n_bins + 2) * 4 + 7 * 8), device,
                   f"the calibration histograms ({n_layers} layers x {width} neurons x {n_bins + 2} int32 bins, plus "
                   "float64 moments)", f"lower --ablation.n_bins (now {n_bins})")

    def _warn_outside_window(self, stats: dict) -> None:
        outside = stats["underflow"].long() + stats["overflow"].long()
        risky = int((outside > stats["peak_count"].long()).sum())
        if risky:
            say(self.trainer, f"warning: {risky} neurons have more activations outside their histogram window than in "
                               f"their fullest bin; raise --ablation.n_bins (now {self.cfg.n_bins}) so their peaks are exact")

    def resample_cache(self, source: str) -> torch.Tensor:
        cfg, data, module = self.cfg, self.data, self.module
        inputs_from = self.data.fingerprint("calibration") if source == "data" else module.hparams.get("generator")
        key = digest(self._calibration_key("resample", source, cfg.n_resample, cfg.resample_seed, inputs_from))
        path = self.cache_dir / f"resample-{source}-{key}.pt"
        cached = _load(path, key)
        if cached is not None:
            say(self.trainer, f"resample cache {source}: cached ({path})")
            return cached["resample"]
        positions, (n_layers, width) = self.data.positions(), (module.hooks.n_layers, module.hooks.width)
        if positions:
            check_fits(n_layers * cfg.n_resample * positions * width * 4, module.device,
                       f"the {source} resample cache ({n_layers} layers x {cfg.n_resample} rows x {positions} positions x "
                       f"{width} neurons)", f"lower --ablation.n_resample (now {cfg.n_resample})")
        kind = "calibration inputs" if source == "data" else "random inputs"
        say(self.trainer, f"resample cache {source}: {cfg.n_resample} {kind}")
        inputs = module.random_inputs(source, cfg.n_resample, cfg.resample_seed, data)
        callback = CalibrationCallback(cfg.eps, cfg.n_bins, cfg.bin_alignment)
        callback.sweep_resample(cfg.n_resample)
        result = self._validate(callback, make_loader(inputs, data.batch_size))
        if self.trainer.is_global_zero:
            _save({"key": key, "resample": result["resample"], "inputs": getattr(inputs, "windows", None)}, path)
        return result["resample"]

    # -- the schedule ------------------------------------------------------------------------------
    def on_device(self, point) -> dict:
        """The point's replacement values on the model's device. They move there once per method
        (once per point for a method fitted per point): the schedule runs the points of one method
        together, and only the current values stay on the device (a resample cache can take GiBs)."""
        method = self.methods[point.method]
        key = (method.label, point.seed, point.fraction) if getattr(method, "per_point", False) else method.label
        if self._current[0] != key:
            self._current = (None, {})  # the previous method's values leave the device first
            values = method.replacement(self, point)
            self._current = (key, {k: v.to(self.module.device) for k, v in values.items()})
        return self._current[1]

    def mask(self, point) -> torch.Tensor:
        """Boolean [n_layers, width]: the neurons ablated at ``point`` (the same for every method)."""
        cfg, hooks = self.cfg, self.module.hooks
        if point.seed not in self._orders:
            scores = unit_scores(self.stats, cfg.order, self.unit_size)
            self._orders[point.seed] = neuron_order(point.seed, hooks.n_layers, hooks.width, cfg.selection, self.unit_size,
                                                    self.layers, scores, parse_order(cfg.order)[1])
        return ablation_mask(self._orders[point.seed], point.fraction, hooks.n_layers, hooks.width, self.unit_size,
                             self.layers)

    # -- optimal ablation --------------------------------------------------------------------------
    def fit_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibration rows optimal ablation trains on, and those held out for early stopping (a fixed
        permutation; the evaluated windows are never among them). Under several processes the training
        rows are trimmed to a multiple of ``optimal_batch_size`` per step, so every process runs as many
        steps (a gradient all-reduce without a partner would hang), and every process holds some out."""
        cfg, world = self.cfg, self.trainer.world_size
        n = len(self.data.calibration_subset())
        held = max(world, round(cfg.optimal_held_out * n))
        train = n - held
        if world > 1:
            train -= train % world
        more = "--data.calib_images" if hasattr(self.data, "calib_images") else "--data.calib_tokens"
        if train < world:
            raise AblateError(f"optimal needs calibration inputs to train on and others to hold out ({world} of each at "
                              f"least, one per process), but there are {n} ({self.data.describe('calibration')}); raise {more}")
        if cfg.optimal_batch_size % world:
            raise AblateError(f"--ablation.optimal_batch_size {cfg.optimal_batch_size} must be a multiple of the "
                              f"{world} processes (each takes an equal share of a step's windows)")
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        return rows[held:held + train].sort().values, rows[:held].sort().values

    def _place(self) -> None:
        """Have Lightning move (and, for a true half precision, cast) the model now, as at the start of
        any evaluation; inside ``kept_in_place`` it then stays. A fit can come first (statistics cached,
        no baseline to run), and its model must already be where and as it is evaluated."""
        if not getattr(self, "_placed", False):
            self.trainer.validate(self.module, dataloaders=make_loader([], 1), verbose=False)
            self._placed = True

    def fitted(self, point) -> torch.Tensor:
        """``point``'s optimal constants [n_layers, width] (the mean where nothing is ablated), fitted
        with ``trainer.fit`` (``ablation.optimal``) or loaded from the calibration cache."""
        from ablate_lit.ablation.optimal import fit_constants

        cfg, trainer, data = self.cfg, self.trainer, self.data
        mask, init = self.mask(point), self.stats["mean"].float()
        if not bool(mask.any()):
            return init
        train_rows, held_rows = self.fit_split()
        # the fit equals a one-process fit up to rounding: each of w processes takes batch/w windows of a step,
        # and DDP averages their gradients, so neither the evaluation batch size nor w is in the key
        settings = (cfg.optimal_lr, cfg.optimal_epochs, cfg.optimal_patience, cfg.optimal_held_out, cfg.optimal_batch_size)
        key = digest(self._calibration_key("optimal", data.fingerprint("calibration"), cfg.eps, cfg.n_bins, cfg.bin_alignment,
                                           digest(mask.numpy().tobytes().hex()), *settings))
        path = self.cache_dir / f"optimal-{key}.pt"
        where = f"optimal {round(100 * point.fraction)}% (seed {point.seed})"
        cached = _load(path, key) if trainer.is_global_zero else None
        cached = trainer.strategy.broadcast(None if cached is None else cached["values"], src=0)
        if cached is not None:
            say(trainer, f"{where}: fitted constants cached ({path})")
            return cached
        say(trainer, f"{where}: fitting {int(mask.sum())} constants from the mean on {len(train_rows)} calibration inputs "
                     f"({len(held_rows)} held out for early stopping)")
        self._place()
        writer = None
        if trainer.is_global_zero:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tb" / f"optimal_seed{point.seed}"))
        try:
            scale = self.stats["std"].float().clamp_min(1e-6)
            result = fit_constants(trainer, self.module, mask, init, scale,
                                   make_loader(data.calibration_subset(train_rows), cfg.optimal_batch_size // trainer.world_size),
                                   make_loader(data.calibration_subset(held_rows), cfg.optimal_batch_size // trainer.world_size),
                                   lr=cfg.optimal_lr, max_epochs=cfg.optimal_epochs, patience=cfg.optimal_patience,
                                   writer=writer, tag=f"{round(100 * point.fraction):03d}pct")
        finally:
            if writer is not None:
                writer.close()
        # under several processes the constants stay equal (DDP averages the gradients); process 0's are the record
        result["values"] = trainer.strategy.broadcast(result["values"], src=0)
        say(trainer, f"{where}: held-out CE {result['init_ce']:.4f} at the mean -> {result['best_ce']:.4f} after "
                     f"{result['epochs']} epochs ({result['fit_s']:.1f} s)")
        if trainer.is_global_zero:
            _save({"key": key, **result, "mask": mask, "train_rows": train_rows, "held_out_rows": held_rows}, path)
        return result["values"]

    def _ablated(self, mask: torch.Tensor, replacement: dict):
        if self.cfg.mode == "fold" and "values" in replacement:  # constant methods; resampling is always hooked
            return folded(self.module.pre_outs, mask, replacement["values"])
        return self.module.hooks.ablating(mask, device=self.module.device, **replacement)

    @property
    def stats(self) -> CalibrationStats:
        """The calibration statistics, computed (or loaded) when a point first needs them."""
        if self._stats is None:
            self._stats = self.statistics()
            if self.cfg.log_histograms and self.trainer.is_global_zero:
                neuron_views(self._stats, self.run_dir)
        return self._stats

    def _decide(self, store: ResultStore, point) -> tuple[str, object, list]:
        """What to do with ``point`` now (decided by process 0 from the shared folder, told to all):
        ("done", None, []), ("copy", row evaluated elsewhere, missing rows), ("busy", holder, []) or
        ("evaluate", None, missing rows; the point is claimed)."""
        decision = None
        if self.trainer.is_global_zero:
            rows = store.read()
            missing = store.missing(point, store.keys(rows))
            evaluated = store.evaluation_of(point, rows) if missing else None
            if not missing:
                decision = ("done", None, [])
            elif evaluated is not None:
                decision = ("copy", evaluated, missing)
            elif not store.claim(point):
                decision = ("busy", store.claim_holder(point), [])
            else:
                decision = ("evaluate", None, missing)
        return self.trainer.strategy.broadcast(decision, src=0)

    def _evaluate(self, point, writer: ResultWriter) -> None:
        trainer, module = self.trainer, self.module
        n_neurons = len(self.layers) * module.hooks.width
        if point.method == "baseline":
            writer.begin(point, 0, n_neurons)
            trainer.test(module, dataloaders=self.data.test_dataloader(), verbose=False)
            return
        replacement = self.on_device(point)  # calibration, a resample sweep or a fit may run here, before the clock starts
        mask = self.mask(point)
        writer.begin(point, int(mask.sum()), n_neurons)
        with self._ablated(mask, replacement):
            trainer.test(module, dataloaders=self.data.test_dataloader(), verbose=False)

    def _join_processes(self) -> None:
        """Under several processes, start them all now (Lightning starts them at its first call; an
        empty validation pass is that call), so that process 0's decisions can be broadcast."""
        if self.trainer.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            self.trainer.validate(self.module, dataloaders=make_loader([], 1), verbose=False)

    def run(self, writer: ResultWriter) -> None:
        """Evaluate every point of the schedule that has no row yet. Points another process is
        evaluating are left to it and waited for; a point whose evaluation exists gets its rows copied."""
        trainer, cfg, store = self.trainer, self.cfg, writer.store
        self._join_processes()
        points = plan(cfg.methods, cfg.seeds, cfg.fractions)
        have = store.keys(store.read())
        todo = [p for p in points if store.missing(p, have)]
        self.total, self.done = len(points), len(points) - len(todo)
        say(trainer, f"schedule: {len(points)} evaluations ({self.done} already in {store.csv}), "
                      f"each over {self.data.describe('evaluation')}")
        trainer.callbacks.append(writer)
        started, evaluated, waiting, told = time.perf_counter(), 0, [], set()
        try:
            while todo or waiting:
                if not todo:
                    time.sleep(POLL_S)
                    todo, waiting = waiting, []
                point = todo.pop(0)
                action, detail, missing = self._decide(store, point)
                if action == "busy":
                    if detail not in told:
                        say(trainer, f"waiting for {point.method} {round(100 * point.fraction)}% (seed {point.seed}): "
                                      f"another process ({detail}) is evaluating it")
                        told.add(detail)
                    waiting.append(point)
                    continue
                if action == "copy" and trainer.is_global_zero:
                    writer.copy(point, detail, missing)
                elif action == "evaluate":
                    try:
                        self._evaluate(point, writer)
                    finally:
                        if trainer.is_global_zero:
                            store.release(point)
                    evaluated += 1
                self.done += 1
                signals.check()  # a signal whose exception a destructor swallowed still stops the run here
                if action != "evaluate":
                    continue
                eta = (time.perf_counter() - started) / evaluated * (len(todo) + len(waiting))
                kl = f"  kl {writer.last['kl']:.4f}" if self.cfg.kl else ""
                say(trainer, f"[{self.done}/{self.total}] {point.method:>24} seed {point.seed} "
                              f"{round(100 * point.fraction):3d}% ablated: top1 {writer.last['top1']:.4f}  "
                              f"ce {writer.last['ce']:.4f}{kl}  (eta {int(eta) // 60}:{int(eta) % 60:02d})")
        finally:
            trainer.callbacks.remove(writer)
            self.module.hooks.remove()
            writer.close()
