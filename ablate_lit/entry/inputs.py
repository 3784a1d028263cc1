"""What ``run()`` is given, turned into what a CLI run is made of: the model family, the family's
LightningModule (from a name or a model in memory) and its DataModule (from a path or data in memory)."""

from __future__ import annotations

import json
from pathlib import Path

from ablate_lit.common.errors import AblateError
from ablate_lit.common.families import FAMILIES


def family_of(model, family: str | None) -> str:
    """``family`` checked, or the family read from the model (its name's config, or the object)."""
    if family is not None:
        if family not in FAMILIES:
            raise AblateError(f"unknown family '{family}'; use one of: {', '.join(FAMILIES)}")
        return family
    names = _named_architectures(str(model)) if isinstance(model, (str, Path)) else _object_architectures(model)
    if names in FAMILIES:
        return names
    heads = {f.name: f.auto_class.removeprefix("AutoModelFor") for f in FAMILIES.values()}  # MaskedLM, ...
    return next((name for name, head in heads.items() if name != "causal_lm" and head in names), "causal_lm")


def _named_architectures(text: str) -> str:
    """The architecture class names of a model folder or hub id (or a family, where that is already clear)."""
    local = Path(text).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        try:
            config = json.loads((local / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        return (
            "vision" if "architecture" in config else " ".join(config.get("architectures") or [])
        )  # timm: save_for_hf
    try:
        import transformers

        return " ".join(transformers.AutoConfig.from_pretrained(text).architectures or [])
    except Exception:  # out of reach (offline), or not a Hugging Face model: a timm name?
        import timm

        arch = text.removeprefix("timm/").split(".")[0]
        return "vision" if not local.exists() and timm.is_model(arch) else "causal_lm"


def _object_architectures(model) -> str:
    if isinstance(model, type) or not hasattr(model, "parameters") or not callable(model):
        raise AblateError(
            f"model must be a hub id, a local folder, or a Hugging Face or timm model object, not a "
            f"{type(model).__name__}"
        )
    if hasattr(model, "pretrained_cfg"):
        return "vision"
    if not hasattr(model, "config"):
        raise AblateError(
            f"a {type(model).__name__} is neither a Hugging Face model (no .config) nor a timm model; "
            "pass a transformers or timm model, or its hub id or folder"
        )
    return type(model).__name__


def build_module(module_cls, model, family: str, tokenizer, preprocess, settings: dict):
    """The family's LightningModule around ``model`` (in memory) or loaded from its name."""
    if not isinstance(model, (str, Path)):
        if isinstance(tokenizer, (str, Path)):  # a folder or hub id: loaded as the CLI would
            from ablate_lit.families.loading.hf import load_tokenizer

            tokenizer = load_tokenizer(str(tokenizer), None, given=True)
        settings = {**settings, "name": settings.get("model_name")}
        settings.pop("model_name", None)
        return module_cls.from_model(model, preprocess if family == "vision" else tokenizer, **settings)
    if tokenizer is not None:
        if not isinstance(tokenizer, (str, Path)):
            raise AblateError(
                "for a model given by name, pass tokenizer as a folder or hub id (or load the "
                "model and pass both objects)"
            )
        settings = {**settings, "tokenizer": str(tokenizer)}
    return module_cls(str(model), **settings)


def build_datamodule(data_cls, data, family: str, settings: dict, module):
    """The family's DataModule over ``data`` (a path or hub name, or data in memory). Text windows
    default to the model's longest context up to 1024 tokens (the CLI's default is 1024)."""
    settings = datamodule_settings(data_cls, data, family, settings, module)
    return data_cls(str(data) if isinstance(data, Path) else data, **settings)


def datamodule_settings(data_cls, data, family: str, settings: dict, module) -> dict:
    """The DataModule's keyword arguments besides ``data`` (those ``build_datamodule`` passes)."""
    from torch.utils.data import DataLoader

    settings = dict(settings)
    if "dataset_name" in settings:
        settings["name"] = settings.pop("dataset_name")
    if isinstance(data, DataLoader):
        if family != "causal_lm":
            raise AblateError(
                "a DataLoader of token windows serves causal LMs; pass texts (a list of strings or a "
                "datasets.Dataset) for other families"
            )
        settings.setdefault("prepend_bos", False)
        settings.setdefault("context_length", _window_length(data))
        if settings["context_length"] is None:
            settings.pop("context_length")
    elif family != "vision" and "context_length" not in settings and data_cls.__name__ != "TaskData":
        settings["context_length"] = min(1024, module.max_positions() or 1024)
    return settings


def _window_length(loader) -> int | None:
    """The length of a DataLoader's token windows (checked in full when they are read)."""
    first = next(iter(loader), None)
    if first is None:
        raise AblateError("the DataLoader gives no batch; pass one with token windows")
    if isinstance(first, dict) and "input_ids" not in first:
        raise AblateError(
            f"the DataLoader's batches have no 'input_ids' (keys: {', '.join(map(str, first))}); give "
            "token windows as input_ids [batch, context_length]"
        )
    ids = first["input_ids"] if isinstance(first, dict) else first[0] if isinstance(first, (list, tuple)) else first
    return int(ids.shape[-1]) if hasattr(ids, "shape") and len(ids.shape) == 2 else None
