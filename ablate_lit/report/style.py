"""One look for every figure and table title: a colour and marker per method, the same in every
figure; legends in the paper's method order; words that are true of the run (what was scored, how
many seeds, which units were ablated) and the right unit for each metric; panels in a grid that fits
a page, the model named.
"""

from __future__ import annotations

import math
import zlib

from ablate_lit.common.labels import Label, method_rank
from ablate_lit.common.words import counted
from ablate_lit.store.rows import as_rows

METHOD_COLOURS = {
    "zero": "#d62728",
    "mean": "#1f77b4",
    "median": "#17becf",
    "peak": "#2ca02c",
    "peak_refined": "#bcbd22",
    "optimal": "#9467bd",
    "resample:random_chars": "#ff7f0e",
    "resample:random_tokens": "#8c564b",
    "resample:generated": "#e377c2",
    "resample:data": "#7f7f7f",
    "resample:random_pixels": "#ff7f0e",  # (images have no random characters: the same place in the palette)
    "resample:counterfactual": "#111111",
}
"""A method's colour in every figure: by its label without options (``peak:eps=0.05`` is a shade of
``peak``'s, ``mean:counterfactual`` of ``mean``'s, ``optimal:kl`` of ``optimal``'s)."""

METHOD_MARKERS = {
    "zero": "x",
    "mean": "o",
    "median": "v",
    "peak": "s",
    "peak_refined": "D",
    "optimal": "*",
    "resample": "^",
}

UNIT_LINES = {"": "-", "MLP": "--", "heads": ":", "layers": "-."}
"""The line style of what was ablated (the paper's attention neurons: solid)."""

UNABLATED = {"color": "0.35", "ls": (0, (4, 3)), "lw": 1.0}
"""The unablated model's reference line."""


SHADES = ((0.0, 0.35), (1.0, 0.3), (0.0, 0.6), (1.0, 0.55))
"""A method's variants (an option, another objective) in darker or lighter shades of its colour: (mixed
with black 0 or white 1, by how much)."""


FILLS = ("none", "left", "bottom", "top")
"""A variant's markers are hollow or half filled (with its shade, 16 looks in all, fixed by the option)."""


VARIANTS = {"kl": 0, "position": 1, "kl+position": 2, "counterfactual": 0}
"""The known options' places among the variant looks."""


def _variant(arg: str) -> int:
    """Which look a variant gets, from its option alone (so the same in every figure): a known option's
    place; a number (``eps=0.05``) by its place on a ladder of half-octaves, so the widths of one sweep
    differ; another option by a hash."""
    if arg in VARIANTS:
        return VARIANTS[arg]
    _, sep, value = arg.partition("=")
    try:
        return (
            round(2 * math.log2(float(value) / 0.0025)) % (len(SHADES) * len(FILLS))
            if sep
            else zlib.crc32(arg.encode())
        )
    except (ValueError, OverflowError):  # (not a positive finite number)
        return zlib.crc32(arg.encode())


def _shade(colour: str, which: int) -> str:
    """``colour`` mixed with black or white (``SHADES[which]``)."""
    towards, mix = SHADES[which % len(SHADES)]
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 * towards - c) * mix):02x}" for c in (r, g, b))


