"""The test zoo: tiny random-init models of the architectures that are located by structure (no
tested entry), each saved and loaded back through the same code as a hub model."""

from __future__ import annotations

from pathlib import Path

import torch

from ablate_lit.testing.tiny import N_CLASSES, VOCAB, _scale_weights

# Architectures without a tested entry, located by structure (families.locate.layout): tiny configs of each.
# name -> (family, builder kwargs). Causal and masked configs share the tokenizer's special ids.
_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


ZOO_CAUSAL = {
    "gemma2": dict(**_SMALL, num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=8),
    "gemma3_text": dict(**_SMALL, num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=8),
    "qwen3": dict(**_SMALL, num_key_value_heads=2, head_dim=16, max_position_embeddings=128),
    "phi3": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128, original_max_position_embeddings=128),
    "phi": dict(**_SMALL, max_position_embeddings=128, partial_rotary_factor=0.5),
    "olmo2": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128),
    "mixtral": dict(
        **_SMALL, num_key_value_heads=2, max_position_embeddings=128, num_local_experts=4, num_experts_per_tok=2
    ),
    "qwen2_moe": dict(
        **_SMALL,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    ),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "gpt_bigcode": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128, rotary_dim=4),
    "stablelm": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128, partial_rotary_factor=0.25),
    "deepseek_v3": dict(
        **{**_SMALL, "num_attention_heads": 4},
        num_key_value_heads=4,
        max_position_embeddings=128,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        first_k_dense_replace=2,
        n_routed_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=32,
        n_group=1,
        topk_group=1,
    ),  # multi-head latent attention: heads' output 4 x v_head_dim 16
    # refused: a tensor operation changes the heads' output before o_proj (a gate; differential heads)
    "qwen3_next": dict(
        **_SMALL,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        layer_types=["full_attention"] * 2,
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        linear_num_value_heads=2,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
    ),
    "diffllama": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128),
    # refused: no attention at all (RWKV's time mixing is named RwkvSelfAttention; Mamba's state-space mixer)
    "rwkv": dict(
        hidden_size=32, num_hidden_layers=2, attention_hidden_size=32, intermediate_size=64, context_length=128
    ),
    "mamba": dict(hidden_size=32, num_hidden_layers=2, state_size=4, expand=2),
    # refused as a hybrid: softmax attention (named RecurrentGemmaAttention) in one layer of three, a recurrence
    # in the others
    "recurrent_gemma": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        lru_width=32,
        attention_window_size=8,
        conv1d_width=4,
        block_types=["recurrent", "recurrent", "attention"],
    ),
}


ZOO_MASKED = {
    "distilbert": dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=80),
    "deberta-v2": dict(
        **_SMALL,
        max_position_embeddings=80,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=8,
        max_relative_positions=16,
    ),
    "electra": dict(**_SMALL, embedding_size=16, max_position_embeddings=80),
    "albert": dict(
        **{**_SMALL, "num_hidden_layers": 3}, embedding_size=16, max_position_embeddings=80
    ),  # one layer, 3 times
    "modernbert": dict(
        **_SMALL,
        max_position_embeddings=80,
        global_attn_every_n_layers=2,
        local_attention=8,
        cls_token_id=0,
        sep_token_id=1,
    ),
    "roberta-prelayernorm": dict(**_SMALL, max_position_embeddings=80),
    # block-sparse attention on windows of 16 tokens (> 14 = (5 + 2 x 1 random block) x block size 2); the
    # 8-token check pass makes BigBird switch itself to full attention, which must not outlive the check
    "big_bird": dict(
        **_SMALL, max_position_embeddings=128, attention_type="block_sparse", block_size=2, num_random_blocks=1
    ),
    # takes inputs of exactly 32 tokens (segment means over 4 landmarks): checked with --model.check_length 32
    "nystromformer": dict(**_SMALL, max_position_embeddings=128, segment_means_seq_len=32, num_landmarks=4),
    # refused: 1x1 convolutions over [batch, channels, pos] instead of Linear projections
    "squeezebert": dict(**_SMALL, embedding_size=32, max_position_embeddings=80),
    # sliding-window attention over chunks: the heads' output reaches output.dense in another layout
    # ([batch * heads, chunks, window, head_dim] products), the same numbers
    "longformer": dict(**_SMALL, max_position_embeddings=80, attention_window=4),
    # half its heads are convolutions (head_ratio 2): the out-projection takes twice the attention heads' width
    "convbert": dict(**_SMALL, max_position_embeddings=80, embedding_size=32, head_ratio=2, conv_kernel_size=3),
}


_VISION = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
)


_PYRAMID = dict(
    hidden_sizes=[32, 32], num_encoder_blocks=2, depths=[1, 1], num_attention_heads=[2, 2], mlp_ratios=[2, 2]
)  # two stages of equal width, 8 x 8 then 4 x 4 tokens


