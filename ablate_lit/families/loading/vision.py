"""Vision transformers: timm and Hugging Face image classifiers, loading and preprocessing.

timm ViT-style models (``blocks[i].attn.proj``) and Hugging Face ViT/DeiT have tested entries; every
other model (BEiT, EVA, DINOv2, CLIP vision, ...) is located by structure (``families.locate.layout``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ablate_lit.common.errors import AblateError
from ablate_lit.common.paths import looks_like_path
from ablate_lit.families.loading.hf import heads_config, hub_error, load_hf, resolve_dtype
from ablate_lit.families.loading.settings import Layout, Placement, Source
from ablate_lit.sites.pre_out import Architecture

# timm: every ViT-style block has attn.proj; the head layout is read from the attention module.
TIMM_ARCHITECTURE = Architecture(layers="blocks", out_proj="attn.proj")

HF_VISION_ARCHITECTURES: dict[str, Architecture] = {
    "vit": Architecture(
        layers=("vit.encoder.layer", "vit.layers"), out_proj=("attention.output.dense", "attention.o_proj")
    ),
    "deit": Architecture(
        layers=("deit.encoder.layer", "deit.layers"), out_proj=("attention.output.dense", "attention.o_proj")
    ),
}


def _backend(name_or_path: str) -> str:
    path = Path(os.path.expanduser(name_or_path))
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        return "timm" if "architecture" in config else "hf"
    if path.exists():
        raise AblateError(
            f"'{name_or_path}' holds no config.json; save timm models with timm.models.save_for_hf "
            "and Hugging Face models with save_pretrained"
        )
    if looks_like_path(name_or_path):
        raise AblateError(
            f"model folder '{name_or_path}' not found; pass an existing folder or a model name with "
            "⟨--model.name_or_path⟩"
        )
    return "timm" if name_or_path.startswith("timm/") or "/" not in name_or_path else "hf"


OFFLINE_DATA = (
    "; the images must be local too (ImageNet-1k is a gated hub data set): ⟨--data.path⟩ a folder of class "
    "sub-folders (val/n01440764/...) or a save_to_disk folder"
)


def load_vision(source: Source, layout: Layout, placement: Placement):
    """(model, preprocess, n_classes, tested architecture or None, config for the head layout, backend)."""
    name_or_path, dtype = source.name_or_path, source.dtype
    backend = _backend(name_or_path)
    try:
        if backend == "timm":
            if placement.quantization is not None or placement.device_map is not None:
                raise AblateError(
                    "⟨--model.quantization⟩ and ⟨--model.device_map⟩ load Hugging Face models; a timm model "
                    "loads whole on one device (save it as a Hugging Face ViT to quantize it)"
                )
            return _load_timm(name_or_path, dtype)
        return _load_hf(source, layout, placement)
    except AblateError as exc:
        if "without internet" in str(exc):  # a hub name out of reach: the data set will be too
            exc.args = (str(exc) + OFFLINE_DATA,)
        raise


def _load_timm(name_or_path: str, dtype: str):
    import timm
    from timm.data import create_transform, resolve_data_config

    local = Path(os.path.expanduser(name_or_path))
    if local.is_dir():
        name = f"local-dir:{local}"
    else:
        name = name_or_path.removeprefix("timm/")
        arch = name.split(".")[0]
        if not timm.is_model(arch):
            near = timm.list_models(f"*{arch[:5]}*")[:5]
            raise AblateError(
                f"unknown timm model '{name}'"
                + (f" (similar: {', '.join(near)})" if near else "")
                + "; e.g. vit_base_patch16_224.augreg2_in21k_ft_in1k"
            )
        name = f"hf-hub:timm/{name}" if "." in name else name
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # hub unreachable, missing weights, unknown name
        raise hub_error(
            name_or_path, exc, "timm model", "⟨--model.name_or_path⟩ (a folder saved by timm.models.save_for_hf)"
        ) from exc
    torch_dtype = resolve_dtype(dtype)
    model = model.to(dtype=torch_dtype) if torch_dtype != "auto" else model
    preprocess = create_transform(**resolve_data_config({}, model=model), is_training=False)
    model.eval().requires_grad_(False)
    return model, preprocess, model.num_classes, TIMM_ARCHITECTURE, None, "timm"


def _load_hf(source: Source, layout: Layout, placement: Placement):
    import transformers

    model, path, known = load_hf(source, "vision", HF_VISION_ARCHITECTURES, layout, placement)
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(path, revision=source.revision)
    except (OSError, ValueError) as exc:
        raise hub_error(source.name_or_path, exc, "image processor of", "⟨--model.name_or_path⟩") from exc

    def preprocess(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    return model, preprocess, model.config.num_labels, known, heads_config(model.config, "vision"), "hf"
