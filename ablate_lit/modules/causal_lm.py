"""Causal language models (OPT, Llama, Mistral, Qwen2, Gemma, GPT-2, GPT-NeoX): next-token scoring."""

from __future__ import annotations

import torch

from ablate_lit.ablation.hooks import PreOutHooks
from ablate_lit.families.base import head_layout, locate_pre_outs
from ablate_lit.families.causal_lm import load_causal_lm
from ablate_lit.modules.base import TextAblationModule
from ablate_lit.stats.token_metrics import IGNORE_INDEX


class CausalLMAblation(TextAblationModule):
    """Scores next-token prediction (Top1, CE) of a causal LM whose attention pre-outs are ablated."""

    family = "causal_lm"
    data_types = ("TextData",)

    def __init__(
        self,
        name_or_path: str,
        gguf_file: str | None = None,
        dtype: str = "float32",
        revision: str | None = None,
        attn_implementation: str | None = None,
        generator: str | None = None,
    ):
        """
        Args:
            name_or_path: hub model id (e.g. facebook/opt-1.3b) or a local folder.
            gguf_file: a .gguf file inside name_or_path to load instead (converted once, then cached).
            dtype: weights' dtype: float32, bfloat16, float16 or auto (as stored).
            revision: hub revision (branch, tag or commit).
            attn_implementation: eager, sdpa, flash_attention_2 (default: transformers' choice).
            generator: model that generates the text for resample:generated (default: the model under test).
        """
        super().__init__()
        self.save_hyperparameters()
        self.model, self.tokenizer, arch = load_causal_lm(name_or_path, gguf_file, dtype, revision, attn_implementation)
        self.pre_outs = locate_pre_outs(self.model, arch, *head_layout(self.model.config, arch))
        self.hooks = PreOutHooks(self.pre_outs)

    @property
    def model_label(self) -> str:
        if self.hparams.gguf_file:
            return self.hparams.gguf_file.removesuffix(".gguf")
        return super().model_label

    def logits_and_labels(self, batch):
        ids = batch["input_ids"]
        logits = self.model(input_ids=ids).logits  # [batch, pos, vocab]
        # position t predicts token t+1; the last position has no label (-100). Scoring the full,
        # contiguous logits avoids copying them, as slicing off the last position would.
        labels = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), IGNORE_INDEX)], 1)
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)

    def default_generator(self):
        return self.model, self.tokenizer  # the model under test writes its own text
