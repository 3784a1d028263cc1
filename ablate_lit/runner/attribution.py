"""An attribution run (``--ablation.schedule attribution``): the sweep that estimates every unit's effect
under every method, the units then measured exactly, and the run's outputs.

The sweep is one ``trainer.test`` over the evaluation data in which every batch runs one forward and
one backward pass per attributed loss (``maps.attribution.AttributionStep``); its per-window sums are
kept in the run folder (attribution.pt, under the run's identity and methods), so a rerun resumes
with the exact checks. Each method's values are those an exact evaluation uses; optimal's constants
are those fitted to ablate every unit of the chosen layers at once. The exact checks are the
single-unit map's groups (``maps.units``) of the chosen units, rows of results.csv like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ablate_lit.ablation.schedule import ATTRIBUTION
from ablate_lit.calibration.heartbeat import loop_callbacks
from ablate_lit.common import progress
from ablate_lit.common.errors import AblateError, reason_of
from ablate_lit.common.labels import Point, unit_names
from ablate_lit.common.logs import say
from ablate_lit.common.words import counted
from ablate_lit.maps.attribution import AttributionStep, check_plan, units_to_check
from ablate_lit.report.attribution import write_attribution
from ablate_lit.runner.config import AblationConfig
from ablate_lit.sites.hooks import BlockGradients
from ablate_lit.stats.attribution import AttributionSums, harm
from ablate_lit.store.folder import with_family
from ablate_lit.store.objects import digest, load_object, save_object


def shape_of(module, cfg: AblationConfig, layers: list[int]) -> tuple[int, int, list[int]]:
    """(width, the neurons of one unit, the chosen layers) of the units a run attributes and checks."""
    width, head_dim = module.hooks.width, module.pre_outs[0].head_dim
    return width, {"neuron": 1, "head": head_dim}.get(cfg.unit, width), layers


def layout_of(module, cfg: AblationConfig, parts) -> dict:
    """What the sums' columns are: the width, head_dim (attention units), chosen layers and checked unit."""
    head_dim = module.pre_outs[0].head_dim if cfg.site == "attn" else None
    layers = list(parts.units.layers)
    hooks = module.hooks
    return {"n_layers": hooks.n_layers, "width": hooks.width, "head_dim": head_dim, "layers": layers, "unit": cfg.unit}


def sweep(trainer, module, data, parts, cfg: AblationConfig, run_dir: Path, run_id: str) -> dict:
    """The per-window sums of every (loss, method) (``stats.attribution``; with GradDrop, its magnitudes
    under ``GRADDROP``), computed or read back; ``parts``: the run's ``runner.parts.Parts``."""
    losses = module.scores.ATTRIBUTED
    graddrop = cfg.attribution_graddrop
    key = digest({"run_id": run_id, "methods": cfg.methods, "losses": losses, "graddrop": graddrop})
    path = Path(run_dir) / "attribution.pt"
    cached = load_object(path, key) if trainer.is_global_zero else None
    cached = trainer.strategy.broadcast(None if cached is None else cached["sums"], src=0)
    if cached is not None:
        say(trainer, f"attribution: the estimates of this run's sweep ({path})")
        return cached
    hooks, layout = module.hooks, layout_of(module, cfg, parts)
    values = site_values(module, parts, cfg.methods)
    levels = {"neuron": 1, **({"head": layout["head_dim"]} if layout["head_dim"] else {}), "layer": hooks.width}
    gates = BlockGradients(module.block_branches()) if graddrop else None
    if gates is not None and len(gates.branches) < 2:
        raise AblateError(
            "GradDrop drops one of several layers' gradients, and this model has one layer; "
            "leave ⟨--ablation.attribution_graddrop false⟩"
        )
    sums = AttributionSums(
        module.scores.n_windows, hooks.n_layers, hooks.width, losses, cfg.methods, levels if graddrop else None
    )
    step = AttributionStep(module, values, sums.to(module.device), gates=gates)
    passes = "one backward pass" if len(losses) == 1 else f"{len(losses)} backward passes (one per loss)"
    more = f", {len(gates.branches) - 1} more for GradDrop" if graddrop else ""
    say(
        trainer,
        f"attribution: one forward pass, {passes}{more} per batch over {data.describe('evaluation')}, "
        f"for {counted(len(cfg.methods), 'method')} at once",
    )
    sweep = progress.step("attribution sweep", "attribute", len(data.eval_dataset()), "batches", trainer=trainer)
    try:
        with sweep, loop_callbacks(trainer), module.scoring_with(step):
            trainer.test(module, dataloaders=data.test_dataloader(), verbose=False)
    except RuntimeError as exc:
        if "grad" not in str(exc) and "backward" not in str(exc):
            raise
        raise AblateError(
            f"attribution needs gradients through the model, which this one does not give ({reason_of(exc, 160)}); "
            "measure exactly with ⟨--ablation.schedule each⟩"
        ) from exc
    result = step.sums.compute()
    result = {k: {m: _cpu(v) for m, v in per.items()} for k, per in result.items()}
    if trainer.is_global_zero:
        save_object({"key": key, "sums": result, "layout": layout}, path)
    return result


