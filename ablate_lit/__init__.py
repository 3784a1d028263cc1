"""ablate_lit: neuron ablation in attention heads (zero, mean, peak, resample) on PyTorch Lightning."""

from ablate_lit.common.errors import AblateError
from ablate_lit.common.sharding import FSDP2Strategy  # registers --trainer.strategy fsdp2
from ablate_lit.data.images import ImageData
from ablate_lit.data.masked import MaskedTextData
from ablate_lit.data.task import TaskData
from ablate_lit.data.text import TextData
from ablate_lit.entry.api import run
from ablate_lit.entry.results import Results, load
from ablate_lit.families.causal_lm import CausalLMAblation
from ablate_lit.families.masked_lm import MaskedLMAblation
from ablate_lit.families.vision import VisionAblation

__all__ = [
    "AblateError",
    "CausalLMAblation",
    "FSDP2Strategy",
    "ImageData",
    "MaskedLMAblation",
    "MaskedTextData",
    "Results",
    "TaskData",
    "TextData",
    "VisionAblation",
    "load",
    "run",
]
__version__ = "0.1.0"
