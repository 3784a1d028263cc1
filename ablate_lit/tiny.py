"""Tiny random-init models of every supported architecture, a local tokenizer, text and images.

Used by the tests and by the offline smoke configs (configs/tiny-*.yaml):

    python -m ablate_lit.tiny /tmp/ablate_tiny        # then
    ABLATE_LIT_ASSETS=/tmp/ablate_tiny python -m ablate_lit test --config configs/tiny-vision.yaml

Every model is saved with save_pretrained (timm: save_for_hf) and later loaded through the same
code as a hub model. Nothing is downloaded: the tokenizer is a byte-level BPE trained here, and
the text and images are generated.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

from ablate_lit.families.causal_lm import CAUSAL_LM_ARCHITECTURES
from ablate_lit.families.masked_lm import MASKED_LM_ARCHITECTURES

WORDS = ("the of and to in is was for on that with as by at from his her are were which this be an had it not or "
         "have one their first new after who they two has been its more but other into time during city school "
         "year years state world music film game team river war house church album series season party family").split()
VOCAB = 300


def make_text(n_docs: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(4, 9)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


def train_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<unk>", "<pad>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(make_text(200, seed=1), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    fast.save_pretrained(folder)
    return fast


def tiny_config(model_type: str):
    from transformers import AutoConfig

    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=3)
    if model_type == "opt":
        return AutoConfig.for_model("opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                    max_position_embeddings=128, word_embed_proj_dim=32, **common)
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    if model_type == "gpt_neox":
        return AutoConfig.for_model("gpt_neox", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=128, rotary_pct=0.5, **common)
    if model_type == "gemma":  # head_dim stated and != hidden / heads
        return AutoConfig.for_model("gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                    max_position_embeddings=128, **common)
    # llama, mistral, qwen2: grouped-query attention
    return AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **common)


def _scale_weights(model) -> None:
    with torch.no_grad():  # larger weights than the init so ablation visibly changes the output
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)


def build_tiny_masked_lm(model_type: str, folder: Path, tokenizer_folder: Path, seed: int = 0) -> Path:
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=80,
                                  pad_token_id=3, bos_token_id=0, eos_token_id=1)
    model = AutoModelForMaskedLM.from_config(config)
    _scale_weights(model)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(folder)
    return folder


N_CLASSES = 5


def build_tiny_timm_vit(folder: Path, seed: int = 0) -> Path:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=N_CLASSES)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)
    _scale_weights(model)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "crop_pct": 1.0, "num_classes": N_CLASSES}
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    return folder


def build_tiny_hf_vit(folder: Path, seed: int = 0) -> Path:
    from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = AutoConfig.for_model("vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, image_size=32, patch_size=8, num_labels=N_CLASSES)
    model = AutoModelForImageClassification.from_config(config)
    _scale_weights(model)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def make_image_folder(folder: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Class sub-folders of generated images: each class has its own colour and stripe direction."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(N_CLASSES):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
            img[..., c % 3] += np.uint8(120)
            if c >= 3:
                img[::4] = 255
            Image.fromarray(img).save(folder / f"class_{c}" / f"img_{i:02d}.png")
    return folder


def build_tiny_model(model_type: str, folder: Path, tokenizer_folder: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type))
    _scale_weights(model)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(folder)
    return folder


# Architectures without a tested entry, located by structure (families.layout): tiny configs of each.
# name -> (family, builder kwargs). Causal and masked configs share the tokenizer's special ids.
_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
ZOO_CAUSAL = {
    "gemma2": dict(**_SMALL, num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=8),
    "gemma3_text": dict(**_SMALL, num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=8),
    "qwen3": dict(**_SMALL, num_key_value_heads=2, head_dim=16, max_position_embeddings=128),
    "phi3": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128, original_max_position_embeddings=128),
    "phi": dict(**_SMALL, max_position_embeddings=128, partial_rotary_factor=0.5),
    "olmo2": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128),
    "mixtral": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32, shared_expert_intermediate_size=32),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "gpt_bigcode": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128, rotary_dim=4),
    "stablelm": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128, partial_rotary_factor=0.25),
    "deepseek_v3": dict(**{**_SMALL, "num_attention_heads": 4}, num_key_value_heads=4, max_position_embeddings=128,
                        kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                        first_k_dense_replace=2, n_routed_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
                        n_group=1, topk_group=1),  # multi-head latent attention: heads' output 4 x v_head_dim 16
    # refused: a tensor operation changes the heads' output before o_proj (a gate; differential heads)
    "qwen3_next": dict(**_SMALL, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                       layer_types=["full_attention"] * 2, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
                       shared_expert_intermediate_size=32, linear_num_value_heads=2, linear_num_key_heads=2,
                       linear_key_head_dim=8, linear_value_head_dim=8),
    "diffllama": dict(**_SMALL, num_key_value_heads=2, max_position_embeddings=128),
}
ZOO_MASKED = {
    "distilbert": dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=80),
    "deberta-v2": dict(**_SMALL, max_position_embeddings=80, relative_attention=True, pos_att_type=["p2c", "c2p"],
                       position_buckets=8, max_relative_positions=16),
    "electra": dict(**_SMALL, embedding_size=16, max_position_embeddings=80),
    "albert": dict(**{**_SMALL, "num_hidden_layers": 3}, embedding_size=16, max_position_embeddings=80),  # one layer, 3 times
    "modernbert": dict(**_SMALL, max_position_embeddings=80, global_attn_every_n_layers=2, local_attention=8,
                       cls_token_id=0, sep_token_id=1),
    "roberta-prelayernorm": dict(**_SMALL, max_position_embeddings=80),
}
_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
ZOO_HF_VISION = {
    "beit": dict(**_VISION, use_relative_position_bias=True),
    "dinov2": dict(**_VISION),
    "clip": dict(vision_config=_VISION),
    "swin": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 4], image_size=32, patch_size=4, window_size=4),  # widths 16, 32
}
ZOO_TIMM = {  # timm model name -> constructor arguments
    "beit_base_patch16_224": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4),
    "eva02_tiny_patch14_224": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, scale_attn_inner=True),
    "vit_tiny_patch16_224": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, scale_attn_norm=True),
    "swin_tiny_patch4_window7_224": dict(img_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 4), window_size=4),
    "cait_xxs24_224": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, depth_token_only=1,
                           init_values=1.0),  # its class-attention block is not ablated, and says so
}


def build_zoo(root: Path, tokenizer_folder: Path, seed: int = 0) -> dict[str, Path]:
    """Tiny random-init models of the architectures located by structure; returns {name: folder}."""
    import timm
    from timm.models import save_for_hf
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForMaskedLM,
                              AutoTokenizer, ViTImageProcessor)

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
        model = AutoModelForImageClassification.from_config(AutoConfig.for_model(model_type, num_labels=N_CLASSES, **kwargs))
        _scale_weights(model)
        out[f"hf-{model_type}"] = folder = root / f"hf-{model_type}"
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    for name, kwargs in ZOO_TIMM.items():
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=N_CLASSES, **kwargs)
        _scale_weights(model)
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "crop_pct": 1.0, "num_classes": N_CLASSES}
        out[f"timm-{name.split('_')[0]}"] = folder = root / f"timm-{name.split('_')[0]}"
        folder.mkdir(parents=True, exist_ok=True)
        save_for_hf(model, str(folder), model_args={**kwargs, "num_classes": N_CLASSES}, safe_serialization=True)
    return out


def build_all(root: Path) -> Path:
    root = Path(root)
    train_tokenizer(root / "tokenizer")
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate((make_text(40, seed=2), make_text(40, seed=3))):
        (root / "corpus" / f"part{i}.txt").write_text("\n\n".join(chunk))
    for t in CAUSAL_LM_ARCHITECTURES:
        build_tiny_model(t, root / "models" / t, root / "tokenizer")
    for t in MASKED_LM_ARCHITECTURES:
        build_tiny_masked_lm(t, root / "masked" / t, root / "tokenizer")
    build_tiny_timm_vit(root / "vision" / "timm")
    build_tiny_hf_vit(root / "vision" / "hf")
    make_image_folder(root / "images")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ablate_lit.tiny OUTPUT_FOLDER")
    print(build_all(Path(sys.argv[1])))
