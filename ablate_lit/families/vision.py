"""Vision transformers: timm (vit_*, deit_*) and Hugging Face ViT, loading and preprocessing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ablate_lit.errors import AblateError
from ablate_lit.families.base import Architecture, head_layout, looks_like_path, resolve_dtype
from ablate_lit.families.hf import architecture_for, hub_error

# timm: every ViT-style block has attn.proj; the head layout is read from the attention module.
TIMM_ARCHITECTURE = Architecture(layers="blocks", out_proj="attn.proj")
TIMM_PREFIXES = ("vit_", "deit_", "deit3_", "eva", "beit")

HF_VISION_ARCHITECTURES: dict[str, Architecture] = {
    "vit": Architecture(layers=("vit.encoder.layer", "vit.layers"), out_proj=("attention.output.dense", "attention.o_proj")),
    "deit": Architecture(layers=("deit.encoder.layer", "deit.layers"), out_proj=("attention.output.dense", "attention.o_proj")),
}


def _backend(name_or_path: str) -> str:
    path = Path(os.path.expanduser(name_or_path))
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        return "timm" if "architecture" in config else "hf"
    if path.exists():
        raise AblateError(f"'{name_or_path}' holds no config.json; save timm models with timm.models.save_for_hf "
                          "and Hugging Face models with save_pretrained")
    if looks_like_path(name_or_path):
        raise AblateError(f"model folder '{name_or_path}' not found; pass an existing folder or a model name with --model.name_or_path")
    return "timm" if name_or_path.startswith("timm/") or "/" not in name_or_path else "hf"


def load_vision(name_or_path: str, dtype: str = "float32", revision: str | None = None):
    """(model, preprocess, n_classes, architecture, n_heads, head_dim, backend)."""
    backend = _backend(name_or_path)
    if backend == "timm":
        return _load_timm(name_or_path, dtype)
    return _load_hf(name_or_path, dtype, revision)


def _load_timm(name_or_path: str, dtype: str):
    import timm
    from timm.data import create_transform, resolve_data_config

    local = Path(os.path.expanduser(name_or_path))
    if local.is_dir():
        name = f"local-dir:{local}"
    else:
        name = name_or_path.removeprefix("timm/")
        if not name.split(".")[0].startswith(TIMM_PREFIXES) and not timm.is_model(name.split(".")[0]):
            raise AblateError(f"unknown timm model '{name}'; use a ViT/DeiT name such as vit_base_patch16_224.augreg2_in21k_ft_in1k")
        name = f"hf-hub:timm/{name}" if "." in name else name
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # hub unreachable, missing weights, unknown name
        raise hub_error(name_or_path, exc, "timm model", "--model.name_or_path (a folder saved by timm.models.save_for_hf)") from exc
    torch_dtype = resolve_dtype(dtype)
    model = model.to(dtype=torch_dtype) if torch_dtype != "auto" else model
    if not hasattr(model, "blocks"):
        raise AblateError(f"timm model '{name_or_path}' has no transformer blocks; supported: ViT-style models ({', '.join(TIMM_PREFIXES)}*)")
    attn = model.blocks[0].attn
    preprocess = create_transform(**resolve_data_config({}, model=model), is_training=False)
    model.eval().requires_grad_(False)
    return model, preprocess, model.num_classes, TIMM_ARCHITECTURE, attn.num_heads, attn.head_dim, "timm"


def _load_hf(name_or_path: str, dtype: str, revision: str | None):
    import transformers

    path = os.path.expanduser(name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, revision=revision)
        arch = architecture_for(config.model_type, HF_VISION_ARCHITECTURES, "vision")
        model = transformers.AutoModelForImageClassification.from_pretrained(path, config=config, revision=revision,
                                                                             dtype=resolve_dtype(dtype))
        processor = transformers.AutoImageProcessor.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise hub_error(name_or_path, exc, "model", "--model.name_or_path") from exc

    def preprocess(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    model.eval().requires_grad_(False)
    return model, preprocess, config.num_labels, arch, *head_layout(config, arch), "hf"
