"""The experiment design: which methods, fractions, seeds, and how the statistics are binned."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ablate_lit.ablation.methods import METHODS, PAPER, parse_method
from ablate_lit.ablation.schedule import (
    FRACTION_DIGITS,
    SCHEDULES,
    SELECTIONS,
    SITES,
    UNITS,
    fraction_key,
    parse_order,
)
from ablate_lit.common.errors import AblateError, check, check_seed, did_you_mean
from ablate_lit.common.logs import say
from ablate_lit.stats.histogram import ALIGNMENTS

EPS_RANGE = (1e-8, 1e4)
"""Bin widths that float32 activations can be binned by (x / eps neither underflows nor saturates)."""


def _default_fractions() -> list[float]:
    return [round(i / 10, 1) for i in range(11)]


@dataclass
class AblationConfig:
    """What to ablate and how: the methods compared, the fractions and seeds of the nested unit sets,
    which units (attention neurons, heads, MLP units; which layers; in what order), how calibration
    statistics are binned, and the optimal method's fitting settings."""

    methods: list[str] | None = field(
        default=None, metadata={"example": " (method names), e.g. ['zero', 'mean', 'peak']"}
    )
    """Methods to compare: zero, mean, peak (peak:eps=E: bins E wide), median, peak_refined, optimal
    (optimal:kl, optimal+position), resample:<source> (random_chars, random_tokens, generated, random_pixels,
    data, counterfactual), mean:counterfactual. Default: the paper's (zero, mean, peak and the family's random
    resample sources)."""
    fractions: list[float] = field(
        default_factory=_default_fractions, metadata={"example": " in [0, 1], e.g. [0, 0.5, 1]"}
    )
    """Fractions of neurons ablated, each in [0, 1] (default 0, 0.1, ..., 1)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"example": ", e.g. [0, 1, 2]"})
    """Seeds of the random unit sets; every method sees a seed's sets."""
    selection: str = "per_layer"
    """per_layer: every layer loses the same fraction of its units; global: draw over all units of the chosen layers."""
    unit: str = "neuron"
    """neuron, head (all head_dim neurons of a head; site attn) or layer (all units of a layer's site; schedules
    each and attribution)."""
    schedule: str = "nested"
    """nested: random unit sets at each fraction, nested, per seed (the paper); each: every unit ablated alone
    by every method; attribution: every unit's effect under every method estimated from one backward pass, the
    top and a random sample then measured exactly."""
    site: str = "attn"
    """attn: the attention heads' output (the paper); mlp: the MLP hidden units (input of each block's MLP output
    projection)."""
    layers: list[int] | None = field(default=None, metadata={"example": " (layer indices), e.g. [0, -1]"})
    """Only these layers' units are ablated (indices in execution order, negative from the end; default all);
    fractions count their units."""
    order: str = "random"
    """random, or units in order of a calibration statistic (std, peak_mean_gap, abs_peak, abs_mean, off_zero_peak,
    bimodality, abs_skew; :desc for descending) or of their attribution (attribution:<method>); one seed runs."""
    eps: float = 0.01
    """Histogram bin width for the peak method."""
    n_bins: int = 1024
    """Histogram bins per neuron, around its first-batch mean."""
    bin_alignment: str = "edge"
    """edge: bins [k*eps, (k+1)*eps) as in the paper (peak = y_k + eps/2); centered: bins centred on k*eps."""
    n_resample: int = 16
    """Randomised inputs cached per resample source (sample i uses row i mod n_resample)."""
    resample_seed: int = 0
    """Seed of the randomised inputs."""
    mode: str = "hook"
    """hook: replace values in a forward pre-hook; fold: write constant replacements into the out-projection's
    weights and bias for each point (zero/mean/peak; not with sharded weights)."""
    cache_dir: str | None = None
    """Where calibration statistics are cached (default: <root>/.calibration_cache)."""
    optimal_lr: float = 0.05
    """optimal: Adam learning rate, in units of each neuron's calibration standard deviation."""
    optimal_epochs: int = 20
    """optimal: most epochs over the training part of the calibration windows."""
    optimal_patience: int = 4
    """optimal: stop after this many epochs without a lower held-out CE, keeping the best constants."""
    optimal_batch_size: int = 8
    """optimal: calibration windows (or images) per optimisation step, over all processes (lower it if a fit runs
    out of memory)."""
    optimal_held_out: float = 0.25
    """optimal: share of the calibration windows held out for early stopping (never trained on)."""
    ablations_per_pass: int | str = "auto"
    """Ablations scored in one forward pass, each on its own copy of the batch (the same numbers as one at a
    time). auto: as many as the GPU's free memory holds, 1 on a CPU; fewer after an out-of-memory error."""
    attribution_top_k: int = 20
    """attribution: each method's units of largest estimated harm that are then measured exactly."""
    attribution_sample: int = 50
    """attribution: units drawn at random (the same for every method) that are also measured exactly."""
    attribution_graddrop: bool = False
    """attribution: also AtP*'s GradDrop score (one more backward pass per layer; finds units whose effects
    through later layers cancel), its top units measured exactly too."""
    kl: bool = False
    """Also measure KL(unablated || ablated) per point (each batch runs twice)."""
    log_histograms: bool = True
    """Write neurons.csv and the neuron-distribution figures to the run folder and TensorBoard."""

    def __post_init__(self):
        self._check_binning_and_fitting()
        self._check_schedule()
        self._check_units()

    def _check_binning_and_fitting(self) -> None:
        check(
            math.isfinite(self.eps) and self.eps > 0,
            f"⟨ablation.eps⟩ must be a positive number, got {self.eps}; e.g. ⟨--ablation.eps⟩ 0.01",
        )
        check(
            EPS_RANGE[0] <= self.eps <= EPS_RANGE[1],
            f"⟨ablation.eps⟩ {self.eps} is outside [{EPS_RANGE[0]:g}, "
            f"{EPS_RANGE[1]:g}] (activations are binned in float32); e.g. ⟨--ablation.eps⟩ 0.01",
        )
        check(self.n_bins >= 2, f"⟨ablation.n_bins⟩ must be at least 2, got {self.n_bins}")
        check(
            math.isfinite(self.optimal_lr) and self.optimal_lr > 0,
            f"⟨ablation.optimal_lr⟩ must be a positive number, got {self.optimal_lr}",
        )
        check(
            self.optimal_epochs >= 1,
            f"⟨ablation.optimal_epochs⟩ must be at least 1, got {self.optimal_epochs} (0 would "
            "leave optimal equal to mean)",
        )
        check(
            self.optimal_batch_size >= 1,
            f"⟨ablation.optimal_batch_size⟩ must be at least 1, got {self.optimal_batch_size}",
        )
        check(
            self.optimal_patience >= 1, f"⟨ablation.optimal_patience⟩ must be at least 1, got {self.optimal_patience}"
        )
        check(
            0 < self.optimal_held_out < 1,
            f"⟨ablation.optimal_held_out⟩ must be a share in (0, 1), got {self.optimal_held_out}; "
            "e.g. ⟨--ablation.optimal_held_out⟩ 0.25",
        )
        check(self.n_resample >= 1, f"⟨ablation.n_resample⟩ must be positive, got {self.n_resample}")

    def _check_schedule(self) -> None:
        check(
            self.methods is None or len(self.methods) > 0,
            "⟨ablation.methods⟩ is empty; name at least one of: " + ", ".join(METHODS),
        )
        check(len(self.seeds) > 0, "⟨ablation.seeds⟩ is empty; give at least one seed, e.g. ⟨--ablation.seeds⟩ [0]")
        check(len(self.fractions) > 0, "⟨ablation.fractions⟩ is empty; e.g. ⟨--ablation.fractions⟩ [0,0.5,1]")
        for f in self.fractions:
            check(
                math.isfinite(f) and 0.0 <= f <= 1.0,
                f"⟨ablation.fractions⟩ holds {f}, outside [0, 1]; fractions are shares of neurons ablated",
            )
        keys: dict[float, float] = {}
        for f in self.fractions:
            check(
                fraction_key(f) not in keys,
                f"⟨ablation.fractions⟩ holds {keys.get(fraction_key(f))} and {f}, one point at "
                f"{FRACTION_DIGITS} decimals; keep one of them",
            )
            keys[fraction_key(f)] = f
        for seed in self.seeds:
            check_seed(seed, "each of ⟨ablation.seeds⟩")
        check_seed(self.resample_seed, "⟨ablation.resample_seed⟩")

    def _check_schedule_units(self) -> None:
        check(
            self.schedule in SCHEDULES,
            f"unknown ⟨ablation.schedule⟩ '{self.schedule}'{did_you_mean(self.schedule, SCHEDULES)}; use one of: "
            f"{', '.join(SCHEDULES)}",
        )
        check(
            self.schedule != "nested" or self.unit != "layer",
            "⟨ablation.unit⟩ layer ablates whole layers one at a time: use it with ⟨--ablation.schedule each⟩ "
            "(or attribution)",
        )
        check(
            self.schedule != "each" or self.unit != "neuron",
            "⟨ablation.schedule⟩ each evaluates every unit alone: use ⟨--ablation.unit⟩ head or layer (one "
            "evaluation per neuron would be thousands; ⟨--ablation.schedule attribution⟩ estimates every neuron)",
        )
        check(
            self.schedule == "nested" or parse_order(self.order)[0] is None,
            "⟨ablation.order⟩ orders the units of nested sets; the single-unit and attribution schedules take every "
            "unit alone, so leave ⟨--ablation.order random⟩",
        )
        check(
            self.schedule == "nested" or self.mode == "hook",
            f"⟨ablation.mode⟩ fold folds one point's constants into the weights; the {self.schedule} schedule "
            "evaluates one unit at a time with hooks: use ⟨--ablation.mode hook⟩",
        )
        check(
            self.attribution_top_k >= 0 and self.attribution_sample >= 0,
            "⟨ablation.attribution_top_k⟩ and ⟨ablation.attribution_sample⟩ must be 0 or more",
        )
        check(
            self.schedule == "attribution" or not self.attribution_graddrop,
            "⟨ablation.attribution_graddrop⟩ scores the units of an attribution map: use it with "
            "⟨--ablation.schedule attribution⟩",
        )

    def _check_units(self) -> None:
        self._check_schedule_units()
        check(
            self.selection in SELECTIONS,
            f"unknown ⟨ablation.selection⟩ '{self.selection}'{did_you_mean(self.selection, SELECTIONS)}; use one of: "
            f"{', '.join(SELECTIONS)}",
        )
        for name, value, choices in (("unit", self.unit, UNITS), ("site", self.site, SITES)):
            check(
                value in choices,
                f"unknown ⟨ablation.{name}⟩ '{value}'{did_you_mean(value, choices)}; use one of: {', '.join(choices)}",
            )
        check(
            not (self.unit == "head" and self.site == "mlp"),
            "⟨ablation.unit⟩ head needs ⟨ablation.site⟩ attn (MLP units have no heads)",
        )
        check(
            self.layers is None or (len(self.layers) > 0 and len(set(self.layers)) == len(self.layers)),
            f"⟨ablation.layers⟩ must list distinct layer indices, got {self.layers}",
        )
        parse_order(self.order)
        check(
            self.bin_alignment in ALIGNMENTS,
            f"unknown ⟨ablation.bin_alignment⟩ '{self.bin_alignment}'{did_you_mean(self.bin_alignment, ALIGNMENTS)}; "
            f"use one of: {', '.join(ALIGNMENTS)}",
        )
        check(len(set(self.seeds)) == len(self.seeds), f"⟨ablation.seeds⟩ has duplicates: {self.seeds}")
        check(
            self.mode in ("hook", "fold"),
            f"unknown ⟨ablation.mode⟩ '{self.mode}'{did_you_mean(self.mode, ('hook', 'fold'))}; use hook or fold",
        )
        per_pass = self.ablations_per_pass
        check(
            per_pass == "auto" or (isinstance(per_pass, int) and not isinstance(per_pass, bool) and per_pass >= 1),
            f"⟨ablation.ablations_per_pass⟩ must be a positive integer or auto, got {per_pass}",
        )
        check(
            self.mode == "hook" or per_pass in ("auto", 1),
            "⟨ablation.mode⟩ fold writes one point's constants into the weights, which every copy of a batch "
            "shares; use ⟨--ablation.ablations_per_pass⟩ 1 (or auto) with fold mode",
        )
        check(
            not (self.kl and self.mode == "fold"),
            "⟨ablation.kl⟩ needs the unablated model beside the ablated one, which "
            "fold mode edits away; use ⟨--ablation.mode hook⟩",
        )
        if self.methods is not None:
            self.methods = [parse_method(m).label for m in self.methods]
            check(len(set(self.methods)) == len(self.methods), f"⟨ablation.methods⟩ has duplicates: {self.methods}")

    def resolve_methods(self, resample_sources: tuple[str, ...]) -> None:
        """Fill in the default methods for a family: the paper's (zero, mean, peak and its randomised resample
        sources)."""
        if self.methods is None:
            self.methods = [*PAPER] + [f"resample:{s}" for s in resample_sources if s != "data"]


