"""Tiny random-init models of every supported architecture, a local tokenizer, text and images.

Used by the tests and by the offline smoke configs (configs/tiny-*.yaml):

    python -m ablate_lit.testing.tiny /tmp/ablate_tiny        # then
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

from ablate_lit.families.loading.causal_lm import CAUSAL_LM_ARCHITECTURES
from ablate_lit.families.loading.masked_lm import MASKED_LM_ARCHITECTURES

WORDS = (
    "the of and to in is was for on that with as by at from his her are were which this be an had it not or "
    "have one their first new after who they two has been its more but other into time during city school "
    "year years state world music film game team river war house church album series season party family"
).split()
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
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>", "</s>", "<unk>", "<pad>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(make_text(200, seed=1), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )
    fast.save_pretrained(folder)
    return fast


def tiny_config(model_type: str):
    from transformers import AutoConfig

    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=3)
    if model_type == "opt":
        return AutoConfig.for_model(
            "opt",
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            word_embed_proj_dim=32,
            **common,
        )
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    if model_type == "gpt_neox":
        return AutoConfig.for_model(
            "gpt_neox",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            rotary_pct=0.5,
            **common,
        )
    if model_type == "gemma":  # head_dim stated and != hidden / heads
        return AutoConfig.for_model(
            "gemma",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=128,
            **common,
        )
    # llama, mistral, qwen2: grouped-query attention
    return AutoConfig.for_model(
        model_type,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **common,
    )


def _scale_weights(model) -> None:
    with torch.no_grad():  # larger weights than the init so ablation visibly changes the output
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)


def build_tiny_masked_lm(model_type: str, folder: Path, tokenizer_folder: Path, seed: int = 0) -> Path:
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=80,
        pad_token_id=3,
        bos_token_id=0,
        eos_token_id=1,
    )
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
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, 32, 32),
        "crop_pct": 1.0,
        "num_classes": N_CLASSES,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    return folder


def build_tiny_hf_vit(folder: Path, seed: int = 0) -> Path:
    from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "vit",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=N_CLASSES,
    )
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
        sys.exit("usage: python -m ablate_lit.testing.tiny OUTPUT_FOLDER")
    print(build_all(Path(sys.argv[1])))
