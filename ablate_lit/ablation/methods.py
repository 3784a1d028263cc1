"""Ablation methods: each is a small class that gives the replacement values of a point.

A method turns what the run knows (a ``MethodContext``: its calibration statistics, resample
caches, fitted constants) and a point's neuron set into replacement values: ``{"values": [n_layers,
width]}`` (one constant per neuron) or ``{"resample": [n_layers, rows, pos, width]}`` (values per
input row and position).
Adding a method is one class here, registered in METHODS, and its test.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ablate_lit.ablation.context import MethodContext
from ablate_lit.common.errors import AblateError, did_you_mean
from ablate_lit.common.families import RESAMPLE_SOURCES
from ablate_lit.common.labels import METHOD_ORDER, Label, Point


class Method:
    """A replacement value for ablated units. ``arg`` is what follows ``name:`` in its label."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    constant: ClassVar[bool] = True
    """One value per neuron (fold mode can write it into the out-projection); False for resampling."""
    per_point: ClassVar[bool] = False
    """Its values depend on the point's neuron set (fitted per point), not only on the calibration data."""
    reads_statistics: ClassVar[bool] = True
    """Its values are read off (or start from) the calibration statistics."""

    def __init__(self, arg: str = ""):
        self.arg = arg

    @property
    def label(self) -> str:
        return f"{self.name}:{self.arg}" if self.arg else self.name

    def check(self, ctx: MethodContext) -> None:
        """Refuse settings this method cannot work with (one line), before anything runs."""

    def replacement(self, ctx: MethodContext, point: Point, mask: torch.Tensor) -> dict:
        """The values replacing the neurons of ``mask`` [n_layers, width] (True: ablated) at ``point``."""
        raise NotImplementedError

    def work(self, ctx: MethodContext, points: list[Point]) -> list:
        """The steps its values take before ``points`` are evaluated with it (a resample cache, a fit per
        point: ``common.progress.Work``), beyond the calibration statistics; none where they are on disk
        (a fit found on disk leaves the plan when it is read: ``progress.RunProgress.drop``)."""
        return []


class Zero(Method):
    name, help, reads_statistics = "zero", "0", False

    def replacement(self, ctx, point, mask):
        return {"values": torch.zeros(ctx.n_layers, ctx.width)}


class Mean(Method):
    name = "mean"
    help = "the mean of the calibration activations; mean:counterfactual over a task's counterfactual prompts"

    def __init__(self, arg: str = ""):
        super().__init__(arg)
        if arg not in ("", "counterfactual"):
            raise AblateError(f"unknown mean option '{arg}'; use mean, or mean:counterfactual on a task")

    def check(self, ctx):
        if self.arg and not ctx.counterfactual:
            raise AblateError(
                "mean:counterfactual takes the mean over a task's counterfactual prompts; evaluate on "
                "⟨--data ablate_lit.TaskData⟩ rows with a counterfactual column"
            )

    def replacement(self, ctx, point, mask):
        stats = ctx.calibration.statistics("counterfactual") if self.arg else ctx.stats
        return {"values": stats.mean.float()}

    def work(self, ctx, points):
        return ctx.calibration.statistics_work("counterfactual") if self.arg else []


class Median(Method):
    name, help = "median", "the centre of the eps-bin holding the median of the calibration activations"

    def replacement(self, ctx, point, mask):
        return {"values": ctx.stats.median().float()}


class Peak(Method):
    name = "peak"
    help = "the centre of the fullest eps-bin (the paper); peak:eps=E with bins E wide, E a multiple of ablation.eps"

    def __init__(self, arg: str = ""):
        super().__init__(arg)
        self.eps = None
        if arg:
            value = Label(f"{self.name}:{arg}").option("eps")
            try:
                self.eps = float(value) if value is not None else None
            except ValueError:
                self.eps = None
            if self.eps is None or not self.eps > 0:
                raise AblateError(
                    f"unknown peak option '{arg}'; use peak:eps=E with E a multiple of "
                    "⟨ablation.eps⟩, e.g. peak:eps=0.04"
                )
            self.arg = f"eps={self.eps:g}"

    def multiple(self, eps: float) -> int:
        return 1 if self.eps is None else round(self.eps / eps)

    def check(self, ctx):
        m = self.multiple(ctx.eps)
        if self.eps is not None and (m < 1 or abs(m * ctx.eps - self.eps) > 1e-9 * self.eps):
            raise AblateError(
                f"{self.label}: {self.eps:g} is not a multiple of ⟨ablation.eps⟩ {ctx.eps:g}; coarser bins are "
                "merged from the calibration histogram's"
            )
        if ctx.bin_alignment == "centered" and m % 2 == 0:
            raise AblateError(
                f"{self.label}: centered bins merge exactly only in odd numbers; use an odd multiple of "
                f"⟨ablation.eps⟩ {ctx.eps:g}"
            )

    def replacement(self, ctx, point, mask):
        return {"values": ctx.stats.peak_at(self.multiple(ctx.eps)).float()}


