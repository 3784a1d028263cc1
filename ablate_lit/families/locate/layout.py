"""Where each layer's attention output projection is: the user's paths, a tested entry, or the structure.

TransformerLens keeps one adapter per architecture and nnsight leaves the paths to the user; here a
model gets, in this order:
  given       ``--model.blocks PATH`` / ``--model.out_proj PATH`` (either or both);
  tested      the entry of its ``model_type`` in the family's table (every entry has a test);
  discovered  by structure, for every other model:
    blocks    the innermost ModuleList/Sequential whose every element holds exactly one attention
              module (a module whose class name says attention/attn and that holds a projection);
              several such lists that differ only in an index (the stages of Swin) are concatenated;
    out_proj  inside that attention module, the one projection (Linear or Conv1D) named like an
              output projection (o_proj, out_proj, c_proj, out_lin, Wo, proj, dense, ...).
Then, for every answer: n_heads is read from the attention module or the config, head_dim from the
attention module or the config where either states it (derived as hidden / n_heads only when
neither does), and the projection's input width must equal n_heads * head_dim. Anything that does
not resolve to exactly one answer is refused in one line naming the options that settle it.
``families.locate.trace`` then checks the answer on a real forward pass (hooked value = the heads' output).
"""

from __future__ import annotations

import re

from torch import nn

from ablate_lit.common.errors import AblateError
from ablate_lit.sites.pre_out import Architecture, PreOut, get_submodule, input_width, is_projection

ATTENTION = re.compile(r"attention|attn", re.IGNORECASE)
RECURRENT = re.compile(r"rwkv|mamba|ssm|timemix|retention|hyena|xlstm|recurren|rglru", re.IGNORECASE)
"""Class names of token mixers that are not attention (RWKV's time mixing is named RwkvSelfAttention)."""
MIXER = re.compile(r"attention|mix|ssm|retention|recurren|hyena|rglru", re.IGNORECASE)
NORM = re.compile(r"norm(\d*d)?(gated)?$", re.IGNORECASE)
"""Class names of normalisations: LayerNorm, Qwen3RMSNorm, GroupNorm, BatchNorm2d, RMSNormGated, ..."""
OUT_NAMES = ("o_proj", "out_proj", "c_proj", "out_lin", "wo", "proj", "dense", "out", "o")
"""Names of output projections, most specific first."""
HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
HEAD_DIM = ("v_head_dim", "val_dim", "head_dim", "attention_head_size", "head_size", "d_head", "dim_head")
"""The width of one head's *output* first: in multi-head latent attention (DeepSeek-V2/V3) head_dim is
the rotary part of the queries and keys, and the heads' output has n_heads x v_head_dim values; timm
LeViT's heads output val_dim values each (its key_dim is the width of queries and keys)."""
HIDDEN = ("hidden_size", "n_embd", "d_model", "embed_dim", "dim")
OPTIONS = "⟨--model.blocks PATH⟩ (the list of transformer blocks) and ⟨--model.out_proj PATH⟩ (inside a block)"


ACTIVATION = re.compile(r"gelu|relu|silu|swish|tanh|sigmoid|activation|mish|softplus|glu|hardswish|act$", re.IGNORECASE)


def is_activation(module: nn.Module) -> bool:
    return bool(ACTIVATION.search(type(module).__name__))


def is_norm(module: nn.Module) -> bool:
    return bool(NORM.search(type(module).__name__))


QUERY = re.compile(r"^(q|q_proj|query|query_proj|q_lin|wq|qkv|c_attn|wqkv|query_key_value|in_proj)$", re.IGNORECASE)
"""Names of a query projection (or of one that computes queries, keys and values together)."""


def _has_query(module: nn.Module) -> bool:
    return any(QUERY.match(name.rsplit(".", 1)[-1]) and is_projection(m) for name, m in module.named_modules())


def is_attention(module: nn.Module) -> bool:
    """An attention module: its class name says so, and it holds a projection. A class named like a
    recurrence (RWKV's RwkvSelfAttention, Mamba's mixers) is attention only if it projects queries: the
    name of a hybrid model (RecurrentGemma) must not hide the softmax attention of its attention layers."""
    name = type(module).__name__
    return (
        bool(ATTENTION.search(name))
        and (not RECURRENT.search(name) or _has_query(module))
        and not is_norm(module)
        and not is_projection(module)
        and any(is_projection(m) for m in module.modules())
    )


