"""Masked language models (BERT, RoBERTa, XLM-RoBERTa): token unmasking and de-randomisation."""

from __future__ import annotations

from ablate_lit.ablation.hooks import PreOutHooks
from ablate_lit.families.base import head_layout, locate_pre_outs
from ablate_lit.families.masked_lm import load_masked_lm
from ablate_lit.modules.base import TextAblationModule


class MaskedLMAblation(TextAblationModule):
    """Scores the masked-out tokens (Top1, CE) of a masked LM whose attention pre-outs are ablated."""

    family = "masked_lm"
    data_types = ("MaskedTextData",)

    def __init__(self, name_or_path: str, dtype: str = "float32", revision: str | None = None,
                 attn_implementation: str | None = None, generator: str | None = None):
        """
        Args:
            name_or_path: hub model id (e.g. FacebookAI/roberta-large) or a local folder.
            dtype: weights' dtype: float32, bfloat16, float16 or auto.
            revision: hub revision.
            attn_implementation: eager, sdpa (default: transformers' choice).
            generator: causal LM generating the text for resample:generated (default: a built-in English sample).
        """
        super().__init__()
        self.save_hyperparameters()
        self.model, self.tokenizer, arch = load_masked_lm(name_or_path, dtype, revision, attn_implementation)
        self.pre_outs = locate_pre_outs(self.model, arch, *head_layout(self.model.config, arch))
        self.hooks = PreOutHooks(self.pre_outs)

    def logits_and_labels(self, batch):
        logits = self.model(input_ids=batch["input_ids"]).logits  # [batch, pos, vocab]
        labels = batch.get("labels")
        if labels is None:  # randomised inputs for the resample cache are not scored
            labels = batch["input_ids"].new_full(batch["input_ids"].shape, -100)
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