def resolve_for(cfg: AblationConfig, module, trainer) -> list[int]:
    """Complete ``cfg`` for ``module`` (the family's default methods; one seed for an order, which is
    the same for every seed) and return the layers whose units are ablated, in execution order."""
    cfg.resolve_methods(module.resample_sources)
    n_layers = module.hooks.n_layers
    for layer in cfg.layers or []:
        if not -n_layers <= layer < n_layers:
            raise AblateError(
                f"⟨ablation.layers⟩ holds {layer}, but the model has {n_layers} layers (0 to {n_layers - 1})"
            )
    resolved = [layer % n_layers for layer in cfg.layers or []]
    if len(set(resolved)) < len(resolved):
        twice = next(layer for layer in resolved if resolved.count(layer) > 1)
        raise AblateError(
            f"⟨ablation.layers⟩ {cfg.layers} names layer {twice} twice (the model has {n_layers} layers, counted from "
            "the end by negative indices); list each layer once"
        )
    if cfg.schedule == "each":
        say(trainer, f"schedule each: every {cfg.unit} ablated alone by each method (fractions and seeds are not used)")
        cfg.seeds = [0]
    elif cfg.schedule == "attribution":
        say(
            trainer,
            f"schedule attribution: every {cfg.unit}'s effect estimated by each method, then each method's "
            f"{cfg.attribution_top_k} of largest estimated harm and {cfg.attribution_sample} drawn at random "
            "measured exactly (fractions and seeds are not used)",
        )
        cfg.seeds = [0]
    elif parse_order(cfg.order)[0] is not None and len(cfg.seeds) > 1:
        say(trainer, f"order {cfg.order}: every seed gives the same sets, so only seed {cfg.seeds[0]} runs")
        cfg.seeds = cfg.seeds[:1]
    return sorted({layer % n_layers for layer in cfg.layers}) if cfg.layers else list(range(n_layers))
