"""The one line a run prints about where its neurons are: how many layers and units, at which
module, how the place was found and whether it was checked against the attention output."""

from __future__ import annotations

import re

from ablate_lit.common.errors import AblateError, render
from ablate_lit.common.words import counted
from ablate_lit.sites.pre_out import PreOut


def _pattern(name: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.)", "*", name)


def describe(pre_outs: list[PreOut], layout_source: str, unhooked: list[str], changed: list[str] = ()) -> str:
    """One line: how many layers and neurons are hooked, where, and how the place was found. ``changed``:
    what the check pass changed in the model (BigBird's switch to full attention), so the check was
    earned on that pass's attention rather than on the attention the run scores."""
    p = pre_outs[0]
    names = list(dict.fromkeys(q.name for q in pre_outs))
    where = names[0] if len(names) == 1 else ", ".join(dict.fromkeys(_pattern(n) for n in names))
    shared = f", one module applied {p.n_applications} times" if p.shared else ""
    if p.site == "mlp":
        between = "" if p.direct else f", the input of a {type(p.module).__name__} before the output projection"
        return (
            f"MLP hidden units: {counted(len(pre_outs), 'layer')} x {counted(p.width, 'neuron')} each, at "
            f"{where}{between}{shared} "
            "(checked against the intermediate size and on a forward pass)"
        )
    between = "" if p.direct else f", the input of a {type(p.module).__name__} between the heads and the out-projection"
    unchecked = [q for q in pre_outs if not q.verified]
    checked = (
        ", checked equal to the attention output"
        + (f" of the check pass, which ran with {changed[0]} changed (restored for the run)" if changed else "")
        if not unchecked
        else f", {_layers(unchecked, pre_outs)} not checked against the attention output: {unchecked[0].unchecked}; "
        + render("ablated as ⟨--model.allow_unchecked true⟩ allows")
    )
    others = (
        f"; not ablated: {len(unhooked)} attention module(s) outside these blocks "
        f"({', '.join(unhooked[:2])}{', ...' if len(unhooked) > 2 else ''})"
        if unhooked
        else ""
    )
    return (
        f"pre-outs: {counted(len(pre_outs), 'layer')} x {counted(p.n_heads, 'head')} x {p.head_dim} = "
        f"{counted(p.width, 'neuron')} each, at "
        f"{where}{between}{shared} ({layout_source}{checked}){others}"
    )


def _layers(some: list[PreOut], pre_outs: list[PreOut]) -> str:
    if len(some) == len(pre_outs):
        return "the one layer" if len(some) == 1 else f"all {len(pre_outs)} layers"
    listed = ", ".join(str(q.layer) for q in some[:4]) + (", ..." if len(some) > 4 else "")
    return f"{len(some)} of {len(pre_outs)} layers (layer {listed})"


def check_unchecked(pre_outs: list[PreOut], allowed: bool) -> None:
    """Refuse attention layers whose hook place could not be checked against the attention output,
    unless the user allows it."""
    unchecked = [q for q in pre_outs if q.site == "attn" and not q.verified]
    if unchecked and not allowed:
        q = unchecked[0]
        raise AblateError(
            f"{_layers(unchecked, pre_outs)} at {_pattern(q.name)} could not be checked to receive the attention "
            f"heads' output: {q.unchecked}; pass ⟨--model.out_proj PATH⟩ naming the module that receives the heads' "
            f"output, or ⟨--model.allow_unchecked true⟩ to ablate the input of {_pattern(q.name)} as it is"
        )
