"""Causal language models: architecture mappings and loading (hub name, local folder or GGUF file)."""

from __future__ import annotations

from ablate_lit.families.base import Architecture
from ablate_lit.families.hf import load_hf

_LLAMA_LIKE = Architecture(layers="model.layers", out_proj="self_attn.o_proj")

# model_type (from config.json) -> where the pre-out lives. Every entry is exercised by the tests
# on a tiny random-init model of that type (ablate_lit/tiny.py builds them).
CAUSAL_LM_ARCHITECTURES: dict[str, Architecture] = {
    "opt": Architecture(layers="model.decoder.layers", out_proj="self_attn.out_proj"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gpt2": Architecture(layers="transformer.h", out_proj="attn.c_proj"),
    "gpt_neox": Architecture(layers="gpt_neox.layers", out_proj="attention.dense"),
}


def load_causal_lm(name_or_path: str, gguf_file: str | None = None, dtype: str = "float32",
                   revision: str | None = None, attn_implementation: str | None = None):
    """Load (model, tokenizer, architecture) from a hub name, a local folder, or a GGUF file in a folder."""
    return load_hf(name_or_path, "AutoModelForCausalLM", CAUSAL_LM_ARCHITECTURES, "causal_lm", gguf_file, dtype,
                   revision, attn_implementation)
