"""Declarative architecture mappings and the lookup of each layer's attention out-projection.

The *pre-out* of a layer is the input of its attention output projection (TransformerLens
``hook_z`` flattened): ``[batch, pos, n_heads * d_head]``. Ablation hooks sit on that input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ablate_lit.errors import AblateError


@dataclass(frozen=True)
class Architecture:
    """Where the pre-out lives in one architecture (a small mapping, as in TransformerLens)."""

    layers: str | tuple[str, ...]
    """Dotted path from the top model to the ModuleList of transformer blocks (alternatives: first found)."""
    out_proj: str | tuple[str, ...]
    """Dotted path, inside one block, of the attention output projection (alternatives: first found)."""
    n_heads: str = "num_attention_heads"
    """Config attribute holding the number of query heads."""
    head_dim: str | None = "head_dim"
    """Config attribute holding d_head where the config states it (never derived when stated)."""
    hidden: str = "hidden_size"
    """Config attribute holding the residual width, used only when head_dim is not stated."""


@dataclass
class PreOut:
    """One layer's hook point: the out-projection module and the head layout of its input."""

    layer: int
    name: str
    module: nn.Module
    n_heads: int
    head_dim: int
    block: nn.Module
    """The transformer block holding the projection (the unit a sharding strategy splits)."""

    @property
    def width(self) -> int:
        return self.n_heads * self.head_dim


def get_submodule(root: nn.Module, path: str | tuple[str, ...]) -> tuple[str, nn.Module]:
    """The first of the alternative paths that exists (library versions name modules differently)."""
    for candidate in (path,) if isinstance(path, str) else path:
        try:
            return candidate, root.get_submodule(candidate)
        except AttributeError:
            continue
    raise AblateError(f"module path {path} not found in {type(root).__name__}: the architecture mapping does not fit this model")


def in_features(module: nn.Module) -> int:
    """Input width of a projection: nn.Linear, or GPT-2's Conv1D (weight stored [in, out])."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0]
    raise AblateError(f"unsupported out-projection type {type(module).__name__}; expected nn.Linear or Conv1D")


def head_layout(config, arch: Architecture) -> tuple[int, int]:
    n_heads = int(getattr(config, arch.n_heads))
    stated = getattr(config, arch.head_dim, None) if arch.head_dim else None
    if stated:
        return n_heads, int(stated)
    return n_heads, int(getattr(config, arch.hidden)) // n_heads


def locate_pre_outs(model: nn.Module, arch: Architecture, n_heads: int, head_dim: int) -> list[PreOut]:
    """All layers' out-projections, checked against the stated head layout."""
    layers_path, layers = get_submodule(model, arch.layers)
    found = []
    for i, block in enumerate(layers):
        out_path, module = get_submodule(block, arch.out_proj)
        width = in_features(module)
        if width != n_heads * head_dim:
            raise AblateError(
                f"layer {i}: out-projection takes {width} inputs but the config states "
                f"{n_heads} heads x {head_dim} head_dim; the architecture mapping does not fit this model"
            )
        found.append(PreOut(i, f"{layers_path}.{i}.{out_path}", module, n_heads, head_dim, block))
    if not found:
        raise AblateError("the model has no transformer layers to ablate")
    return found


def looks_like_path(name: str) -> bool:
    """True for names that can only be local paths (hub ids are ``name`` or ``org/name``)."""
    suffixes = (".gguf", ".safetensors", ".bin", ".pt", ".txt", ".json", ".jsonl", ".csv", ".parquet", ".bz2", ".xml")
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(suffixes)


def resolve_dtype(name: str) -> torch.dtype | str:
    table = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise AblateError(f"unknown dtype '{name}'; use one of {', '.join(table)}")
    return table[name]
