"""Vision transformers (timm ViT/DeiT, Hugging Face ViT): image classification under ablation."""

from __future__ import annotations

from ablate_lit.ablation.hooks import PreOutHooks
from ablate_lit.data.random_inputs import RandomPixels
from ablate_lit.families.base import locate_pre_outs
from ablate_lit.families.vision import load_vision
from ablate_lit.modules.base import AblationModule


class VisionAblation(AblationModule):
    """Scores the class predictions (Top1, CE against the labels) of a ViT whose attention pre-outs are ablated."""

    family = "vision"
    resample_sources = ("random_pixels",)
    data_types = ("ImageData",)

    def __init__(self, name_or_path: str, dtype: str = "float32", revision: str | None = None):
        """
        Args:
            name_or_path: timm model name (vit_base_patch16_224.augreg2_in21k_ft_in1k), Hugging Face id
                (google/vit-base-patch16-224), or a local folder (timm save_for_hf or HF save_pretrained).
            dtype: weights' dtype: float32, bfloat16, float16.
            revision: hub revision (Hugging Face models).
        """
        super().__init__()
        self.save_hyperparameters()
        (self.model, self.preprocess, self.n_classes, arch, n_heads, head_dim, self.backend) = load_vision(name_or_path, dtype, revision)
        self.pre_outs = locate_pre_outs(self.model, arch, n_heads, head_dim)
        self.hooks = PreOutHooks(self.pre_outs)

    def data_connection(self) -> tuple:
        return (self.preprocess, self.n_classes)

    @property
    def input_size(self) -> tuple[int, int]:
        if self.backend == "timm":
            return tuple(self.model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
        size = self.model.config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def logits_and_labels(self, batch):
        x = batch["pixel_values"].to(next(self.model.parameters()).dtype)
        logits = self.model(x) if self.backend == "timm" else self.model(pixel_values=x).logits  # [batch, classes]
        return logits, batch["label"]

    def random_inputs(self, source: str, n: int, seed: int, data) -> RandomPixels:
        if source != "random_pixels":
            raise ValueError(source)
        return RandomPixels(n, self.input_size, self.preprocess, seed)
