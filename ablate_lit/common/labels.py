"""Typed values that every stage passes around: a point of the schedule, how a fraction is keyed
and printed, and the label of a method together with what it ablated.

A label is written ``method [what, ...]`` in tables and figures (``mean``, ``peak [MLP]``,
``zero [heads, layers 0;5, by std]``); ``Label`` formats and parses it, so no caller splits strings.
"""

from __future__ import annotations

from dataclasses import dataclass

FRACTION_DIGITS = 6

IGNORE_INDEX = -100
"""The label of a position (or image) that is not scored: the data writes it, the metrics skip it."""


def fraction_key(fraction: float) -> float:
    """A fraction as results store and compare it: rounded to 6 decimals (0.1*3 and 0.3 are one point)."""
    return round(float(fraction), FRACTION_DIGITS)


def percent(fraction: float) -> int:
    """The whole percentage a fraction is shown as (0.25 -> 25), in progress lines, tables and TensorBoard steps."""
    return round(100 * float(fraction))


def pct(fraction: float) -> str:
    """``percent`` with its sign: ``25%``."""
    return f"{percent(fraction)}%"


NO_TARGET = "-"
"""The ``target`` of a row of the nested schedule: a random set, not one unit."""


def target_name(layer: int, head: int | None = None, neuron: int | None = None) -> str:
    """The unit a single-unit row ablates: ``L3.H5`` (head 5 of layer 3), ``L3.N17`` (neuron 17 of layer
    3) or ``L3`` (all of layer 3)."""
    if neuron is not None:
        return f"L{layer}.N{neuron}"
    return f"L{layer}" if head is None else f"L{layer}.H{head}"


def parse_target(text: str) -> tuple[int, int | None]:
    """(layer, the head's or neuron's index, or None for a whole layer) of a ``target_name``."""
    layer, _, index = str(text).removeprefix("L").partition(".")
    return int(layer), (int(index[1:]) if index else None)


