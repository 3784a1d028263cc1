"""The one line a run prints about where its neurons are: how many layers and units, at which
module, how the place was found and whether it was checked against the attention output."""

from __future__ import annotations

import re

from ablate_lit.families.base import PreOut


def _pattern(name: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.)", "*", name)


def describe(pre_outs: list[PreOut], layout_source: str, unhooked: list[str]) -> str:
    """One line: how many layers and neurons are hooked, where, and how the place was found."""
    p = pre_outs[0]
    names = list(dict.fromkeys(q.name for q in pre_outs))
    where = names[0] if len(names) == 1 else ", ".join(dict.fromkeys(_pattern(n) for n in names))
    shared = f", one module applied {p.n_applications} times" if p.shared else ""
    if p.site == "mlp":
        between = "" if p.direct else f", the input of a {type(p.module).__name__} before the output projection"
        return (
            f"MLP hidden units: {len(pre_outs)} layers x {p.width} neurons each, at {where}{between}{shared} "
            "(checked against the intermediate size and on a forward pass)"
        )
    between = "" if p.direct else f", the input of a {type(p.module).__name__} between the heads and the out-projection"
    checked = sum(q.verified for q in pre_outs)
    n = len(pre_outs)
    checked = (
        ", checked equal to the attention output"
        if checked == n
        else ", not checked against the attention output (it runs no scaled_dot_product_attention)"
        if not checked
        else f", {checked} of {n} layers checked equal to the attention output (the others run no "
        "scaled_dot_product_attention)"
    )
    others = (
        f"; not ablated: {len(unhooked)} attention module(s) outside these blocks "
        f"({', '.join(unhooked[:2])}{', ...' if len(unhooked) > 2 else ''})"
        if unhooked
        else ""
    )
    return (
        f"pre-outs: {len(pre_outs)} layers x {p.n_heads} heads x {p.head_dim} = {p.width} neurons each, at "
        f"{where}{between}{shared} ({layout_source}{checked}){others}"
    )