class PeakRefined(Method):
    name = "peak_refined"
    help = "the mode of the histogram smoothed at the rate for modes, to sub-bin precision (less biased by the grid)"

    def replacement(self, ctx, point, mask):
        return {"values": ctx.stats.peak_refined().float()}


class Resample(Method):
    name, constant, reads_statistics = "resample", False, False
    help = (
        "the value at the same position on other inputs: random_chars, random_tokens, generated (text), "
        "random_pixels (images), data (calibration inputs), or counterfactual (each task row's counterfactual prompt)"
    )

    def __init__(self, arg: str = ""):
        super().__init__(arg)
        if arg not in RESAMPLE_SOURCES:
            raise AblateError(
                f"unknown resample source '{arg}' in 'resample:{arg}'{did_you_mean(arg, RESAMPLE_SOURCES)}; use one "
                f"of: {', '.join(RESAMPLE_SOURCES)} (e.g. resample:random_tokens)"
            )

    @property
    def source(self) -> str:
        return self.arg

    def check(self, ctx):
        if self.source == "counterfactual" and not ctx.counterfactual:
            raise AblateError(
                "resample:counterfactual takes each row's values on its counterfactual prompt; evaluate on "
                "⟨--data ablate_lit.TaskData⟩ rows with a counterfactual column"
            )
        if self.source not in ctx.resample_sources:
            raise AblateError(
                f"resample source '{self.source}' does not apply to {ctx.family} models; "
                f"use one of: {', '.join('resample:' + s for s in ctx.resample_sources)}"
            )
        if not ctx.batch_major:
            raise AblateError(
                f"{self.label} needs pre-outs laid out [batch, pos, width], but this model's attention folds "
                "windows into the batch (windowed attention); use zero, mean or peak"
            )

    def replacement(self, ctx, point, mask):
        return {"resample": ctx.calibration.resample(self.source)}

    def work(self, ctx, points):
        return ctx.calibration.resample_work(self.source)


class Optimal(Method):
    name, per_point = "optimal", True
    help = (
        "the constants that minimise the ablated model's CE (optimal:kl: its KL from the unablated model, as "
        "Li & Janson 2024; +position: one constant per position, for fixed-template tasks), fitted per point on "
        "calibration inputs with Lightning's fit loop (ablation.optimal_* settings)"
    )

    def __init__(self, arg: str = ""):
        super().__init__(arg)
        flags = set(arg.split("+")) if arg else set()
        if not flags <= {"ce", "kl", "position"} or {"ce", "kl"} <= flags:
            raise AblateError(
                f"unknown optimal option '{arg}'; use optimal (CE), optimal:kl, optimal:position or optimal:kl+position"
            )
        self.objective = "kl" if "kl" in flags else "ce"
        self.per_position = "position" in flags
        self.arg = "+".join(f for f in ("kl" if self.objective == "kl" else "", "position" * self.per_position) if f)
        self.constant = not self.per_position

    def check(self, ctx):
        if ctx.sharded:
            raise AblateError(
                "optimal fits constants through the whole model, which is not done under a sharding "
                "strategy here; use ⟨--trainer.strategy ddp⟩ (or auto) for runs with optimal"
            )
        if self.per_position and not ctx.fixed_template:
            raise AblateError(
                f"{self.label} fits one constant per position, which means the same thing in every input only "
                "for a fixed-template task: evaluate ⟨--data ablate_lit.TaskData⟩ rows whose prompts share one "
                "token length, or use optimal without +position"
            )
        ctx.fits.split()  # refuses calibration data too small to hold some windows out

    def replacement(self, ctx, point, mask):
        return {"values": ctx.fits.fitted(point, mask, ctx.stats, self.objective, self.per_position).float()}

    def work(self, ctx, points):
        return [ctx.fits.work(point) for point in points if point.fraction > 0]


METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in sorted(
        (Zero, Mean, Median, Peak, PeakRefined, Optimal, Resample), key=lambda m: METHOD_ORDER.index(m.name)
    )
}
"""Every method by name, in ``common.labels.METHOD_ORDER`` (a method must have its place there)."""
PAPER = ("zero", "mean", "peak")


def parse_method(text: str) -> Method:
    """``name`` or ``name:argument`` (``resample:<source>``, ``peak:eps=E``, ``mean:counterfactual``,
    ``optimal:kl+position``); a bare ``resample`` is refused."""
    label = Label.parse(text)
    name, arg = label.name, label.arg
    if name not in METHODS:
        raise AblateError(
            f"unknown ablation method '{text}'{did_you_mean(name, METHODS)}; use one of: {', '.join(METHODS)} "
            "(resample:<source>, peak:eps=E, "
            "mean:counterfactual, optimal:kl)"
        )
    if name == "resample" and not arg:
        return Resample(arg)  # raises: the source must be named
    if arg and name not in ("resample", "peak", "mean", "optimal"):
        raise AblateError(f"ablation method '{name}' takes no option, got '{text}'")
    return METHODS[name](arg)