ZOO_HF_VISION = {
    "beit": dict(**_VISION, use_relative_position_bias=True),
    "dinov2": dict(**_VISION),
    "clip": dict(vision_config=_VISION),
    "swin": dict(
        embed_dim=16, depths=[1, 1], num_heads=[2, 4], image_size=32, patch_size=4, window_size=4
    ),  # widths 16, 32
    # layers with different numbers of tokens (equal widths): pyramid stages, a class token from stage 3
    "pvt": dict(**_PYRAMID, sequence_reduction_ratios=[2, 1], patch_sizes=[4, 2], strides=[4, 2], image_size=32),
    "pvt_v2": dict(**_PYRAMID, sr_ratios=[2, 1], patch_sizes=[7, 3], strides=[4, 2], image_size=32),
    "segformer": dict(**_PYRAMID, sr_ratios=[2, 1], patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=32),
    "cvt": dict(embed_dim=[32, 32, 32], num_heads=[2, 2, 2], depth=[1, 2, 3]),
    # masked-unit attention with pooled queries, stages of widths 16 and 32: its second stage is chosen with
    # --model.blocks (the heads' output is laid out per masked unit before attn.proj)
    "hiera": dict(
        embed_dim=16,
        image_size=[32, 32],
        patch_size=[3, 3],
        patch_stride=[2, 2],
        patch_padding=[1, 1],
        depths=[1, 2],
        num_heads=[1, 2],
        num_query_pool=1,
        query_stride=[2, 2],
        masked_unit_size=[4, 4],
        masked_unit_attention=[True, False],
        mlp_ratio=2.0,
    ),
}


ZOO_TIMM = {  # timm model name -> constructor arguments
    "beit_base_patch16_224": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4),
    "eva02_tiny_patch14_224": dict(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, scale_attn_inner=True
    ),
    "vit_tiny_patch16_224": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, scale_attn_norm=True),
    "swin_tiny_patch4_window7_224": dict(
        img_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 4), window_size=4
    ),
    "cait_xxs24_224": dict(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, depth_token_only=1, init_values=1.0
    ),  # its class-attention block is not ablated, and says so
    # layers with different numbers of tokens: the class token joins after the local (GPSA) layers; pyramid
    # stages of equal width (Twins: locally-grouped windows over a padded map; PVTv2; LeViT, whose heads output
    # val_dim values each and whose out-projection is a Sequential of activation, Linear and BatchNorm)
    "convit_tiny": dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, local_up_to_layer=1),
    "twins_svt_small": dict(
        img_size=32,
        embed_dims=(32, 32, 32, 32),
        depths=(1, 1, 1, 1),
        num_heads=(2, 2, 2, 2),
        wss=(2, 2, 2, 2),
        sr_ratios=(2, 2, 2, 1),
    ),
    "pvt_v2_b0": dict(embed_dims=(32, 32, 32, 32), depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2)),
    "levit_128s": dict(img_size=32, embed_dim=(32, 32, 32), key_dim=8, num_heads=(2, 2, 2), depth=(1, 1, 1)),
    # cross-covariance attention over channels: the heads' output [batch, heads, head_dim, pos] is transposed
    # before attn.proj; its class-attention blocks are not ablated
    "xcit_nano_12_p16_224": dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=4),
}


def build_zoo(root: Path, tokenizer_folder: Path, seed: int = 0) -> dict[str, Path]:
    """Tiny random-init models of the architectures located by structure; returns {name: folder}."""
    import timm
    from timm.models import save_for_hf
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForMaskedLM,
        AutoTokenizer,
        ViTImageProcessor,
    )

    root, out = Path(root), {}
    ids = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=3)
    groups = ((ZOO_CAUSAL, AutoModelForCausalLM), (ZOO_MASKED, AutoModelForMaskedLM))
    for table, auto in groups:
        for model_type, kwargs in table.items():
            torch.manual_seed(seed)
            model = auto.from_config(AutoConfig.for_model(model_type, **ids, **kwargs))
            _scale_weights(model)
            out[model_type] = folder = root / model_type
            model.save_pretrained(folder)
            AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(folder)
    for model_type, kwargs in ZOO_HF_VISION.items():
        torch.manual_seed(seed)
        model = AutoModelForImageClassification.from_config(
            AutoConfig.for_model(model_type, num_labels=N_CLASSES, **kwargs)
        )
        _scale_weights(model)
        out[f"hf-{model_type}"] = folder = root / f"hf-{model_type}"
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    for name, kwargs in ZOO_TIMM.items():
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=N_CLASSES, **kwargs)
        _scale_weights(model)
        model.pretrained_cfg = {
            **model.pretrained_cfg,
            "input_size": (3, 32, 32),
            "crop_pct": 1.0,
            "num_classes": N_CLASSES,
        }
        out[f"timm-{name.split('_')[0]}"] = folder = root / f"timm-{name.split('_')[0]}"
        folder.mkdir(parents=True, exist_ok=True)
        save_for_hf(model, str(folder), model_args={**kwargs, "num_classes": N_CLASSES}, safe_serialization=True)
    return out
