"""The hook point of one layer (``PreOut``), the tested path to it (``Architecture``), and helpers
that read a module's structure.

The *pre-out* of a layer is the input of its attention output projection (TransformerLens
``hook_z`` flattened): ``[batch, pos, n_heads * d_head]``. Ablation hooks sit on that input.
Where the pre-out lives in a model is found by ``families.locate.layout`` (tested per-architecture paths,
else discovery by structure) and checked on a real forward pass by ``families.locate.trace``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """A tested path to the pre-out of one architecture (a small mapping, as in TransformerLens)."""

    layers: str | tuple[str, ...]
    """Dotted path from the top model to the ModuleList of transformer blocks (alternatives: first found)."""
    out_proj: str | tuple[str, ...]
    """Dotted path, inside one block, of the attention output projection (alternatives: first found)."""


@dataclass
class PreOut:
    """One layer's hook point: the module whose input is the heads' concatenated output, and its layout."""

    layer: int
    """Position in execution order (a layer applied several times, as in ALBERT, is several layers)."""
    name: str
    """Dotted path of the hooked module."""
    module: nn.Module
    """The hooked module: the out-projection, or a norm that sits between the heads and it."""
    proj: nn.Module
    """The attention output projection itself (what fold mode edits)."""
    n_heads: int
    head_dim: int
    block: nn.Module
    """The transformer block holding the projection (the unit a sharding strategy splits)."""
    application: int = 0
    """Which call of ``module`` within one forward pass this layer is (0 unless the module is shared)."""
    n_applications: int = 1
    """How often ``module`` runs in one forward pass."""
    batch_major: bool = True
    """The hooked input is ``[batch, pos, width]`` (False for windowed attention such as Swin's)."""
    verified: bool = False
    """A test forward pass showed the hooked value equal to the layer's attention output (SDPA's, or the
    product of its attention probabilities and values), heads concatenated."""
    unchecked: str = ""
    """Why the hooked value could not be checked (attention layers that are not ``verified``)."""
    site: str = "attn"
    """attn: the heads' concatenated output (n_heads x head_dim); mlp: the MLP hidden units (1 x intermediate size)."""

    @property
    def width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def shared(self) -> bool:
        return self.n_applications > 1

    @property
    def direct(self) -> bool:
        """The hooked module is the out-projection itself (nothing between heads and projection)."""
        return self.module is self.proj


def get_submodule(root: nn.Module, path: str | tuple[str, ...]) -> tuple[str, nn.Module] | None:
    """The first of the alternative paths that exists (library versions name modules differently), or None."""
    for candidate in (path,) if isinstance(path, str) else path:
        try:
            return candidate, root.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def is_projection(module: nn.Module) -> bool:
    """nn.Linear (and subclasses) or GPT-2's Conv1D."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def input_width(module: nn.Module) -> int | None:
    """Input width of a projection (Conv1D stores its weight [in, out]) or of a norm; None if unknown."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0]
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return weight.shape[0]
    return None
