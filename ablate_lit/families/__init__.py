"""Model families: where the attention pre-out lives in each supported architecture."""

from ablate_lit.families.base import Architecture, PreOut, locate_pre_outs
from ablate_lit.families.causal_lm import CAUSAL_LM_ARCHITECTURES

__all__ = ["Architecture", "PreOut", "locate_pre_outs", "CAUSAL_LM_ARCHITECTURES"]