def _cpu(value):
    return value.cpu() if torch.is_tensor(value) else {k: v.cpu() for k, v in value.items()}


def site_values(module, parts, methods: list[str]) -> dict[str, dict]:
    """Each method's values for ablating every unit of the chosen layers at once (optimal: the one fit of
    them all), on the module's device: what the estimates are of."""
    hooks = module.hooks
    full = torch.zeros(hooks.n_layers, hooks.width, dtype=torch.bool)
    full[parts.units.layers] = True
    points = [Point(1.0, m, 0, ((m, 0),)) for m in methods]
    return dict(zip(methods, parts.values.of_many(points, full, module.device), strict=True))


def checks(module, cfg: AblationConfig, parts, sums: dict) -> list:
    """The points of an attribution run: the baseline, then per layer the units to measure exactly, with
    the values the estimates are of (``Replacements.pin``: optimal's one fit, not one per unit)."""
    fitted = [m for m in cfg.methods if parts.methods[m].per_point]
    if fitted:
        parts.values.pin(site_values(module, parts, fitted))
    shape = shape_of(module, cfg, parts.units.layers)
    targets = unit_names(parts.units.layers, module.hooks.width, shape[1])
    units = units_to_check(sums, cfg.methods, targets, shape, cfg.attribution_top_k, cfg.attribution_sample, 0)
    return check_plan(units, cfg.methods, parts.units)


def summary(module, cfg: AblationConfig, parts, sums: dict, store, model: str, curves) -> str:
    """attribution.csv, attribution.md and the figures (also in the loggers' ``attribution`` series);
    returns the Markdown tables."""
    writer = curves.series("attribution")
    layout, rows = layout_of(module, cfg, parts), with_family(store.read(windows=True), store.run_dir)
    markdown, _ = write_attribution(sums, rows, layout, store.run_dir, model, writer)
    writer.flush()
    return markdown


class AttributionRanker:
    """Scores the units by one method's estimated harm (``--ablation.order attribution:<method>``): the
    first-order change of the loss (a task's logit difference, else CE) when each unit alone is ablated,
    estimated by one sweep over the calibration data (not the evaluation data the run then measures), and
    kept in the cache folder under the model, inputs and method."""

    def __init__(self, trainer, module, data, values, calibration, layers: list[int]):
        self.trainer, self.module, self.data, self.values = trainer, module, data, values
        self.calibration, self.layers = calibration, list(layers)

    def scores(self, order: str, unit_size: int) -> torch.Tensor:
        """[n_layers, n_units]: each unit's estimated harm (higher: ablating it alone hurts more)."""
        method = order.removeprefix(ATTRIBUTION)
        hooks, cfg = self.module.hooks, self.calibration.cfg
        inputs = self.data.fingerprint("calibration")
        settings = (
            "eps",
            "n_bins",
            "bin_alignment",
            "n_resample",
            "resample_seed",
            "optimal_lr",
            "optimal_epochs",
            "optimal_patience",
            "optimal_held_out",
            "optimal_batch_size",
        )  # what a method's values read
        key = digest(self.calibration.key("order", method, inputs, self.layers, [getattr(cfg, k) for k in settings]))
        path = self.calibration.cache_dir / f"order-{key}.pt"
        cached = load_object(path, key) if self.trainer.is_global_zero else None
        per_neuron = self.trainer.strategy.broadcast(None if cached is None else cached["harm"], src=0)
        if per_neuron is None:
            per_neuron = self._sweep(method, path, key)
        else:
            say(self.trainer, f"order by the estimated harm of {method}: cached ({path})")
        return per_neuron.view(hooks.n_layers, -1, unit_size).sum(-1)

    def _sweep(self, method: str, path, key: str) -> torch.Tensor:
        hooks, module, trainer = self.module.hooks, self.module, self.trainer
        full = torch.zeros(hooks.n_layers, hooks.width, dtype=torch.bool)
        full[self.layers] = True
        point = Point(1.0, method, 0, ((method, 0),))
        values = {method: self.values.of_many([point], full, module.device)[0]}
        losses = module.scores.ATTRIBUTED[-1:]  # a task's logit difference, else CE
        sums = AttributionSums(1, hooks.n_layers, hooks.width, losses, [method])
        step = AttributionStep(module, values, sums.to(module.device), pooled=True)
        say(
            trainer,
            f"order by the estimated harm of {method}: an attribution sweep over {self.data.describe('calibration')}",
        )
        loader = self.data.val_dataloader()
        sweep = progress.step(
            f"estimated harm of {method}", "attribute", len(loader.dataset), "batches", trainer=trainer
        )
        with sweep, loop_callbacks(trainer), module.scoring_with(step):
            trainer.test(module, dataloaders=loader, verbose=False)
        loss = losses[0]
        result = step.sums.compute()[loss]
        per_neuron = harm(loss, result[method][0] / result["count"].sum().clamp_min(1)).float().cpu()
        per_neuron = per_neuron.view(hooks.n_layers, hooks.width)
        if trainer.is_global_zero:
            save_object({"key": key, "harm": per_neuron}, path)
        return per_neuron
