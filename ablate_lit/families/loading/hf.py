"""Loading shared by the families: Hugging Face models from hub names, folders or GGUF files.

The architecture is checked before any weight is read: the config alone says whether the family's
head exists for it, and an empty skeleton of the model (on the meta device, no memory) says whether
its pre-outs can be located. A refusal therefore costs no download and no GGUF conversion.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from ablate_lit.common import progress
from ablate_lit.common.errors import AblateError, reason_of
from ablate_lit.common.families import FAMILIES
from ablate_lit.common.paths import looks_like_path
from ablate_lit.common.private import auto_class_takes, gguf_bar_silenced
from ablate_lit.families.loading.quantization import (
    check_device_map,
    check_quantized,
    dequantised_gguf,
    loading_kwargs,
)
from ablate_lit.families.loading.settings import Layout, Placement, Source
from ablate_lit.families.locate.layout import locate
from ablate_lit.sites.pre_out import Architecture

log = logging.getLogger(__name__)


def hub_error(name: str, exc: Exception, what: str, flag: str) -> AblateError:
    """One line for a failed load: a local folder's files are unreadable, or a hub name was not reachable."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if os.path.exists(os.path.expanduser(name)):
        return AblateError(
            f"could not read the {what} in '{name}' ({reason[:160]}); its files may be incomplete or "
            "corrupt: save or download it again"
        )
    return AblateError(
        f"could not load {what} '{name}' ({reason[:160]}); without internet, download it elsewhere "
        f"and pass the local folder with {flag}"
    )


def heads_config(config, family: str):
    """The (sub-)config describing the ablated tower: the vision config of CLIP-like models, else the text config."""
    if family == "vision":
        return getattr(config, "vision_config", None) or config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_family(config, family: str) -> None:
    """Refuse a model type that has no head of this family in transformers, naming the family that fits."""
    problem = family_problem(config, family)
    if problem:
        raise AblateError(problem)


def family_problem(config, family: str) -> str | None:
    """Why a model of ``config``'s type cannot be evaluated by ``family`` (naming the family that fits), or None."""

    auto = FAMILIES[family].auto_class
    if family == "causal_lm" and auto_class_takes("AutoModelForMaskedLM", config) and not config.is_decoder:
        return (
            f"'{config.model_type}' is a bidirectional encoder (transformers gives it a masked-LM head); "
            "use ⟨family=masked_lm⟩"
        )
    if auto_class_takes(auto, config):
        return None
    fits = [
        other.name for other in FAMILIES.values() if other.name != family and auto_class_takes(other.auto_class, config)
    ]
    if "masked_lm" in fits and not getattr(config, "is_decoder", False):
        fits.remove("masked_lm")  # an encoder: its causal-LM head is a decoder mode it is not trained for
        fits.insert(0, "masked_lm")
    hint = f"use ⟨family={fits[0]}⟩" if fits else "ablate_lit evaluates causal LMs, masked LMs and image classifiers"
    return f"'{config.model_type}' models have no {family.replace('_', ' ')} head in transformers ({auto}); {hint}"


def check_layout(config, family: str, known: Architecture | None, layout) -> None:
    """Locate the pre-outs in an empty skeleton of the model (meta device: no weights, no memory), with
    every layout option the user gave (``layout``: blocks, out_proj, head_dim), as the real load will."""
    import transformers

    try:
        with torch.device("meta"):
            skeleton = getattr(transformers, FAMILIES[family].auto_class).from_config(config)
    except Exception as exc:  # some models cannot be built empty; the real load checks them
        log.debug("no meta skeleton for %s: %s", config.model_type, exc)
        return
    locate(skeleton, heads_config(config, family), known, layout.blocks, layout.out_proj, layout.head_dim)


def gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("ABLATE_LIT_CACHE", Path.home() / ".cache" / "ablate_lit"))
    return root / "gguf" / f"{gguf_path.stem}-{key}"


def _convert_gguf(folder: str, gguf_file: str, check) -> str:
    """Dequantise a GGUF file once into a normal HF folder (loading GGUF takes ~30 s, the copy <1 s).
    ``check(config)`` runs on the GGUF's config before anything is converted."""
    import transformers

    gguf_path = Path(folder) / gguf_file
    if not gguf_path.is_file():
        raise AblateError(f"GGUF file '{gguf_path}' not found; check ⟨--model.gguf_file⟩ and ⟨--model.name_or_path⟩")
    target = gguf_cache_dir(gguf_path)
    if (target / "config.json").is_file():
        return str(target)
    try:
        check(transformers.AutoConfig.from_pretrained(folder, gguf_file=gguf_file))
        with progress.step(f"converting {gguf_file}", detail=f"{gguf_path} once into {target}"), gguf_bar_silenced():
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
            loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    except ImportError as exc:
        raise AblateError(f"loading GGUF needs extra packages ({exc}); run: pip install 'ablate_lit[demo]'") from exc
    except (OSError, ValueError) as exc:
        if isinstance(exc, AblateError):
            raise
        raise AblateError(f"could not read GGUF file '{gguf_path}' ({str(exc).strip()[:160]})") from exc
    # A GGUF-loaded model will not save_pretrained; a fresh copy from its config will.
    copy = transformers.AutoModelForCausalLM.from_config(loaded.config)
    copy.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    copy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    return str(target)


