"""Masked language models (BERT, RoBERTa, DeBERTa, ALBERT, ModernBERT, ...): token unmasking and de-randomisation."""

from __future__ import annotations

from ablate_lit.families.loading.hf import check_generator, heads_config
from ablate_lit.families.loading.masked_lm import MASKED_LM_ARCHITECTURES, load_masked_lm
from ablate_lit.families.loading.quantization import placement_of
from ablate_lit.families.text import TextAblationModule


class MaskedLMAblation(TextAblationModule):
    """Scores the masked-out tokens (Top1, CE) of a masked LM whose attention pre-outs are ablated."""

    architectures = MASKED_LM_ARCHITECTURES

    def __init__(
        self,
        name_or_path: str,
        dtype: str = "float32",
        revision: str | None = None,
        attn_implementation: str | None = None,
        generator: str | None = None,
        tokenizer: str | None = None,
        blocks: str | None = None,
        out_proj: str | None = None,
        mlp_proj: str | None = None,
        head_dim: int | None = None,
        allow_unchecked: bool = False,
        check_length: int | None = None,
        quantization: str | dict | None = None,
        device_map: str | dict | None = None,
        offload_folder: str | None = None,
    ):
        """
        Args:
            name_or_path: hub model id (e.g. FacebookAI/roberta-large) or a local folder.
            dtype: weights' dtype: float32, bfloat16, float16 or auto.
            revision: hub revision.
            attn_implementation: eager, sdpa (default: transformers' choice).
            generator: causal LM generating the text for resample:generated (default: a built-in English sample).
            tokenizer: tokenizer folder or hub id, for a model folder saved without one (default: the model's).
            blocks: path of the list of transformer blocks (e.g. bert.encoder.layer), for a model whose layout is not
                found.
            out_proj: path inside a block of the attention output projection (e.g. attention.output.dense).
            mlp_proj: path inside a block of the MLP output projection (e.g. output.dense), for --ablation.site mlp.
            head_dim: width of one head's output, for a model that states it under another name (timm LeViT's val_dim).
            allow_unchecked: ablate the out-projection's input even where a check pass could not show it equal
                to the attention heads' output (the run says which layers and why).
            check_length: tokens of the check forward pass (default 8); a model that takes inputs of one length only
                (Nystromformer) needs that length, as --data.context_length does.
            quantization: load the weights quantized: quanto-int8, quanto-int4, torchao-int8 (CPU or GPU),
                bnb-8bit, bnb-4bit (bitsandbytes, CUDA), or a Hugging Face quantization config as a dict.
            device_map: place the model across devices (auto, balanced, or {module: device|cpu|disk}) for one
                larger than a device; one process only.
            offload_folder: where a device map's disk entries are kept.
        """
        super().__init__()
        self.save_hyperparameters()
        if generator:
            check_generator(generator)
        self.model, self.tokenizer, known = load_masked_lm(
            name_or_path,
            dtype,
            revision,
            attn_implementation,
            blocks,
            out_proj,
            tokenizer,
            **placement_of(self.hparams),
        )
        self.placed_by_itself()
        self.locate_pre_outs(heads_config(self.model.config, self.family), known, blocks, out_proj)

    def logits_and_labels(self, batch):
        logits = self.model(input_ids=batch["input_ids"]).logits  # [batch, pos, vocab]
        labels = batch.get("labels")
        if labels is None:  # randomised inputs for the resample cache are not scored
            labels = batch["input_ids"].new_full(batch["input_ids"].shape, -100)
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