def attention_modules(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost attention modules inside ``block`` (path, module), in registration order."""
    found: list[tuple[str, nn.Module]] = []
    for path, module in block.named_modules():
        if path and not any(path.startswith(p + ".") for p, _ in found) and is_attention(module):
            found.append((path, module))
    return found


def _index_pattern(path: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", path)


def _no_attention(model: nn.Module) -> None:
    """Refuse, saying why, a model whose token mixing ablate_lit cannot hook: no attention at all (RWKV,
    Mamba), or attention whose projections are not Linear layers (SqueezeBERT's 1x1 convolutions)."""
    name = type(model).__name__
    if any(is_attention(m) for m in model.modules()):
        return
    recurrent = sorted({type(m).__name__ for m in model.modules() if RECURRENT.search(type(m).__name__)})
    mixers = [c for c in recurrent if MIXER.search(c)] or recurrent
    if mixers:
        raise AblateError(
            f"{name} has no attention heads: its layers mix tokens with {', '.join(mixers[:3])} (a recurrence or "
            "state-space scan, not attention); ablate_lit ablates the heads' output of attention layers and "
            "cannot run this model"
        )
    named = [m for m in model.modules() if ATTENTION.search(type(m).__name__) and not is_norm(m)]
    kinds = sorted({type(c).__name__ for m in named for c in m.modules() if isinstance(c, nn.modules.conv._ConvNd)})
    if kinds:
        raise AblateError(
            f"{name}'s attention ({type(named[0]).__name__}) projects with {', '.join(kinds)} over channels-first "
            "tensors [batch, channels, pos], not with Linear layers; ablate_lit hooks the [batch, pos, heads x "
            "head_dim] input of a Linear out-projection and cannot hook this layout"
        )


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _hybrid(model: nn.Module) -> None:
    """Refuse, saying so, a model whose layers mix tokens with attention in some layers and otherwise in
    the others (RecurrentGemma: local attention every third layer, a recurrence in the rest)."""
    for path, layers in model.named_modules():
        if not isinstance(layers, (nn.ModuleList, nn.Sequential)) or len(layers) < 2:
            continue
        counts = [len(attention_modules(block)) for block in layers]
        if max(counts) != 1 or min(counts) != 0:
            continue
        attention = [i for i, n in enumerate(counts) if n]
        found = [attention_modules(layers[i])[0] for i in attention]
        kinds = sorted({type(m).__name__ for _, m in found})
        places = {place for place, _ in found}  # where attention sits in its blocks: what the others hold there
        others = sorted(
            {
                type(block.get_submodule(place)).__name__
                for i, block in enumerate(layers)
                if not counts[i]
                for place in places
                if _has_submodule(block, place)
            }
        )
        listed = ", ".join(str(i) for i in attention[:6]) + (", ..." if len(attention) > 6 else "")
        raise AblateError(
            f"{type(model).__name__} is a hybrid: {len(attention)} of the {len(layers)} layers in {path} (layer "
            f"{listed}) hold softmax attention ({', '.join(kinds)}), the others mix tokens with "
            f"{', '.join(others[:3]) or 'something else'} there; ablate_lit ablates attention heads in every "
            "layer of the blocks it is given, so it cannot run this model"
        )


def discover_blocks(model: nn.Module) -> list[str]:
    """Paths of the innermost lists of blocks each holding one attention module (several: stages)."""
    lists = [
        path
        for path, m in model.named_modules()
        if path
        and isinstance(m, (nn.ModuleList, nn.Sequential))
        and len(m) > 0
        and all(len(attention_modules(b)) == 1 for b in m)
    ]
    innermost = [p for p in lists if not any(q.startswith(p + ".") for q in lists)]
    if not innermost:
        _no_attention(model)
        _hybrid(model)
        raise AblateError(
            f"found no list of transformer blocks with one attention module each in {type(model).__name__}; "
            f"pass {OPTIONS}"
        )
    if len({_index_pattern(p) for p in innermost}) > 1:
        raise AblateError(
            f"{type(model).__name__} holds several lists of attention blocks ({', '.join(innermost)}); "
            "choose one with ⟨--model.blocks⟩ PATH"
        )
    return innermost


def discover_out_proj(block: nn.Module) -> str:
    """Path, inside ``block``, of its attention module's output projection."""
    attentions = attention_modules(block)
    if len(attentions) != 1:
        found = ", ".join(p for p, _ in attentions) or "none"
        raise AblateError(
            f"a {type(block).__name__} block holds {len(attentions)} attention modules ({found}); "
            "pass ⟨--model.out_proj⟩ PATH (inside a block)"
        )
    attn_path, attn = attentions[0]
    projections = [p for p, m in attn.named_modules() if p and is_projection(m)]
    for name in OUT_NAMES:
        hits = [p for p in projections if p.rsplit(".", 1)[-1].lower() == name]
        if len(hits) == 1:
            return f"{attn_path}.{hits[0]}"
        if hits:
            break
    for name in OUT_NAMES:  # a container named like an output projection (timm LeViT: proj = act + linear + norm)
        hits = [c for c, m in attn.named_children() if c.lower() == name and any(map(is_projection, m.modules()))]
        if len(hits) == 1:
            return f"{attn_path}.{hits[0]}"
    raise AblateError(
        f"cannot tell which projection of {type(attn).__name__} ({', '.join(projections)}) is its output "
        f"projection; pass ⟨--model.out_proj⟩ PATH (inside a block, e.g. {attn_path}.<name>)"
    )


def _stated(objects: list, names: tuple[str, ...]) -> tuple[int | None, str]:
    """The first positive int attribute among ``objects`` (in order), and where it was read."""
    for obj in objects:
        for name in names:
            value = getattr(obj, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, f"{type(obj).__name__}.{name}"
    return None, ""


def head_layout(config, attention: nn.Module, width: int | None, where: str, given: int | None = None):
    """(n_heads, head_dim) stated by the attention module or the config (head_dim: ``given`` by the user
    where set), checked against ``width``."""
    modules, configs = list(attention.modules()), [c for c in (config,) if c is not None]
    n_heads, heads_from = _stated(modules + configs, HEADS)
    if n_heads is None:
        raise AblateError(
            f"cannot read the number of attention heads of {where} from {type(attention).__name__} or the "
            f"config; pass {OPTIONS} pointing at a standard attention module"
        )
    head_dim, dim_from = (given, "⟨--model.head_dim⟩") if given else _stated(modules + configs, HEAD_DIM)
    if head_dim is None:  # stated nowhere: derived from the residual width, never from the checked width itself
        hidden, hidden_from = _stated(configs + modules, HIDDEN)
        if hidden is not None and hidden % n_heads == 0:
            head_dim, dim_from = hidden // n_heads, f"{hidden_from} / heads"
        elif width is not None and width % n_heads == 0:
            head_dim, dim_from = width // n_heads, "input width / heads"
        else:
            raise AblateError(
                f"cannot read head_dim of {where} ({n_heads} heads, width {width}); pass ⟨--model.head_dim N⟩ "
                f"(the width of one head's output) or {OPTIONS}"
            )
    if width is not None and width != n_heads * head_dim:
        raise AblateError(
            f"{where} takes {width} inputs, but {heads_from} = {n_heads} heads x {dim_from} = {head_dim} "
            f"gives {n_heads * head_dim}: it is not the heads' output projection; pass {OPTIONS}, or "
            f"⟨--model.head_dim N⟩ where the heads' width is stated under another name"
        )
    return n_heads, head_dim


def _blocks_at(model: nn.Module, path: str) -> list[nn.Module]:
    try:
        found = model.get_submodule(path)
    except AttributeError:
        raise AblateError(
            f"⟨--model.blocks⟩ '{path}' is not a module of {type(model).__name__}; "
            f"pass the path of its list of transformer blocks (e.g. model.layers)"
        ) from None
    if not isinstance(found, (nn.ModuleList, nn.Sequential)):
        raise AblateError(
            f"⟨--model.blocks⟩ '{path}' is a {type(found).__name__}, not a list of blocks (ModuleList or Sequential)"
        )
    return list(found)


def locate(
    model: nn.Module,
    config,
    known: Architecture | None = None,
    blocks: str | None = None,
    out_proj: str | None = None,
    head_dim: int | None = None,
) -> tuple[list[PreOut], str]:
    """Every layer's pre-out, in block order, and how it was found ("given", "tested" or "discovered")."""
    how = "given" if blocks or out_proj else "tested" if known else "discovered"
    if blocks:
        lists = [blocks]
    elif known and get_submodule(model, known.layers):
        lists = [get_submodule(model, known.layers)[0]]
    else:
        lists = discover_blocks(model)
        how = "given" if out_proj else "discovered"
    found = [(f"{path}.{i}", block) for path in lists for i, block in enumerate(_blocks_at(model, path))]
    if not found:
        raise AblateError(f"'{lists[0]}' holds no transformer blocks to ablate")
    first = found[0][1]
    if out_proj:
        path = out_proj
    elif known and how == "tested" and get_submodule(first, known.out_proj):
        path = get_submodule(first, known.out_proj)[0]
    else:
        path = discover_out_proj(first)
        how = "given" if blocks else "discovered"
    pre_outs = []
    for i, (block_path, block) in enumerate(found):
        try:
            proj = block.get_submodule(path)
        except AttributeError:
            raise AblateError(
                f"block {block_path} has no module '{path}' (blocks of several kinds, as in a hybrid of "
                f"attention and other layers?); pass {OPTIONS}"
            ) from None
        attention = next((m for p, m in attention_modules(block) if path.startswith(p + ".")), None)
        parent = block.get_submodule(path.rsplit(".", 1)[0]) if "." in path else block
        name = f"{block_path}.{path}"
        n_heads, dim = head_layout(config, attention or parent, input_width(proj), name, head_dim)
        pre_outs.append(PreOut(i, name, proj, proj, n_heads, dim, block))
    widths = sorted({p.width for p in pre_outs})
    if len(widths) > 1:
        raise AblateError(
            f"the layers' widths differ ({', '.join(map(str, widths))}) across {', '.join(lists)}: ablate_lit "
            f"compares neurons of layers of one width; choose blocks of one width with ⟨--model.blocks⟩ "
            f"(e.g. {lists[-1]})"
        )
    return pre_outs, how