def load_hf(source: Source, family: str, registry: dict[str, Architecture], layout: Layout, placement: Placement):
    """(model, the folder or hub id it came from, tested architecture or None) from a hub name, a local
    folder or a GGUF file (``source``), quantized and placed as ``placement`` says (``loading.quantization``).
    The family and the ``layout`` are checked on the config and an empty skeleton before any weight is read."""
    import transformers

    name_or_path, gguf_file, revision = source.name_or_path, source.gguf_file, source.revision

    def check(config) -> None:
        check_family(config, family)
        check_layout(config, family, registry.get(config.model_type), layout)

    path = os.path.expanduser(name_or_path)
    if looks_like_path(name_or_path) and not os.path.exists(path):
        raise AblateError(
            f"model folder '{name_or_path}' not found; pass an existing folder or a hub name with "
            "⟨--model.name_or_path⟩"
        )
    if gguf_file:
        path = _convert_gguf(path, gguf_file, check)
    try:
        config = transformers.AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise hub_error(name_or_path, exc, "model", "⟨--model.name_or_path⟩") from exc
    check(config)
    if placement.quantization is not None and dequantised_gguf(config):
        del config.quantization_config  # float weights read from a GGUF file: quantize those as they are
    kwargs = {"dtype": resolve_dtype(source.dtype), "revision": revision}
    kwargs.update(loading_kwargs(placement))
    if source.attn_implementation:
        kwargs["attn_implementation"] = source.attn_implementation
    try:
        with progress.step(f"loading {Path(str(name_or_path)).name or name_or_path}"):
            model = getattr(transformers, FAMILIES[family].auto_class).from_pretrained(path, config=config, **kwargs)
    except AblateError:
        raise
    except Exception as exc:  # OSError, ValueError, safetensors' own error for a truncated file, ...
        quantization, device_map = placement.quantization, placement.device_map
        if (quantization is not None or device_map is not None) and not isinstance(exc, OSError):
            raise AblateError(
                f"could not load '{name_or_path}' with ⟨--model.quantization⟩ {quantization} / ⟨--model.device_map⟩ "
                f"{device_map} ({reason_of(exc)}); try another preset or no device map"
            ) from exc
        raise hub_error(name_or_path, exc, "model", "⟨--model.name_or_path⟩") from exc
    model.eval()
    model.requires_grad_(False)
    if placement.quantization is not None:
        check_quantized(model, placement.quantization)
    check_device_map(model, placement.device_map)
    return model, path, registry.get(config.model_type)


def check_generator(name: str) -> None:
    """``--model.generator`` must name a causal LM: checked from its config when the model loads, not
    when resample:generated first needs it."""
    import transformers

    path = os.path.expanduser(name)
    if looks_like_path(name) and not os.path.exists(path):
        raise AblateError(f"⟨--model.generator⟩ '{name}' not found; pass a causal LM's folder or hub id")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise hub_error(name, exc, "generator", "⟨--model.generator⟩") from exc
    problem = family_problem(config, "causal_lm")
    if problem:
        raise AblateError(f"⟨--model.generator⟩ '{name}' must be a causal LM to write text: {problem}")


PROBE = "The quick brown fox jumps over the lazy dog, and 42 others watched."


def load_text_tokenizer(source: Source, path: str):
    """The tokenizer of a text model loaded from ``path`` (``load_hf``): ``source.tokenizer`` where one is
    named, else the model's own (at the model's revision)."""
    if source.tokenizer:
        return load_tokenizer(source.tokenizer, None, given=True)
    return load_tokenizer(path, source.revision)


def load_tokenizer(path: str, revision: str | None = None, given: bool = False):
    """The tokenizer of a model folder or hub id (or of ``--model.tokenizer``), checked to work:
    it must turn English text into several known tokens. A folder saved without its tokenizer files
    is refused here, before any text is read."""
    import transformers

    where = f"⟨--model.tokenizer⟩ '{path}'" if given else f"'{path}'"
    fix = "pass the tokenizer's folder or hub id with ⟨--model.tokenizer PATH⟩ (e.g. the base model's)"
    if given and looks_like_path(path) and not os.path.exists(os.path.expanduser(path)):
        raise AblateError(f"{where} not found; {fix}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise AblateError(f"no usable tokenizer in {where} ({reason}); {fix}") from exc
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    unknown = tokenizer.unk_token_id
    if len(tokenizer) < 2 or len(ids) < 3 or all(i == unknown for i in ids):
        raise AblateError(
            f"the tokenizer in {where} is empty (it turns English text into {len(ids)} known tokens); {fix}"
        )
    return tokenizer


def resolve_dtype(name: str) -> torch.dtype | str:
    table = {
        "auto": "auto",
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        raise AblateError(f"unknown dtype '{name}'; use one of {', '.join(table)}")
    return table[name]
