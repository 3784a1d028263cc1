"""Fold mode: a point's constant replacement written into each out-projection's weights and bias."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ablate_lit.families.loading.quantization import is_quantized_weight
from ablate_lit.sites.pre_out import PreOut


def why_not_foldable(pre_outs: Sequence[PreOut]) -> str | None:
    """Why a point's constants cannot be written into these out-projections' weights (None: they can);
    fold mode and ``export`` both ask."""
    if any(is_quantized_weight(p.proj.weight) for p in pre_outs):
        return "its out-projections are stored quantized"
    if not all(p.direct for p in pre_outs):
        return "a norm sits between the heads and the out-projection"
    if any(p.shared for p in pre_outs):
        return "its layers share weights"
    return None


@contextmanager
def folded(pre_outs: Sequence[PreOut], mask: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """Ablate by editing each out-projection instead of hooking it (constant methods only).

    For y = W x + b with neurons S fixed to c_S: y = W[:, ~S] x[~S] + (b + W[:, S] c_S). The columns
    S of W are zeroed and W[:, S] c_S (computed in float64) is added to the bias; a layer without a
    bias gets one for the duration. Only the ablated columns and the bias are saved, and everything
    is restored in ``finally``. Equal to the hook up to float rounding (the sum runs in another
    order), and free at run time.
    """
    saved = []
    try:
        _fold(pre_outs, mask, values, saved)  # (fills ``saved`` as it goes: a failure restores what it did)
        yield
    finally:
        with torch.no_grad():
            for module, dim, idx, cols, b in saved:
                module.weight.index_copy_(dim, idx, cols)
                if b is None:
                    module.bias = None
                else:
                    module.bias.copy_(b)


def _fold(pre_outs: Sequence[PreOut], mask: torch.Tensor, values: torch.Tensor, saved: list) -> None:
    """Zero the ablated input columns of each out-projection and add their constant's contribution to
    its bias (created where there is none); ``saved`` gets what ``folded`` restores."""
    if why := why_not_foldable(pre_outs):
        raise ValueError(f"cannot fold the constants into the out-projections: {why}")
    for p in pre_outs:
        w = p.proj.weight
        idx = mask[p.layer].to(w.device).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        dim = 0 if type(p.proj).__name__ == "Conv1D" else 1  # input axis: GPT-2's Conv1D stores [in, out]
        cols = w.index_select(dim, idx)  # a copy: the original weights of the ablated inputs, restored on exit
        shift = (
            (cols.t() if dim == 0 else cols).to(torch.float64)
            @ values[p.layer].to(device=w.device, dtype=torch.float64)[idx]
        ).to(w.dtype)
        bias = p.proj.bias
        saved.append((p.proj, dim, idx, cols, None if bias is None else bias.detach().clone()))
        with torch.no_grad():
            w.index_fill_(dim, idx, 0)
            if bias is None:
                p.proj.bias = torch.nn.Parameter(shift, requires_grad=False)
            else:
                bias.add_(shift)


def fold_into(pre_outs: Sequence[PreOut], mask: torch.Tensor, values: torch.Tensor) -> list[int]:
    """``folded``'s edit, kept (an exported model): returns the layers whose out-projection got a new bias."""
    had = {p.layer: p.proj.bias is not None for p in pre_outs}
    _fold(pre_outs, mask, values, [])
    for p in pre_outs:
        if not had[p.layer] and p.proj.bias is not None and not bool(p.proj.bias.any()):
            p.proj.bias = None  # zero constants need no bias
    return [p.layer for p in pre_outs if not had[p.layer] and p.proj.bias is not None]
