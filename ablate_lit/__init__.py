"""ablate_lit: neuron ablation in attention heads (zero, mean, peak, resample) on PyTorch Lightning.

The public names are imported when first used (``ablate_lit.run``, ``from ablate_lit import
TextData``), so the command line answers ``--help``, ``report`` and ``cache`` without loading torch,
Lightning and transformers first."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_PUBLIC = {  # name -> the module that defines it
    "AblateError": "ablate_lit.common.errors",
    "CausalLMAblation": "ablate_lit.families.causal_lm",
    "FSDP2Strategy": "ablate_lit.common.sharding",  # (registers --trainer.strategy fsdp2)
    "ImageData": "ablate_lit.data.images",
    "MaskedLMAblation": "ablate_lit.families.masked_lm",
    "MaskedTextData": "ablate_lit.data.masked",
    "Results": "ablate_lit.entry.results",
    "TaskData": "ablate_lit.data.task",
    "TextData": "ablate_lit.data.text",
    "VisionAblation": "ablate_lit.families.vision",
    "load": "ablate_lit.entry.results",
    "run": "ablate_lit.entry.api",
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and editors see (re-exported names)
    from ablate_lit.common.errors import AblateError as AblateError
    from ablate_lit.common.sharding import FSDP2Strategy as FSDP2Strategy
    from ablate_lit.data.images import ImageData as ImageData
    from ablate_lit.data.masked import MaskedTextData as MaskedTextData
    from ablate_lit.data.task import TaskData as TaskData
    from ablate_lit.data.text import TextData as TextData
    from ablate_lit.entry.api import run as run
    from ablate_lit.entry.results import Results as Results
    from ablate_lit.entry.results import load as load
    from ablate_lit.families.causal_lm import CausalLMAblation as CausalLMAblation
    from ablate_lit.families.masked_lm import MaskedLMAblation as MaskedLMAblation
    from ablate_lit.families.vision import VisionAblation as VisionAblation


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ablate_lit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # (looked up once)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
