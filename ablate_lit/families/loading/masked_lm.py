"""Masked language models: tested architecture paths (BERT, RoBERTa, XLM-RoBERTa) and loading.

Architectures without an entry here (DistilBERT, DeBERTa, ELECTRA, ALBERT, ModernBERT, ...) are
located by structure (``families.locate.layout``)."""

from __future__ import annotations

from ablate_lit.families.loading.hf import load_hf, load_text_tokenizer
from ablate_lit.families.loading.settings import Layout, Placement, Source
from ablate_lit.sites.pre_out import Architecture

_BERT_OUT = ("attention.output.dense", "attention.o_proj")  # transformers 4.x / later layouts

MASKED_LM_ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(layers=("bert.encoder.layer", "bert.layers"), out_proj=_BERT_OUT),
    "roberta": Architecture(layers=("roberta.encoder.layer", "roberta.layers"), out_proj=_BERT_OUT),
    "xlm-roberta": Architecture(layers=("roberta.encoder.layer", "roberta.layers"), out_proj=_BERT_OUT),
}


def load_masked_lm(source: Source, layout: Layout, placement: Placement):
    """(model, tokenizer, tested architecture or None) from a hub name or a local folder."""
    model, path, known = load_hf(source, "masked_lm", MASKED_LM_ARCHITECTURES, layout, placement)
    return model, load_text_tokenizer(source, path), known
