"""Causal language models (OPT, Llama, Mistral, Gemma, Qwen, Phi, GPT-2, GPT-NeoX, ...): next-token scoring."""

from __future__ import annotations

import torch

from ablate_lit.common.errors import AblateError
from ablate_lit.common.labels import IGNORE_INDEX
from ablate_lit.families.loading.causal_lm import CAUSAL_LM_ARCHITECTURES, load_causal_lm
from ablate_lit.families.loading.hf import check_generator, heads_config
from ablate_lit.families.loading.quantization import placement_of
from ablate_lit.families.text import TextAblationModule


class CausalLMAblation(TextAblationModule):
    """Scores next-token prediction (Top1, CE) of a causal LM whose attention pre-outs are ablated."""

    forward_kwargs = {"use_cache": False}
    architectures = CAUSAL_LM_ARCHITECTURES

    def __init__(
        self,
        name_or_path: str,
        gguf_file: str | None = None,
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
            name_or_path: hub model id (e.g. facebook/opt-1.3b) or a local folder.
            gguf_file: a .gguf file inside name_or_path to load instead (converted once, then cached).
            dtype: weights' dtype: float32, bfloat16, float16 or auto (as stored).
            revision: hub revision (branch, tag or commit).
            attn_implementation: eager, sdpa, flash_attention_2 (default: transformers' choice).
            generator: model that generates the text for resample:generated (default: the model under test).
            tokenizer: tokenizer folder or hub id, for a model folder saved without one (default: the model's).
            blocks: path of the list of transformer blocks (e.g. model.layers), for a model whose layout is not found.
            out_proj: path inside a block of the attention output projection (e.g. self_attn.o_proj).
            mlp_proj: path inside a block of the MLP output projection (e.g. mlp.down_proj), for --ablation.site mlp.
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
        self.model, self.tokenizer, known = load_causal_lm(
            name_or_path,
            gguf_file,
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

    def check_example(self, logits: torch.Tensor) -> None:
        """A causal LM's predictions before the last token cannot depend on the last token."""
        if not torch.allclose(logits[0, :-1].float(), logits[1, :-1].float(), rtol=1e-3, atol=1e-3, equal_nan=True):
            raise AblateError(
                f"'{self.model.config.model_type}' is not causal here: changing the last token changed the "
                "predictions before it; for a bidirectional model use ⟨family=masked_lm⟩"
            )

    @property
    def model_label(self) -> str:
        if self.hparams.get("gguf_file"):
            return self.hparams.gguf_file.removesuffix(".gguf")
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
