"""Optimal constants per point: the calibration split they are fitted on, the fit with the run's
trainer (``ablation.optimal``), and its cache (the constants depend on the model, the calibration
data, the point's neuron set and the fitting settings, never on the evaluation data)."""

from __future__ import annotations

import torch

from ablate_lit.ablation.optimal import fit_constants
from ablate_lit.common import progress
from ablate_lit.common.curves import series_of
from ablate_lit.common.errors import AblateError
from ablate_lit.common.labels import NO_TARGET, Point, percent
from ablate_lit.common.logs import empty_pass, say
from ablate_lit.common.words import counted
from ablate_lit.data.sampler import make_loader
from ablate_lit.store.objects import digest, load_object, save_object


class OptimalFitter:
    """Fits (or loads) a point's optimal constants. ``cache`` gives the keys and folder of cached
    objects (``calibration.cache.CalibrationCache``); ``curves`` are the run's loggers (``common.curves``)."""

    def __init__(self, trainer, module, data, cfg, cache, curves):
        self.trainer, self.module, self.data, self.cfg, self.cache = trainer, module, data, cfg, cache
        self.curves = curves
        self._placed = False

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
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
        more = "⟨--data.calib_images⟩" if self.data.positions() is None else "⟨--data.calib_tokens⟩"  # images
        if train < world:
            raise AblateError(
                f"optimal needs calibration inputs to train on and others to hold out ({world} of each at "
                f"least, one per process), but there are {n} ({self.data.describe('calibration')}); "
                f"raise {more}"
            )
        if cfg.optimal_batch_size % world:
            raise AblateError(
                f"⟨--ablation.optimal_batch_size⟩ {cfg.optimal_batch_size} must be a multiple of the "
                f"{world} processes (each takes an equal share of a step's windows)"
            )
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        return rows[held : held + train].sort().values, rows[:held].sort().values

    def work(self, point: Point) -> progress.Work:
        """The fit of ``point``'s constants as a step of the run: at most ``optimal_epochs`` epochs over the
        training rows (a training step costs ``progress.FIT_PASSES`` forward passes) and the held-out rows."""
        train, held = (len(rows) for rows in self.split())
        epochs = self.cfg.optimal_epochs
        return progress.Work(f"fitting {point.describe()}", "fit", epochs * (train + held / progress.FIT_PASSES))

    def _place(self) -> None:
        """Have Lightning move (and, for a true half precision, cast) the model now, as at the start of
        any evaluation; inside ``kept_in_place`` it then stays. A fit can come first (statistics cached,
        no baseline to run), and its model must already be where and as it is evaluated."""
        if not self._placed:
            with empty_pass():
                self.trainer.validate(self.module, dataloaders=make_loader([], 1), verbose=False)
            self._placed = True

    def _key(self, mask: torch.Tensor, objective: str, per_position: bool) -> str:
        # the fit equals a one-process fit up to rounding: each of w processes takes batch/w windows of a step,
        # and DDP averages their gradients, so neither the evaluation batch size nor w is in the key
        cfg = self.cfg
        settings = (
            cfg.optimal_lr,
            cfg.optimal_epochs,
            cfg.optimal_patience,
            cfg.optimal_held_out,
            cfg.optimal_batch_size,
        )
        if objective != "ce" or per_position:  # (the CE fit per unit keeps the key it always had)
            settings += (objective, per_position)
        return digest(
            self.cache.key(
                "optimal",
                self.data.fingerprint("calibration"),
                cfg.eps,
                cfg.n_bins,
                cfg.bin_alignment,
                digest(mask.numpy().tobytes().hex()),
                *settings,
            )
        )

    def fitted(
        self, point: Point, mask: torch.Tensor, stats, objective: str = "ce", per_position: bool = False
    ) -> torch.Tensor:
        """``point``'s optimal constants [n_layers, width] (per position: [n_layers, pos, width]; the
        mean where nothing is ablated), minimising ``objective`` (ce, or kl from the unablated model),
        fitted with ``trainer.fit`` (``ablation.optimal``) or loaded from the cache."""
        trainer, init, scale = self.trainer, stats.mean.float(), stats.std.float().clamp_min(1e-6)
        if per_position:
            positions = self.data.positions()
            init, scale = (t[:, None, :].expand(-1, positions, -1).contiguous() for t in (init, scale))
        if not bool(mask.any()):
            progress.RUN.drop(self.work(point).what)  # (nothing to fit)
            return init
        train_rows, held_rows = self.split()
        key = self._key(mask, objective, per_position)
        path = self.cache.cache_dir / f"optimal-{key}.pt"
        where = point.describe()  # optimal 50% (seed 0), or optimal L3.H5 for one unit
        cached = load_object(path, key) if trainer.is_global_zero else None
        cached = trainer.strategy.broadcast(None if cached is None else cached["values"], src=0)
        if cached is not None:
            say(trainer, f"{where}: fitted constants cached ({path})")
            progress.RUN.drop(self.work(point).what)
            return cached
        n = int(mask.sum()) * (init.shape[1] if per_position else 1)
        minimising = ", minimising the KL from the unablated model" if objective == "kl" else ""
        work = self.work(point)
        with progress.step(work.what, work.kind, work.amount, "epochs", trainer=trainer) as step:
            result = self._fit(point, mask, init, scale, train_rows, held_rows, objective)
            step.detail = (
                f"{counted(n, 'constant')}{' (one per position)' if per_position else ''} from the mean on "
                f"{len(train_rows)} calibration inputs ({len(held_rows)} held out){minimising}: held-out "
                f"{objective.upper()} {result['init_loss']:.4f} at the mean -> {result['best_loss']:.4f}"
            )
        if trainer.is_global_zero:
            save_object(
                {"key": key, **result, "mask": mask, "train_rows": train_rows, "held_out_rows": held_rows}, path
            )
        return result["values"]

    def _fit(self, point: Point, mask, init, scale, train_rows, held_rows, objective: str) -> dict:
        cfg, trainer, data = self.cfg, self.trainer, self.data
        self._place()
        writer = self.curves.series(series_of(point.method, point.seed)) if trainer.is_global_zero else None
        step = cfg.optimal_batch_size // trainer.world_size
        try:
            result = fit_constants(
                trainer,
                self.module,
                mask,
                init,
                scale,
                make_loader(data.calibration_subset(train_rows), step),
                make_loader(data.calibration_subset(held_rows), step),
                lr=cfg.optimal_lr,
                max_epochs=cfg.optimal_epochs,
                patience=cfg.optimal_patience,
                writer=writer,
                tag=f"{percent_tag(point.fraction)}pct" if point.target == NO_TARGET else point.target,
                objective=objective,
            )
        finally:
            if writer is not None:
                writer.flush()
        # under several processes the constants stay equal (DDP averages the gradients); process 0's are the record
        result["values"] = trainer.strategy.broadcast(result["values"], src=0)
        return result


def percent_tag(fraction: float) -> str:
    """``050`` for 0.5: TensorBoard tags of fits sort by the share ablated."""
    return f"{percent(fraction):03d}"