def unit_names(layers: list[int], width: int, unit_size: int) -> list[str]:
    """The names of the units of ``layers`` (``width`` neurons each), ``unit_size`` neurons a unit: every
    neuron (1), head (head_dim) or whole layer (``width``), in layer order."""
    if unit_size == width:
        return [target_name(layer) for layer in layers]
    if unit_size == 1:
        return [target_name(layer, neuron=n) for layer in layers for n in range(width)]
    return [target_name(layer, h) for layer in layers for h in range(width // unit_size)]


def target_kind(text: str) -> str:
    """layer, head or neuron: what a ``target_name`` names."""
    index = str(text).partition(".")[2]
    return {"H": "head", "N": "neuron"}[index[0]] if index else "layer"


@dataclass(frozen=True)
class Point:
    """One evaluation; ``rows`` lists the (method, seed) result rows it stands for. ``target`` names
    the one unit ablated alone (the single-unit schedule), or is ``-`` (a nested random set)."""

    fraction: float
    method: str  # a method label, or "baseline" at 0%
    seed: int  # the seed whose neuron set is ablated
    rows: tuple[tuple[str, int], ...]
    target: str = NO_TARGET

    def keys(self) -> list[tuple[str, int, float, str]]:
        """The store keys of the rows this evaluation writes."""
        return [(m, int(s), fraction_key(self.fraction), self.target) for m, s in self.rows]

    @property
    def claim_name(self) -> str:
        seed = f"__s{self.seed}" if 0.0 < self.fraction < 1.0 else ""
        unit = f"__{self.target}" if self.target != NO_TARGET else ""
        return f"{self.method}{unit}{seed}__f{self.fraction:.6f}"

    def describe(self) -> str:
        """``mean 50% (seed 0)``, as progress lines name a point (``mean L3.H5`` for one unit)."""
        if self.target != NO_TARGET:
            return f"{self.method} {self.target}"
        return f"{self.method} {pct(self.fraction)} (seed {self.seed})"


@dataclass(frozen=True)
class PointGroup:
    """Points of one neuron set (a seed and fraction), each of another method (``entries``): evaluated
    together, batch by batch, each method in its own copy of the batch (``maps.step.AblationsStep``)."""

    entries: tuple[Point, ...]
    method = "methods"
    target = NO_TARGET

    @property
    def seed(self) -> int:
        return self.entries[0].seed

    @property
    def fraction(self) -> float:
        return self.entries[0].fraction

    @property
    def rows(self) -> tuple[tuple[str, int], ...]:
        return tuple(row for e in self.entries for row in e.rows)

    def keys(self) -> list[tuple[str, int, float, str]]:
        return [k for e in self.entries for k in e.keys()]

    @property
    def claim_name(self) -> str:
        seed = f"__s{self.seed}" if 0.0 < self.fraction < 1.0 else ""
        return f"methods__{'_'.join(e.method for e in self.entries)}{seed}__f{self.fraction:.6f}"

    def describe(self) -> str:
        return f"{', '.join(e.method for e in self.entries)} {pct(self.fraction)} (seed {self.seed})"


@dataclass(frozen=True)
class UnitGroup:
    """The units of one layer, each ablated alone by each method (``entries``): evaluated together,
    batch by batch, from one unablated forward pass (``maps.step``)."""

    layer: int
    entries: tuple[Point, ...]
    method = "units"
    seed = 0
    fraction = 0.0
    target = NO_TARGET

    @property
    def rows(self) -> tuple[tuple[str, int], ...]:
        return tuple(row for e in self.entries for row in e.rows)

    def keys(self) -> list[tuple[str, int, float, str]]:
        return [k for e in self.entries for k in e.keys()]

    @property
    def claim_name(self) -> str:
        return f"units__L{self.layer}"

    def describe(self) -> str:
        return f"layer {self.layer}'s {len(self.entries)} single-unit evaluations"


METHOD_ORDER = ("zero", "mean", "median", "peak", "peak_refined", "optimal", "resample")
"""The methods in the order of the paper's tables (then those beyond it): every table, legend and list
of methods follows it (``ablation.methods.METHODS`` is registered in it)."""


@dataclass(frozen=True)
class Label:
    """A method label, parsed once: the method (``peak:eps=0.04``: its name and option) and what it
    ablated where that is not the paper's (attention neurons of every layer, drawn at random per layer):
    ``Label("mean", ("MLP",))`` is written ``mean [MLP]``."""

    method: str
    kinds: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.method + self.suffix

    @property
    def name(self) -> str:
        """The method's name: ``peak`` of ``peak:eps=0.04``."""
        return self.method.partition(":")[0]

    @property
    def arg(self) -> str:
        """What follows ``name:``: ``eps=0.04`` of ``peak:eps=0.04`` (empty if nothing)."""
        return self.method.partition(":")[2]

    def option(self, key: str) -> str | None:
        """The value of the method's ``key=value`` option: ``0.04`` for ``eps`` of ``peak:eps=0.04``."""
        name, sep, value = self.arg.partition("=")
        return value if sep and name == key else None

    @property
    def suffix(self) -> str:
        """What was ablated, as written after the method (`` [MLP]``; empty for the paper's units)."""
        return f" [{', '.join(self.kinds)}]" if self.kinds else ""

    @classmethod
    def parse(cls, text: str) -> Label:
        method, sep, rest = str(text).strip().partition(" [")
        kinds = tuple(k.strip() for k in rest.rstrip("]").split(",")) if sep else ()
        return cls(method, kinds)

    def with_method(self, method: str) -> Label:
        """The same units ablated by another method (``peak [MLP]`` -> ``mean [MLP]``)."""
        return Label(method, self.kinds)


def method_rank(text: str) -> tuple[int, int, str]:
    """Where a method label sorts: by its method's place in METHOD_ORDER (zero, mean, ..., resample),
    resample sources in the paper's order (random_chars, random_tokens, generated, then data, ...), then
    by the label (``peak`` before ``peak:eps=0.05``; ``mean [heads]`` ranks as ``mean``)."""
    from ablate_lit.common.families import RESAMPLE_SOURCES

    label = Label.parse(text)
    name, arg = label.name, label.arg
    source = RESAMPLE_SOURCES.index(arg) if name == "resample" and arg in RESAMPLE_SOURCES else len(RESAMPLE_SOURCES)
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), source, str(text))
