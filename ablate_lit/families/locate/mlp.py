"""MLP neurons: the hidden units after the activation function, i.e. the input of each block's MLP
output (down) projection, ``[batch, pos, intermediate_size]`` (gated MLPs: ``act(gate) * up``).

In each block that holds the attention pre-outs, the MLP output projection is ``--model.mlp_proj``
(a path inside a block), else the one projection outside the attention module named like an MLP
output (``down_proj``, ``fc2``, ``c_proj``, ``dense_4h_to_h``, ``fc_out``, ``lin2``, ``Wo``,
``ffn_output``, ``output.dense``, ...). Its input width must equal the intermediate size the config
states, or, where it states none (timm), the output width of an up projection of the same block.
Mixture-of-experts blocks are refused: their hidden units belong to routed experts, not to the block.
The forward-pass check (``families.locate.trace``) then accepts as the producer of the hooked value only an
activation function or tensor operations (the gate's product); a norm in between moves the hook to
the norm's input, anything else is refused.
"""

from __future__ import annotations

import re

from torch import nn

from ablate_lit.common.errors import AblateError
from ablate_lit.families.locate.layout import attention_modules
from ablate_lit.sites.pre_out import PreOut, input_width, is_projection

MLP_OUT_NAMES = (
    "down_proj",
    "fc2",
    "dense_4h_to_h",
    "fc_out",
    "lin2",
    "ffn_output",
    "c_proj",
    "wo",
    "w2",
    "output.dense",
)
"""Names of MLP output projections (the last path components), most specific first."""
INTERMEDIATE = ("intermediate_size", "ffn_dim", "n_inner", "hidden_dim", "d_ff", "encoder_ffn_dim", "ffn_hidden_size")
MOE = re.compile(r"moe|expert|sparse", re.IGNORECASE)


def output_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[1]
    return None


def _outside_attention(block: nn.Module) -> list[tuple[str, nn.Module]]:
    inside = [p for p, _ in attention_modules(block)]
    return [
        (p, m)
        for p, m in block.named_modules()
        if p and is_projection(m) and not any(p == a or p.startswith(a + ".") for a in inside)
    ]


def discover_mlp_proj(block: nn.Module) -> str:
    projections = [p for p, _ in _outside_attention(block)]
    for name in MLP_OUT_NAMES:
        hits = [p for p in projections if p.lower() == name or p.lower().endswith("." + name)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            break
    raise AblateError(
        f"cannot tell which projection of a {type(block).__name__} block is its MLP output projection "
        f"({', '.join(projections) or 'none outside the attention'}); pass ⟨--model.mlp_proj⟩ PATH (inside a block)"
    )


def _intermediate(config, block: nn.Module, width: int | None) -> tuple[int | None, str]:
    """The intermediate size the config states (where it is the width), else the width an up projection
    of the block confirms (timm states none; DINOv2's config states one its MLP does not use)."""
    stated = None
    for name in INTERMEDIATE:
        value = getattr(config, name, None) if config is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            stated = (value, f"{type(config).__name__}.{name}")
            break
    if stated and (width is None or stated[0] == width):
        return stated
    ups = {output_width(m) for _, m in _outside_attention(block)}
    if width is not None and (width in ups or 2 * width in ups):  # an up projection (fused gate + up: twice as wide)
        return width, "the width of an up projection of the block"
    return stated or (None, "")


def locate_mlp(model: nn.Module, config, attention: list[PreOut], mlp_proj: str | None = None) -> list[PreOut]:
    """The MLP hook point of every block that holds one of ``attention``'s pre-outs (in block order;
    a shared block once: the trace turns its applications into layers)."""
    names = {id(m): n for n, m in model.named_modules()}
    blocks = list({id(p.block): p.block for p in attention}.values())
    found = []
    for i, block in enumerate(blocks):
        block_path = names.get(id(block), f"block {i}")
        inside = [p for p, _ in attention_modules(block)]
        experts = [
            p
            for p, m in block.named_modules()
            if p and MOE.search(type(m).__name__) and not any(p == a or p.startswith(a + ".") for a in inside)
        ]
        if experts:
            raise AblateError(
                f"{block_path} is a mixture-of-experts block ({experts[0]}): its MLP units belong to routed "
                "experts, not to the block; use ⟨--ablation.site⟩ attn"
            )
        path = mlp_proj or discover_mlp_proj(block)
        try:
            proj = block.get_submodule(path)
        except AttributeError:
            raise AblateError(
                f"block {block_path} has no module '{path}'; pass ⟨--model.mlp_proj⟩ PATH (inside a block)"
            ) from None
        width = input_width(proj)
        stated, source = _intermediate(config, block, width)
        where = f"{block_path}.{path}"
        if stated is None:
            raise AblateError(
                f"cannot check {where} against an intermediate size (none stated, no up projection of its "
                "input width); pass ⟨--model.mlp_proj⟩ PATH naming the MLP output projection"
            )
        if width is not None and width != stated:
            raise AblateError(
                f"{where} takes {width} inputs, but {source} = {stated}: it is not the MLP output projection; "
                "pass ⟨--model.mlp_proj⟩ PATH (inside a block)"
            )
        found.append(PreOut(len(found), where, proj, proj, 1, stated, block, site="mlp"))
    return found
