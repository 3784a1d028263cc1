"""The calibration statistics and resample caches of a run: computed by one sweep each (a validation
epoch with recording callbacks) or loaded from the cache folder.

Statistics depend only on (model weights, where it is hooked, precision, calibration inputs, eps,
binning), a resample cache on (model, source, count, seed, input layout); both are stored in
``cache_dir`` under the hash of exactly that, and reused across runs and methods.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ablate_lit.calibration.callbacks import ResampleCallback, StatisticsCallback
from ablate_lit.calibration.heartbeat import loop_callbacks
from ablate_lit.calibration.statistics import CalibrationStats
from ablate_lit.common import progress
from ablate_lit.common.logs import say, warn
from ablate_lit.common.resources import check_fits
from ablate_lit.common.sharding import is_sharded
from ablate_lit.common.words import counted
from ablate_lit.data.random_inputs import GENERATING
from ablate_lit.data.sampler import make_loader
from ablate_lit.store.objects import digest, load_object, save_object

CACHE_FORMAT = 3  # bump when the content of cached statistics changes, so older caches are rebuilt
# (3: histogram counts summed over processes; format 2 stored process 0's under several processes)


class CalibrationCache:
    """Statistics and resample caches for one (trainer, module, data, settings)."""

    def __init__(self, trainer, module, data, cfg, cache_dir: Path):
        self.trainer, self.module, self.data, self.cfg = trainer, module, data, cfg
        self.cache_dir = Path(cache_dir)
        self._statistics: dict[str, CalibrationStats] = {}

    def key(self, *extra) -> dict:
        """What a cached object depends on: the model, where it is hooked (attention or MLP units,
        which layers), the precision, the inputs' layout, and ``extra``."""
        hooked = [(p.name, p.width, p.application) for p in self.module.pre_outs]
        return {
            "format": CACHE_FORMAT,
            "model": self.module.fingerprint(),
            "hooked": hooked,
            "precision": str(self.trainer.precision),
            "data": self.data.shape_key(),
            "extra": extra,
        }

    def _sweep(self, callback, loader: DataLoader, what: str, detail: str = "") -> dict:
        """One validation epoch over ``loader`` with ``callback`` recording, as one step of the run's
        progress (priced as forward passes over its inputs; ``detail`` says what they are); its result."""
        steps = progress.step(what, "forward", len(loader.dataset), "batches", trainer=self.trainer, detail=detail)
        with steps:
            with loop_callbacks(self.trainer, callback):
                self.trainer.validate(self.module, dataloaders=loader, verbose=False)
        return callback.result

    def statistics_cached(self, which: str = "calibration") -> bool:
        """Whether ``statistics(which)`` is loaded or on disk (nothing to sweep)."""
        return which in self._statistics or self._statistics_path(which).is_file()

    def _statistics_path(self, which: str) -> Path:
        cfg = self.cfg
        inputs = self.data.fingerprint("calibration" if which == "calibration" else "counterfactual_calibration")
        key = digest(self.key("stats", inputs, cfg.eps, cfg.n_bins, cfg.bin_alignment))
        return self.cache_dir / f"stats-{key}.pt"

    # -- statistics ------------------------------------------------------------------------------
    def statistics(self, which: str = "calibration") -> CalibrationStats:
        """The statistics of the calibration split, or (``counterfactual``) of a task's counterfactual
        calibration prompts (``mean:counterfactual``): computed (or loaded) at the first call."""
        if which not in self._statistics:
            self._statistics[which] = self._compute(which)
        return self._statistics[which]

    def computed(self, which: str = "calibration") -> bool:
        """Whether ``statistics(which)`` has been computed (or loaded) by this run."""
        return which in self._statistics

    def _compute(self, which: str) -> CalibrationStats:
        cfg = self.cfg
        path = self._statistics_path(which)
        key = path.stem.removeprefix("stats-")
        stats = load_object(path, key)
        what = "calibration statistics" if which == "calibration" else "counterfactual statistics"
        if stats is not None:
            say(self.trainer, f"{what}: cached ({path})")
            return CalibrationStats(stats)
        self.check_statistics_fit(self.module.device)
        early = "" if is_sharded(self.trainer.strategy) else " (each forward pass stops after the last hooked layer)"
        if which == "calibration":
            loader = self.data.val_dataloader()
            detail = f"{self.data.describe('calibration')}{early}"
        else:
            inputs = self.data.counterfactual_inputs("calibration")
            loader = make_loader(inputs, self.data.batch_size)
            detail = f"the counterfactual prompts of {len(inputs)} calibration rows"
        callback = StatisticsCallback(cfg.eps, cfg.n_bins, cfg.bin_alignment)
        stats = self._sweep(callback, loader, what, detail)
        stats["key"] = key
        if self.trainer.is_global_zero:
            save_object(stats, path)
        stats = CalibrationStats(stats)
        self._warn_outside_window(stats)
        return stats

    def check_statistics_fit(self, device) -> None:
        """Refuse histograms that cannot fit on ``device`` before anything is allocated or evaluated."""
        n_bins, n_layers, width = self.cfg.n_bins, self.module.hooks.n_layers, self.module.hooks.width
        check_fits(
            n_layers * width * ((n_bins + 2) * 4 + 7 * 8),
            device,
            f"the calibration histograms ({n_layers} layers x {width} neurons x {n_bins + 2} int32 bins, plus "
            "float64 moments)",
            f"lower ⟨--ablation.n_bins⟩ (now {n_bins})",
        )

    def _warn_outside_window(self, stats: CalibrationStats) -> None:
        outside = stats.underflow.long() + stats.overflow.long()
        risky = int((outside > stats.peak_count.long()).sum())
        if risky:
            warn(
                self.trainer,
                f"{counted(risky, 'neuron')} {'has' if risky == 1 else 'have'} more activations outside the histogram "
                f"window than in the fullest bin; raise ⟨--ablation.n_bins⟩ (now {self.cfg.n_bins}) so their peaks "
                "are exact",
            )

    # -- resample caches ---------------------------------------------------------------------------
    def _resample_path(self, source: str) -> tuple[Path, str, int]:
        """Where ``source``'s cache is stored, its key and its rows."""
        cfg, data, module = self.cfg, self.data, self.module
        inputs_from = {"data": "calibration", "counterfactual": "counterfactual"}.get(source)
        inputs_from = data.fingerprint(inputs_from) if inputs_from else module.settings.source.generator
        n_rows = len(data.counterfactual_inputs()) if source == "counterfactual" else cfg.n_resample
        key = digest(self.key("resample", source, n_rows, cfg.resample_seed, inputs_from))
        return self.cache_dir / f"resample-{source}-{key}.pt", key, n_rows

    def statistics_work(self, which: str = "calibration") -> list[progress.Work]:
        """The sweep ``statistics(which)`` would take (none when they are at hand or on disk)."""
        if self.statistics_cached(which):
            return []
        what = "calibration statistics" if which == "calibration" else "counterfactual statistics"
        inputs = (
            self.data.val_dataloader().dataset
            if which == "calibration"
            else self.data.counterfactual_inputs("calibration")
        )
        return [progress.Work(what, "forward", len(inputs))]

    def resample_work(self, source: str) -> list[progress.Work]:
        """The steps building ``source``'s cache would take (none when it is on disk)."""
        path, _, n_rows = self._resample_path(source)
        if path.is_file():
            return []
        works = [progress.Work(f"resample cache {source}", "forward", n_rows)]
        steps = self.module.generation_steps(source, n_rows, self.data)
        return ([progress.Work(GENERATING, "generate", steps)] if steps else []) + works

    def resample(self, source: str) -> torch.Tensor:
        """The pre-outs [n_layers, n_resample, pos, width] of ``source``'s inputs (randomised, or
        calibration inputs for ``data``)."""
        cfg, data, module = self.cfg, self.data, self.module
        path, key, n_rows = self._resample_path(source)
        cached = load_object(path, key)
        if cached is not None:
            say(self.trainer, f"resample cache {source}: cached ({path})")
            return cached["resample"]
        positions, (n_layers, width) = data.positions(), (module.hooks.n_layers, module.hooks.width)
        if positions:
            check_fits(
                n_layers * n_rows * positions * width * 4,
                module.device,
                f"the {source} resample cache ({n_layers} layers x {n_rows} rows x {positions} positions "
                f"x {width} neurons)",
                "evaluate fewer rows (⟨--data.max_rows⟩)"
                if source == "counterfactual"
                else f"lower ⟨--ablation.n_resample⟩ (now {cfg.n_resample})",
            )
        kind = {"data": "calibration inputs", "counterfactual": "counterfactual prompts, one per evaluated sequence"}
        inputs = module.random_inputs(source, n_rows, cfg.resample_seed, data)
        loader = make_loader(inputs, data.batch_size)
        detail = f"the pre-outs of {n_rows} {kind.get(source, 'random inputs')}"
        result = self._sweep(ResampleCallback(n_rows), loader, f"resample cache {source}", detail)
        if self.trainer.is_global_zero:
            save_object({"key": key, "resample": result["resample"], "inputs": getattr(inputs, "windows", None)}, path)
        return result["resample"]
