"""Masked language models (BERT, RoBERTa, DeBERTa, ALBERT, ModernBERT, ...): token unmasking and de-randomisation."""

from __future__ import annotations

from ablate_lit.families.loading.hf import check_generator, heads_config
from ablate_lit.families.loading.masked_lm import MASKED_LM_ARCHITECTURES, load_masked_lm
from ablate_lit.families.loading.settings import LAYOUT, PLACEMENT, SOURCE, given, takes
from ablate_lit.families.text import TextAblationModule


class MaskedLMAblation(TextAblationModule):
    """Scores the masked-out tokens (Top1, CE) of a masked LM whose attention pre-outs are ablated."""

    architectures = MASKED_LM_ARCHITECTURES

    @takes(*(n for n in SOURCE if n != "gguf_file"), *LAYOUT, *PLACEMENT)
    def __init__(self, name_or_path: str, **settings):
        """A masked LM read from a hub id (e.g. FacebookAI/roberta-large) or a local folder."""
        super().__init__()
        settings = self.take_settings(given(MaskedLMAblation.__init__, settings, name_or_path=name_or_path))
        if settings.source.generator:
            check_generator(settings.source.generator)
        self.model, self.tokenizer, known = load_masked_lm(settings.source, settings.layout, settings.placement)
        self.placed_by_itself()
        self.locate_pre_outs(heads_config(self.model.config, self.family), known)

    def logits_and_labels(self, batch):
        logits = self.model(input_ids=batch["input_ids"]).logits  # [batch, pos, vocab]
        labels = batch.get("labels")
        if labels is None:  # randomised inputs for the resample cache are not scored
            labels = batch["input_ids"].new_full(batch["input_ids"].shape, -100)
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
