"""Vision transformers (timm and Hugging Face image classifiers): image classification under ablation."""

from __future__ import annotations

import torch

from ablate_lit.common.errors import AblateError
from ablate_lit.families.loading.hf import check_family, heads_config
from ablate_lit.families.loading.settings import LAYOUT, PLACEMENT, given, takes
from ablate_lit.families.loading.vision import HF_VISION_ARCHITECTURES, TIMM_ARCHITECTURE, load_vision
from ablate_lit.families.module import AblationModule


class VisionAblation(AblationModule):
    """Scores the class predictions (Top1, CE against the labels) of a ViT whose attention pre-outs are ablated."""

    @takes("name_or_path", "dtype", "revision", *(n for n in LAYOUT if n != "check_length"), *PLACEMENT)
    def __init__(self, name_or_path: str, **settings):
        """An image classifier read from a timm model name, a Hugging Face id, or a local folder (timm
        save_for_hf or Hugging Face save_pretrained)."""
        super().__init__()
        settings = self.take_settings(given(VisionAblation.__init__, settings, name_or_path=name_or_path))
        (self.model, self.preprocess, self.n_classes, known, self.config, self.backend) = load_vision(
            settings.source, settings.layout, settings.placement
        )
        self.placed_by_itself()
        self.input_size = self._input_size()
        self.locate_pre_outs(self.config, known)

    @classmethod
    @takes(*(n for n in LAYOUT if n != "check_length"))
    def from_model(cls, model, preprocess=None, name: str | None = None, **settings):
        """Wrap an image classifier already in memory: a timm model (``preprocess`` defaults to its
        own evaluation transform) or a Hugging Face one (``preprocess``: its image processor, or any
        function from a PIL image to a [3, H, W] tensor)."""
        values = given(VisionAblation.from_model.__func__, settings)
        config = getattr(model, "config", None)
        timm_model = hasattr(model, "pretrained_cfg") or config is None
        if timm_model:
            preprocess, n_classes, known, heads, label = _timm_in_memory(model, preprocess, name)
        else:
            preprocess, n_classes, known, heads, label = _hf_in_memory(model, config, preprocess, name, cls.family)
        if hasattr(preprocess, "preprocess") and hasattr(preprocess, "model_input_names"):  # an HF image processor
            processor = preprocess

            def preprocess(image):
                return processor(images=image, return_tensors="pt")["pixel_values"][0]

        self = cls._wrapping(model, label, values)
        self.preprocess, self.n_classes, self.config = preprocess, n_classes, heads
        self.backend = "timm" if timm_model else "hf"
        self.input_size = self._input_size()
        self.locate_pre_outs(self.config, known)
        return self

    def data_connection(self) -> tuple:
        return (self.preprocess, self.n_classes)

    def _input_size(self) -> tuple[int, int]:
        """(height, width) the model takes: what its own preprocessing makes of an image."""
        from PIL import Image

        try:
            return tuple(self.preprocess(Image.new("RGB", (256, 256))).shape[-2:])
        except Exception as exc:
            raise AblateError(
                f"the model's image preprocessing fails on an RGB image ({exc}); "
                "VisionAblation evaluates image classifiers that take pixel values"
            ) from exc

    def example_forward(self, n: int) -> torch.Tensor:
        pixels = torch.zeros(n, 3, *self.input_size)
        return self.logits_and_labels({"pixel_values": pixels, "label": None})[0]

    def logits_and_labels(self, batch):
        x = batch["pixel_values"].to(next(self.model.parameters()).dtype)
        logits = self.model(x) if self.backend == "timm" else self.model(pixel_values=x).logits  # [batch, classes]
        return logits, batch["label"]

    def random_inputs(self, source: str, n: int, seed: int, data):
        if source == "random_pixels":
            return RandomPixels(n, self.input_size, self.preprocess, seed)
        return data.random_inputs(source, n, seed)


def _timm_in_memory(model, preprocess, name: str | None):
    """(preprocess, classes, tested layout, heads config, label) of a timm classifier in memory; its own
    evaluation transform where ``preprocess`` is None."""
    if not hasattr(model, "num_classes"):
        raise AblateError(
            f"VisionAblation.from_model takes a timm or Hugging Face image classifier, not a {type(model).__name__}"
        )
    if preprocess is None:
        from timm.data import create_transform, resolve_data_config

        settings = resolve_data_config({}, model=model)
        size = getattr(getattr(model, "patch_embed", None), "img_size", None)  # what the model was built for
        if size is not None and tuple(settings["input_size"][1:]) != tuple(size):
            settings.update(input_size=(3, *size), crop_pct=1.0)
        preprocess = create_transform(**settings, is_training=False)
    label = name or str(getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__)
    return preprocess, model.num_classes, TIMM_ARCHITECTURE, None, label


def _hf_in_memory(model, config, preprocess, name: str | None, family: str):
    """The same for a Hugging Face image classifier in memory (``preprocess`` is required)."""
    check_family(config, family)
    if preprocess is None:
        raise AblateError(
            "VisionAblation.from_model needs preprocess= for a Hugging Face model: its image "
            "processor (AutoImageProcessor) or a function from a PIL image to a tensor"
        )
    label = name or str(getattr(config, "name_or_path", "") or "").rstrip("/") or config.model_type
    known = HF_VISION_ARCHITECTURES.get(config.model_type)
    return preprocess, config.num_labels, known, heads_config(config, "vision"), label


class RandomPixels(torch.utils.data.Dataset):
    """Images of uniformly random RGB pixels, passed through the model's own preprocessing."""

    def __init__(self, n: int, size: tuple[int, int], preprocess, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.pixels = torch.randint(0, 256, (n, size[0], size[1], 3), dtype=torch.uint8, generator=gen)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        image = Image.fromarray(self.pixels[i].numpy(), mode="RGB")
        return {"pixel_values": self.preprocess(image), "label": -100, "index": i}
