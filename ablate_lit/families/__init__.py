"""Model families: where the attention pre-out lives (tested paths, discovery by structure) and loading."""

from ablate_lit.families.base import Architecture, PreOut
from ablate_lit.families.causal_lm import CAUSAL_LM_ARCHITECTURES
from ablate_lit.families.layout import locate

__all__ = ["Architecture", "PreOut", "locate", "CAUSAL_LM_ARCHITECTURES"]
