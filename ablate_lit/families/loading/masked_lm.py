"""Masked language models: tested architecture paths (BERT, RoBERTa, XLM-RoBERTa) and loading.

Architectures without an entry here (DistilBERT, DeBERTa, ELECTRA, ALBERT, ModernBERT, ...) are
located by structure (``families.locate.layout``)."""

from __future__ import annotations

from ablate_lit.families.loading.hf import load_hf, load_tokenizer
from ablate_lit.sites.pre_out import Architecture

_BERT_OUT = ("attention.output.dense", "attention.o_proj")  # transformers 4.x / later layouts

MASKED_LM_ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(layers=("bert.encoder.layer", "bert.layers"), out_proj=_BERT_OUT),
    "roberta": Architecture(layers=("roberta.encoder.layer", "roberta.layers"), out_proj=_BERT_OUT),
    "xlm-roberta": Architecture(layers=("roberta.encoder.layer", "roberta.layers"), out_proj=_BERT_OUT),
}


def load_masked_lm(
    name_or_path: str,
    dtype: str = "float32",
    revision: str | None = None,
    attn_implementation: str | None = None,
    blocks: str | None = None,
    out_proj: str | None = None,
    tokenizer: str | None = None,
    **placement,
):
    model, path, known = load_hf(
        name_or_path,
        "masked_lm",
        MASKED_LM_ARCHITECTURES,
        None,
        dtype,
        revision,
        attn_implementation,
        blocks,
        out_proj,
        **placement,
    )
    return model, load_tokenizer(tokenizer or path, None if tokenizer else revision, given=bool(tokenizer)), known
