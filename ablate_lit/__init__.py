"""ablate_lit: neuron ablation in attention heads (zero, mean, peak, resample) on PyTorch Lightning."""

from ablate_lit.errors import AblateError
from ablate_lit.modules.causal_lm import CausalLMAblation
from ablate_lit.data.text import TextData

__all__ = ["AblateError", "CausalLMAblation", "TextData"]
__version__ = "0.1.0"
