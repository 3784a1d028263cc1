"""Causal language models: tested architecture paths and loading (hub name, local folder or GGUF file).

Architectures without an entry here are located by structure (``families.locate.layout``)."""

from __future__ import annotations

from ablate_lit.families.loading.hf import load_hf, load_tokenizer
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


def load_causal_lm(
    name_or_path: str,
    gguf_file: str | None = None,
    dtype: str = "float32",
    revision: str | None = None,
    attn_implementation: str | None = None,
    blocks: str | None = None,
    out_proj: str | None = None,
    tokenizer: str | None = None,
    **placement,
):
    """(model, tokenizer, tested architecture or None) from a hub name, a local folder, or a GGUF file in a folder."""
    model, path, known = load_hf(
        name_or_path,
        "causal_lm",
        CAUSAL_LM_ARCHITECTURES,
        gguf_file,
        dtype,
        revision,
        attn_implementation,
        blocks,
        out_proj,
        **placement,
    )
    return model, load_tokenizer(tokenizer or path, None if tokenizer else revision, given=bool(tokenizer)), known