def method_style(label: str) -> dict:
    """color, marker and ls (line style) of a method label (``peak:eps=0.05 [heads]``), fixed across figures."""
    parsed = Label.parse(label)
    base = parsed.method if parsed.method in METHOD_COLOURS else parsed.name
    colour = METHOD_COLOURS.get(base)
    if colour is None:  # a method beyond the table: a fixed colour from its name
        palette = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]
        colour = palette[sum(map(ord, parsed.name)) % len(palette)]
    look = {"marker": METHOD_MARKERS.get(parsed.name, "o")}
    if base != parsed.method:  # an option of the method: a shade of it (fixed by the option), hollow markers
        code = _variant(parsed.arg)
        colour = _shade(colour, code)
        look["fillstyle"] = FILLS[(code // len(SHADES)) % len(FILLS)]
    return {"color": colour, **look, "ls": UNIT_LINES.get(_unit_kind(parsed), "-.")}


def _unit_kind(label: Label) -> str:
    """What a label ablated, by its first kind's first word (MLP, heads, layers; "" for attention neurons)."""
    return label.kinds[0].split()[0] if label.kinds else ""


def ordered(methods) -> list[str]:
    """Method labels in the paper's order (zero, mean, peak, ..., resample sources), each once."""
    return sorted(dict.fromkeys(methods), key=method_rank)


class Scored:
    """What each point of the rows scored: tokens, masked tokens, images or a task's answers."""

    def __init__(self, rows):
        rows = as_rows(rows)
        families = {r.value("family") for r in rows} - {None}
        if any(r.task is not None for r in rows):
            self.one, self.many, self.task = "answer", "answers", "/".join(sorted({r.task for r in rows if r.task}))
        elif families == {"vision"}:
            self.one, self.many, self.task = "image", "images", None
        elif families == {"masked_lm"}:
            self.one, self.many, self.task = "masked token", "masked tokens", None
        elif families == {"causal_lm"}:
            self.one, self.many, self.task = "token", "scored tokens", None
        else:  # rows read without their run's identity, or of several families
            self.one, self.many, self.task = "token or image", "scored tokens or images", None
        self.counts = sorted({r.n_tokens for r in rows if r.n_tokens is not None})

    def per_point(self) -> str:
        """'765 scored tokens per point', '128 answers of the ioi task per point'."""
        counts = "/".join(map(str, self.counts)) or "?"
        what = self.one if self.counts == [1] else self.many
        return f"{counts} {what}{f' of the {self.task} task' if self.task else ''} per point"


def ylabel(metric: str, scored: Scored) -> str:
    """The axis title of a metric, with its unit."""
    if scored.task:
        return {
            "top1": "answer accuracy (%)",
            "ce": "answer CE (nats per answer)",
            "kl": "KL(unablated || ablated) at the answers (nats)",
            "logit_diff": "logit difference answer - distractor (nats)",
        }[metric]
    return {
        "top1": "Top1 accuracy (%)",
        "ce": f"cross-entropy (nats per {scored.one})",
        "kl": f"KL(unablated || ablated) (nats per {scored.one})",
    }[metric]


def units_ablated(labels) -> str:
    """The x axis: what was ablated, in the rows' own words."""
    kinds = {_unit_kind(Label.parse(m)) for m in labels}
    if kinds <= {""}:
        return "neurons ablated (%)"
    if kinds == {"heads"}:
        return "heads ablated (%)"
    return "units ablated (%), as the legend says"  # (attention neurons; [heads]; [MLP] neurons)


def seeds_words(n_seeds: int) -> str:
    """'1 seed' or '3 seeds, band: ± one std over seeds' (a band is drawn only with several seeds)."""
    return counted(n_seeds, "seed") + (", band: ± one std over seeds" if n_seeds > 1 else "")


def grid(n: int, width: float = 4.6, height: float = 3.5, columns: int | None = None):
    """A figure of ``n`` panels in a grid at most three wide (two for four panels), fitting a page; the
    axes of the panels, in reading order (unused cells hidden)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns or (2 if n == 4 else min(n, 3))
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(width * columns, height * rows + 0.6), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def legend_below(fig, axes, columns: int | None = None) -> None:
    """One legend for every panel, below them (never over a curve), in the order the lines were drawn."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if labels:
        fig.legend([handles[label] for label in labels], labels, loc="outside lower center", fontsize=8,
                   ncol=columns or min(len(labels), 4), frameon=False)  # fmt: skip


def save(fig, path) -> object:
    """A PNG at ``path`` (110 dpi); the figure is closed."""
    fig.savefig(path, dpi=110)
    close(fig)
    return path


def close(fig) -> None:
    """Free a figure (pyplot keeps every figure it made until it is closed)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
