"""Masked language models (BERT, RoBERTa, XLM-RoBERTa): architecture mappings and loading."""

from __future__ import annotations

from ablate_lit.families.base import Architecture
from ablate_lit.families.hf import load_hf

_BERT_OUT = ("attention.output.dense", "attention.o_proj")  # transformers 4.x / later layouts

MASKED_LM_ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(layers=("bert.encoder.layer", "bert.layers"), out_proj=_BERT_OUT),
    "roberta": Architecture(layers=("roberta.encoder.layer", "roberta.layers"), out_proj=_BERT_OUT),
    "xlm-roberta": Architecture(layers=("roberta.encoder.layer", "roberta.layers"), out_proj=_BERT_OUT),
}


def load_masked_lm(name_or_path: str, dtype: str = "float32", revision: str | None = None,
                   attn_implementation: str | None = None):
    return load_hf(name_or_path, "AutoModelForMaskedLM", MASKED_LM_ARCHITECTURES, "masked_lm", None, dtype,
                   revision, attn_implementation)
