"""The parts of one experiment, built once from the settings and handed to whoever uses them.

``build_parts`` makes the run's calibration (statistics and resample caches, ``calibration.cache``),
the optimal fitter (``ablation.fitter``), the context every method reads (``ablation.context``),
the methods themselves (checked against it: a refusal comes before anything runs), the neuron sets
(``ablation.schedule``) or the single-unit map (``maps.units``), and the replacement values
(``ablation.values``). ``runner.launch`` runs them as an ``Experiment``; ``runner.export`` reads one
point's neuron set and values from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ablate_lit.ablation.context import MethodContext
from ablate_lit.ablation.fitter import OptimalFitter
from ablate_lit.ablation.methods import Method, Resample, parse_method
from ablate_lit.ablation.schedule import ATTRIBUTION, NeuronSets, StatisticsRanker
from ablate_lit.ablation.values import Replacements
from ablate_lit.calibration.cache import CalibrationCache
from ablate_lit.common.curves import Curves
from ablate_lit.common.families import COUNTERFACTUAL
from ablate_lit.common.sharding import is_sharded
from ablate_lit.maps.units import UnitMap
from ablate_lit.runner.attribution import AttributionRanker
from ablate_lit.runner.config import AblationConfig


@dataclass
class Parts:
    calibration: CalibrationCache
    """Statistics and resample caches, computed once (or loaded from the cache folder)."""
    methods: dict[str, Method]
    """The run's methods by label, checked against ``context``."""
    context: MethodContext
    sets: NeuronSets
    """The nested neuron sets (and the neurons fractions count)."""
    values: Replacements
    units: UnitMap | None
    """The single-unit map (``--ablation.schedule each``), else None."""


def method_context(trainer, module, data, cfg: AblationConfig, calibration, fitter) -> MethodContext:
    """What every method of this run reads."""
    counterfactual = data.has_counterfactual
    return MethodContext(
        eps=cfg.eps,
        bin_alignment=cfg.bin_alignment,
        n_layers=module.hooks.n_layers,
        width=module.hooks.width,
        family=module.family,
        resample_sources=module.resample_sources + ((COUNTERFACTUAL,) if counterfactual else ()),
        batch_major=all(p.batch_major for p in module.pre_outs),
        sharded=is_sharded(trainer.strategy),
        calibration=calibration,
        fits=fitter,
        counterfactual=counterfactual,
        fixed_template=data.fixed_template,
    )


def ordered_by(order: str, context: MethodContext) -> dict[str, Method]:
    """The method an ``attribution:<method>`` order ranks by (checked like the run's), by its label."""
    if not order.startswith(ATTRIBUTION):
        return {}
    method = parse_method(order.removeprefix(ATTRIBUTION))
    method.check(context)
    return {method.label: method}


def build_parts(
    trainer, module, data, cfg: AblationConfig, layers: list[int], cache_dir: Path, curves: Curves | None = None
) -> Parts:
    """The parts of an experiment over ``layers`` (``runner.config.resolve_for``); optimal's fits log to
    ``curves``. Every method is checked here, before anything is computed."""
    calibration = CalibrationCache(trainer, module, data, cfg, cache_dir)
    fitter = OptimalFitter(trainer, module, data, cfg, calibration, curves or Curves([]))
    context = method_context(trainer, module, data, cfg, calibration, fitter)
    methods = {m.label: m for m in map(parse_method, cfg.methods)}
    for method in methods.values():
        method.check(context)
    if any(isinstance(m, Resample) and m.source == "data" for m in methods.values()):
        data.calibration_sample(cfg.n_resample, cfg.resample_seed)  # enough calibration inputs, checked now
    values = Replacements({**methods, **ordered_by(cfg.order, context)}, context)
    hooks, head_dim = module.hooks, module.pre_outs[0].head_dim
    unit_size = head_dim if cfg.unit == "head" else 1
    ranker = (
        AttributionRanker(trainer, module, data, values, calibration, layers)
        if cfg.order.startswith(ATTRIBUTION)
        else StatisticsRanker(calibration)
    )
    sets = NeuronSets(hooks.n_layers, hooks.width, layers, unit_size, cfg.selection, cfg.order, ranker)
    units = (
        UnitMap(hooks.n_layers, hooks.width, head_dim, layers, cfg.unit, cfg.methods)
        if cfg.schedule in ("each", "attribution")
        else None
    )
    return Parts(calibration, methods, context, sets, values, units)
