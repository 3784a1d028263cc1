"""The model families, declared once: what each is, how it loads, what evaluates it, what it resamples.

A family is one entry of ``FAMILIES`` (as timm's registry has one entry per model): its name, its
LightningModule and DataModules (class names, found at ``ablate_lit.<name>``), the transformers
auto class its Hugging Face models load with, and the randomised inputs its resample methods can
draw. It is a table of names, not of classes, so every stage reads it without importing another:
the loaders their auto class, the methods the resample sources, the LightningModules their data,
the command line, ``run()`` and the wording of errors the class paths. ``tests/test_families.py``
checks that every name resolves and is parametrised over the table, so adding a family adds its tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    """causal_lm, masked_lm or vision: the ``family=`` of ``run()`` and of refusals."""
    module: str
    """The LightningModule that evaluates it (``ablate_lit.<module>``)."""
    data: tuple[str, ...]
    """The DataModules it evaluates on (``ablate_lit.<data>``); the first is the default."""
    auto_class: str
    """The transformers auto class of its Hugging Face models."""
    resample_sources: tuple[str, ...]
    """The inputs ``resample:<source>`` can draw: randomised ones of its modality, and ``data`` (calibration)."""
    scored: str
    """What its Top1 and CE score, as ``--help`` says it."""

    @property
    def task_data(self) -> str | None:
        """The DataModule of tasks (prompts and answers) where the family has one."""
        return "TaskData" if "TaskData" in self.data else None


TEXT_SOURCES = ("random_chars", "random_tokens", "generated", "data")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "causal_lm",
            "CausalLMAblation",
            ("TextData", "TaskData"),
            "AutoModelForCausalLM",
            TEXT_SOURCES,
            "next tokens of text: OPT, Llama, Mistral, GPT-2, ...",
        ),
        Family(
            "masked_lm",
            "MaskedLMAblation",
            ("MaskedTextData",),
            "AutoModelForMaskedLM",
            TEXT_SOURCES,
            "masked tokens of text: BERT, RoBERTa, ...",
        ),
        Family(
            "vision",
            "VisionAblation",
            ("ImageData",),
            "AutoModelForImageClassification",
            ("random_pixels", "data"),
            "image classes: timm and Hugging Face ViTs",
        ),
    )
}

COUNTERFACTUAL = "counterfactual"
"""The resample source of a task whose rows have counterfactual prompts (any family with task data)."""

RESAMPLE_SOURCES = tuple(dict.fromkeys(s for f in FAMILIES.values() for s in f.resample_sources)) + (COUNTERFACTUAL,)
"""Every source ``resample:<source>`` can name."""


def family_of_module(class_name: str) -> Family | None:
    """The family whose LightningModule is called ``class_name`` (None for another class)."""
    return next((f for f in FAMILIES.values() if f.module == class_name), None)


def class_paths(kind: str) -> str:
    """``ablate_lit.CausalLMAblation, ... or ablate_lit.VisionAblation``: the classes a ``--model``
    (``kind`` model) or ``--data`` (``kind`` data) option takes, as a refusal lists them."""
    names = [f.module for f in FAMILIES.values()] if kind == "model" else [d for f in FAMILIES.values() for d in f.data]
    names = [f"ablate_lit.{n}" for n in dict.fromkeys(names)]
    return ", ".join(names[:-1]) + " or " + names[-1]
