"""Vision transformers (timm and Hugging Face image classifiers): image classification under ablation."""

from __future__ import annotations

import torch

from ablate_lit.data.random_inputs import RandomPixels
from ablate_lit.families.vision import load_vision
from ablate_lit.modules.base import AblationModule


class VisionAblation(AblationModule):
    """Scores the class predictions (Top1, CE against the labels) of a ViT whose attention pre-outs are ablated."""

    family = "vision"
    resample_sources = ("random_pixels", "data")
    data_types = ("ImageData",)

    def __init__(self, name_or_path: str, dtype: str = "float32", revision: str | None = None,
                 blocks: str | None = None, out_proj: str | None = None, mlp_proj: str | None = None):
        """
        Args:
            name_or_path: timm model name (vit_base_patch16_224.augreg2_in21k_ft_in1k), Hugging Face id
                (google/vit-base-patch16-224), or a local folder (timm save_for_hf or HF save_pretrained).
            dtype: weights' dtype: float32, bfloat16, float16.
            revision: hub revision (Hugging Face models).
            blocks: path of the list of transformer blocks (e.g. blocks), for a model whose layout is not found.
            out_proj: path inside a block of the attention output projection (e.g. attn.proj).
            mlp_proj: path inside a block of the MLP output projection (e.g. mlp.fc2), for --ablation.site mlp.
        """
        super().__init__()
        self.save_hyperparameters()
        (self.model, self.preprocess, self.n_classes, known, self.config, self.backend) = load_vision(
            name_or_path, dtype, revision, blocks, out_proj)
        self.input_size = self._input_size()
        self.locate_pre_outs(self.config, known, blocks, out_proj)

    def data_connection(self) -> tuple:
        return (self.preprocess, self.n_classes)

    def _input_size(self) -> tuple[int, int]:
        """(height, width) the model takes: what its own preprocessing makes of an image."""
        from PIL import Image

        try:
            return tuple(self.preprocess(Image.new("RGB", (256, 256))).shape[-2:])
        except Exception as exc:
            from ablate_lit.errors import AblateError

            raise AblateError(f"the model's image preprocessing fails on an RGB image ({exc}); "
                              "VisionAblation evaluates image classifiers that take pixel values") from exc

    def example_forward(self, n: int) -> torch.Tensor:
        pixels = torch.zeros(n, 3, *self.input_size)
        return self.logits_and_labels({"pixel_values": pixels, "label": None})[0]

    def logits_and_labels(self, batch):
        x = batch["pixel_values"].to(next(self.model.parameters()).dtype)
        logits = self.model(x) if self.backend == "timm" else self.model(pixel_values=x).logits  # [batch, classes]
        return logits, batch["label"]

    def random_inputs(self, source: str, n: int, seed: int, data):
        if source == "data":
            return data.calibration_sample(n, seed)
        if source != "random_pixels":
            raise ValueError(source)
        return RandomPixels(n, self.input_size, self.preprocess, seed)
