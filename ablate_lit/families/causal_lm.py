"""Causal language models (OPT, Llama, Mistral, Gemma, Qwen, Phi, GPT-2, GPT-NeoX, ...): next-token scoring."""

from __future__ import annotations

import torch

from ablate_lit.common.errors import AblateError
from ablate_lit.common.labels import IGNORE_INDEX
from ablate_lit.families.loading.causal_lm import CAUSAL_LM_ARCHITECTURES, load_causal_lm
from ablate_lit.families.loading.hf import check_generator, heads_config
from ablate_lit.families.loading.settings import LAYOUT, PLACEMENT, SOURCE, given, takes
from ablate_lit.families.text import TextAblationModule


class CausalLMAblation(TextAblationModule):
    """Scores next-token prediction (Top1, CE) of a causal LM whose attention pre-outs are ablated."""

    forward_kwargs = {"use_cache": False}
    architectures = CAUSAL_LM_ARCHITECTURES

    @takes(*SOURCE, *LAYOUT, *PLACEMENT)
    def __init__(self, name_or_path: str, **settings):
        """A causal LM read from a hub id (e.g. facebook/opt-1.3b), a local folder, or a GGUF file in one."""
        super().__init__()
        settings = self.take_settings(given(CausalLMAblation.__init__, settings, name_or_path=name_or_path))
        if settings.source.generator:
            check_generator(settings.source.generator)
        self.model, self.tokenizer, known = load_causal_lm(settings.source, settings.layout, settings.placement)
        self.placed_by_itself()
        self.locate_pre_outs(heads_config(self.model.config, self.family), known)

    def check_example(self, logits: torch.Tensor) -> None:
        """A causal LM's predictions before the last token cannot depend on the last token."""
        if not torch.allclose(logits[0, :-1].float(), logits[1, :-1].float(), rtol=1e-3, atol=1e-3, equal_nan=True):
            raise AblateError(
                f"'{self.model.config.model_type}' is not causal here: changing the last token changed the "
                "predictions before it; for a bidirectional model use ⟨family=masked_lm⟩"
            )

    @property
    def model_label(self) -> str:
        if self.settings.source.gguf_file:
            return self.settings.source.gguf_file.removesuffix(".gguf")
        return super().model_label

    def logits_and_labels(self, batch):
        ids = batch["input_ids"]
        logits = self.model(input_ids=ids, **self.forward_kwargs).logits  # [batch, pos, vocab]
        if "labels" in batch:  # task sequences (data.task): only the answer's tokens are scored
            return logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1)
        # position t predicts token t+1; the last position has no label (-100). Scoring the full,
        # contiguous logits avoids copying them, as slicing off the last position would.
        labels = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), IGNORE_INDEX)], 1)
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)

    def default_generator(self):
        return self.model, self.tokenizer  # the model under test writes its own text
