"""Loading shared by the families: Hugging Face models from hub names, folders or GGUF files."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ablate_lit.errors import AblateError
from ablate_lit.families.base import Architecture, looks_like_path, resolve_dtype

log = logging.getLogger(__name__)


def architecture_for(model_type: str, registry: dict[str, Architecture], family: str) -> Architecture:
    if model_type not in registry:
        raise AblateError(
            f"unsupported architecture '{model_type}' for the {family} family; supported: {', '.join(sorted(registry))}"
        )
    return registry[model_type]


def hub_error(name: str, exc: Exception, what: str, flag: str) -> AblateError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return AblateError(
        f"could not load {what} '{name}' ({reason[:160]}); without internet, download it elsewhere and pass the local folder with {flag}"
    )


def gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("ABLATE_LIT_CACHE", Path.home() / ".cache" / "ablate_lit"))
    return root / "gguf" / f"{gguf_path.stem}-{key}"


def _convert_gguf(folder: str, gguf_file: str):
    """Dequantise a GGUF file once into a normal HF folder (loading GGUF takes ~30 s, the copy <1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(folder) / gguf_file
    if not gguf_path.is_file():
        raise AblateError(f"GGUF file '{gguf_path}' not found; check --model.gguf_file and --model.name_or_path")
    target = gguf_cache_dir(gguf_path)
    if (target / "config.json").is_file():
        return str(target)
    log.info("converting %s once into %s", gguf_path, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    except ImportError as exc:
        raise AblateError(f"loading GGUF needs extra packages ({exc}); run: pip install 'ablate_lit[demo]'") from exc
    # A GGUF-loaded model will not save_pretrained; a fresh copy from its config will.
    copy = AutoModelForCausalLM.from_config(loaded.config)
    copy.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    copy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    return str(target)


def load_hf(name_or_path: str, auto_class: str, registry: dict[str, Architecture], family: str,
            gguf_file: str | None = None, dtype: str = "float32", revision: str | None = None,
            attn_implementation: str | None = None):
    """(model, tokenizer, architecture) from a hub name or local folder; the model type is checked first."""
    import transformers

    path = os.path.expanduser(name_or_path)
    if looks_like_path(name_or_path) and not os.path.exists(path):
        raise AblateError(f"model folder '{name_or_path}' not found; pass an existing folder or a hub name with --model.name_or_path")
    if gguf_file:
        path = _convert_gguf(path, gguf_file)
    try:
        config = transformers.AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise hub_error(name_or_path, exc, "model", "--model.name_or_path") from exc
    arch = architecture_for(config.model_type, registry, family)
    kwargs = {"dtype": resolve_dtype(dtype), "revision": revision}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = getattr(transformers, auto_class).from_pretrained(path, config=config, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise hub_error(name_or_path, exc, "model", "--model.name_or_path") from exc
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, arch
