"""Causal language models: tested architecture paths and loading (hub name, local folder or GGUF file).

Architectures without an entry here are located by structure (``families.locate.layout``)."""

from __future__ import annotations

from ablate_lit.families.loading.hf import load_hf, load_text_tokenizer
from ablate_lit.families.loading.settings import Layout, Placement, Source
from ablate_lit.sites.pre_out import Architecture

_LLAMA_LIKE = Architecture(layers="model.layers", out_proj="self_attn.o_proj")

# model_type (from config.json) -> where the pre-out lives. Every entry is exercised by the tests
# on a tiny random-init model of that type (ablate_lit/testing/tiny.py builds them).
CAUSAL_LM_ARCHITECTURES: dict[str, Architecture] = {
    "opt": Architecture(layers="model.decoder.layers", out_proj="self_attn.out_proj"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gpt2": Architecture(layers="transformer.h", out_proj="attn.c_proj"),
    "gpt_neox": Architecture(layers="gpt_neox.layers", out_proj="attention.dense"),
}


def load_causal_lm(source: Source, layout: Layout | None = None, placement: Placement | None = None):
    """(model, tokenizer, tested architecture or None) from a hub name, a local folder, or a GGUF file in a folder."""
    model, path, known = load_hf(
        source, "causal_lm", CAUSAL_LM_ARCHITECTURES, layout or Layout(), placement or Placement()
    )
    return model, load_text_tokenizer(source, path), known
