"""Saving an ablated model so that plain ``from_pretrained`` (or timm) loads it as it was evaluated.

The constants are folded into the out-projections first (``ablation.fold.fold_into``): the ablated
input columns are zero and W[:, S] c_S is in the bias. Where a projection had no bias, the config must
be told to build one (``attention_bias``, ``mlp_bias``, ...); every bias the changed config then
expects and the model lacks (q, k, v of every layer, say) is added as zeros, and the saved parameter
names are checked against an empty model built from the saved config, so the folder loads exactly.

Whole heads are not removed: transformers 5 has no head pruning (``prune_heads`` left in v5), and a
config holds one head count for every layer, so a model with fewer heads in some layers would not
load. The export names the heads that are ablated whole.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ablate_lit.common.errors import AblateError
from ablate_lit.common.families import FAMILIES
from ablate_lit.families.loading.quantization import dequantised_gguf

BIAS_FLAGS = {"attn": ("attention_bias", "bias", "use_bias", "qkv_bias"), "mlp": ("mlp_bias", "bias", "use_bias")}
"""Config settings that give a site's projections a bias, tried in this order."""

NO_HEAD_PRUNING = (
    "columns zeroed, heads kept: transformers 5 has no head pruning, and a config holds one head count for every layer"
)


def save_ablated(module, out: Path, new_bias: list[int], site: str) -> dict:
    """Write ``module``'s (already folded) model to ``out`` with its tokenizer or preprocessing;
    returns what the export record says about the format. Every file gets the mode the umask gives
    new files (safetensors writes the weights through a private temporary file, mode 0600)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = _write(module, out, new_bias, site)
    umask = os.umask(0)
    os.umask(umask)
    for path in out.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
    return written


def _write(module, out: Path, new_bias: list[int], site: str) -> dict:
    if module.family == "vision" and getattr(module, "backend", "hf") == "timm":
        if new_bias:
            raise AblateError(
                "this timm model's out-projections have no bias to hold the constants; export zero "
                "(which needs none) or a Hugging Face ViT"
            )
        from timm.models import save_for_hf

        save_for_hf(module.model, str(out), safe_serialization=True)
        return {"format": "timm (timm.create_model('local-dir:<folder>', pretrained=True))"}
    if new_bias:
        _give_biases(module, site)
    with _without_gguf_marker(module.model):
        module.model.save_pretrained(out)
        _check_loadable(module, out)
    if module.family == "vision":
        import transformers

        transformers.AutoImageProcessor.from_pretrained(module.settings.source.name_or_path).save_pretrained(out)
    else:
        module.tokenizer.save_pretrained(out)
    return {"format": f"Hugging Face (transformers.{FAMILIES[module.family].auto_class}.from_pretrained)"}


@contextmanager
def _without_gguf_marker(model):
    """A model read from a GGUF file holds dequantised float weights, yet its config keeps a ``gguf``
    quantization config (and the model a quantizer) that ``save_pretrained`` refuses; the export is a
    plain float model, so it is saved without them (and they are put back)."""
    config = model.config
    if not dequantised_gguf(config):
        yield
        return
    marker, quantizer = config.quantization_config, getattr(model, "hf_quantizer", None)
    model.hf_quantizer = None
    del config.quantization_config
    try:
        yield
    finally:
        model.hf_quantizer, config.quantization_config = quantizer, marker


def _skeleton(family: str, config):
    import transformers

    with torch.device("meta"):
        return getattr(transformers, FAMILIES[family].auto_class).from_config(config)


def _give_biases(module, site: str) -> None:
    """Turn on the config's bias setting for ``site`` and add the zero biases it implies."""
    model, config = module.model, module.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    flag = next((f for f in BIAS_FLAGS[site] if isinstance(getattr(text, f, None), bool)), None)
    if flag is None:
        raise AblateError(
            f"'{config.model_type}' out-projections have no bias, and its config has no setting for one, so the "
            "folded constants cannot be saved; export zero (which needs no bias) or ablate with hooks"
        )
    setattr(text, flag, True)
    mine = dict(model.named_parameters())
    for name, param in _skeleton(module.family, config).named_parameters():
        if name.endswith(".bias") and name not in mine:
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            weight = owner.weight
            owner.bias = torch.nn.Parameter(
                torch.zeros(param.shape, dtype=weight.dtype, device=weight.device), requires_grad=False
            )


def _check_loadable(module, out: Path) -> None:
    """Every saved parameter is one that ``from_pretrained`` of ``out`` builds, and none is missing."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(out)
    expected = set(_skeleton(module.family, config).state_dict())
    saved = set(module.model.state_dict())
    if saved - expected:
        raise AblateError(
            f"the exported folder would load without {sorted(saved - expected)[:3]} (its config builds no such "
            "parameters); export zero or ablate with hooks"
        )
