"""Quantized and dispatched loading: ``--model.quantization`` and ``--model.device_map``.

A quantization is a Hugging Face quantization config: a preset name below, a dict as a model's
config.json stores it (``{quant_method: bitsandbytes, load_in_4bit: true, ...}``), or (from Python)
the config object itself. The pre-outs stay ordinary activations (the input of a quantized
out-projection is not quantized), so hooks, statistics and every method act on them unchanged;
fold mode, which edits the out-projection's weight, is refused on quantized weights.

A device map (``auto``, ``balanced``, ``{"model.layers.0": 0, ..., "lm_head": "cpu"}``; ``disk``
entries go to ``offload_folder``) places the model itself, with accelerate's hooks moving activations
between its devices: Lightning then moves everything but the model. That works in one process: several
processes (DDP, FSDP2) would each place the whole model on the same devices, and a true half precision
would cast weights that are already placed, so both are refused (``check_placement``).
"""

from __future__ import annotations

import importlib.util

import torch

from ablate_lit.common.errors import AblateError, reason_of
from ablate_lit.common.paths import make_writable_folder
from ablate_lit.common.private import evaluate_under_no_grad
from ablate_lit.sites.pre_out import is_projection


def _bnb(**kwargs):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**kwargs)


def _quanto(weights: str):
    from transformers import QuantoConfig

    return QuantoConfig(weights=weights)


def _torchao_int8():
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


PRESETS = {
    "quanto-int8": (lambda: _quanto("int8"), "optimum.quanto", "optimum-quanto"),
    "quanto-int4": (lambda: _quanto("int4"), "optimum.quanto", "optimum-quanto"),
    "torchao-int8": (_torchao_int8, "torchao", "torchao"),
    "bnb-8bit": (lambda: _bnb(load_in_8bit=True), "bitsandbytes", "bitsandbytes"),
    "bnb-4bit": (
        lambda: _bnb(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16),
        "bitsandbytes",
        "bitsandbytes",
    ),
}
"""name -> (config maker, the module it needs, the package that provides it)."""

_PACKAGES = {"quanto": ("optimum.quanto", "optimum-quanto"), "torchao": ("torchao", "torchao")}
_PACKAGES.update({"bitsandbytes": ("bitsandbytes", "bitsandbytes"), "hqq": ("hqq", "hqq")})


def _needs(module: str, package: str, what: str) -> None:
    if package == "bitsandbytes" and not torch.cuda.is_available():
        raise AblateError(
            "⟨--model.quantization⟩ bitsandbytes runs on CUDA GPUs, and none is here; on CPU use quanto-int8, "
            "quanto-int4 or torchao-int8"
        )
    if importlib.util.find_spec(module) is None:
        raise AblateError(f"⟨--model.quantization⟩ {what} needs {package}; run: pip install {package}")


def quantization_config(spec):
    """The Hugging Face quantization config ``spec`` names (None: no quantization)."""
    if spec is None:
        return None
    from transformers.utils.quantization_config import QuantizationConfigMixin

    if isinstance(spec, QuantizationConfigMixin):
        config = spec
    elif isinstance(spec, str):
        if spec not in PRESETS:
            raise AblateError(
                f"unknown ⟨--model.quantization⟩ '{spec}'; use one of {', '.join(PRESETS)}, or a dict as a "
                "model's config.json stores it ({quant_method: bitsandbytes, load_in_4bit: true, ...})"
            )
        make, module, package = PRESETS[spec]
        _needs(module, package, spec)
        config = make()
    elif isinstance(spec, dict):
        from transformers.quantizers.auto import AutoQuantizationConfig

        method = str(spec.get("quant_method", ""))
        if method in _PACKAGES:
            _needs(*_PACKAGES[method], method)
        try:
            config = AutoQuantizationConfig.from_dict(dict(spec))
        except (ValueError, TypeError, KeyError) as exc:
            raise AblateError(f"⟨--model.quantization⟩ {spec}: {reason_of(exc)}") from exc
    else:
        raise AblateError(f"⟨--model.quantization⟩ takes a preset name or a dict, not a {type(spec).__name__}")
    if is_bnb(config):
        _needs("bitsandbytes", "bitsandbytes", "bitsandbytes")
    return config


def quant_method(quantization) -> str:
    """``bitsandbytes``, ``quanto``, ``gguf``, ...: the method of a quantization config (object or dict,
    as a model config's ``quantization_config`` holds either); '' for none."""
    method = (
        quantization.get("quant_method")
        if isinstance(quantization, dict)
        else getattr(quantization, "quant_method", None)
    )
    return "" if method is None else str(getattr(method, "value", method))


def dequantised_gguf(config) -> bool:
    """A model config that still names the ``gguf`` quantization of the file its float weights were read
    from (the folder ``loading.hf`` converts a GGUF file into, like the demo's): nothing in it is quantized."""
    return quant_method(getattr(config, "quantization_config", None)) == "gguf"


def is_bnb(quantization) -> bool:
    return "bitsandbytes" in quant_method(quantization)


def is_quantized_weight(weight) -> bool:
    """A weight stored quantized: a tensor subclass (quanto, torchao), or an integer/packed tensor (bitsandbytes)."""
    return type(weight) not in (torch.Tensor, torch.nn.Parameter) or not weight.dtype.is_floating_point


def _check_writable(folder) -> None:
    """``--model.offload_folder``: a folder the offloaded weights can be written to (checked before loading,
    whose own failure would read as a corrupt model)."""
    try:
        make_writable_folder(folder)
    except OSError as exc:
        raise AblateError(
            f"⟨--model.offload_folder⟩ '{folder}' cannot be written ({reason_of(exc)}); pass a folder you can write"
        ) from exc


def check_device_map(model, device_map) -> None:
    """Every key of a dict ``--model.device_map`` names a module of ``model`` (accelerate ignores one that
    does not, and the part it meant goes elsewhere without a word)."""
    if not isinstance(device_map, dict):
        return
    for key in device_map:
        if key == "":
            continue
        try:
            model.get_submodule(key)
        except AttributeError:
            top = ", ".join(name for name, _ in model.named_children())
            raise AblateError(
                f"⟨--model.device_map⟩ names '{key}', which is not a module of {type(model).__name__} (its "
                f"top-level modules: {top}); fix the key"
            ) from None


def check_quantized(model, quantization) -> None:
    """Refuse a model that ``quantization`` left as it was: a run stored as quantized must be one. Some
    presets handle only ``nn.Linear`` (GPT-2's projections are transformers' Conv1D) or skip weights of
    shapes they cannot pack."""
    weights = [m.weight for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
    if not any(is_quantized_weight(w) for w in weights):
        kinds = sorted({type(m).__name__ for m in model.modules() if is_projection(m)})
        raise AblateError(
            f"⟨--model.quantization⟩ {quantization if isinstance(quantization, str) else quant_method(quantization)} "
            f"quantized none of {type(model).__name__}'s weights (its projections: {', '.join(kinds) or 'none'}); "
            "use another preset, or drop ⟨--model.quantization⟩ to run it unquantized"
        )


def loading_kwargs(placement) -> dict:
    """The extra ``from_pretrained`` arguments for ``placement``'s quantization and device map. A bitsandbytes
    model cannot move after loading, so it is placed on this process's GPU unless a map says otherwise."""
    import os

    quantization, device_map, offload_folder = placement.quantization, placement.device_map, placement.offload_folder
    kwargs = {}
    config = quantization_config(quantization)
    if config is not None:
        kwargs["quantization_config"] = config
    if device_map is None and is_bnb(config):
        device_map = {"": int(os.environ.get("LOCAL_RANK", 0))}
    if device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise AblateError("⟨--model.device_map⟩ needs accelerate; run: pip install accelerate")
        kwargs["device_map"] = device_map
        if offload_folder:
            _check_writable(offload_folder)
            kwargs["offload_folder"] = offload_folder
    return kwargs


def check_placement(trainer, module, sharded: bool) -> None:
    """Refuse what cannot work with a quantized model or one that placed itself (a device map, bitsandbytes)."""
    placement = module.settings.placement
    mapped, quantized = placement.device_map is not None, placement.quantization is not None
    if not (mapped or quantized):
        return
    where = "its ⟨--model.device_map⟩" if mapped else "⟨--model.quantization⟩"
    if sharded:
        raise AblateError(
            f"a sharding strategy splits weights that {where} has already placed or packed; use "
            "⟨--trainer.strategy⟩ auto (one process) or ddp"
        )
    if mapped and trainer.world_size > 1:
        raise AblateError(
            f"a model placed by {where} runs in one process (each of {trainer.world_size} processes would "
            "place the whole model on the same devices); use ⟨--trainer.devices 1⟩, or drop the device map "
            "for DDP over replicas"
        )
    if quantized:
        evaluate_under_no_grad(trainer)  # (gradients stay off; quanto's int4 kernels save tensors)
    if str(trainer.precision).endswith("-true") and str(trainer.precision) != "32-true":
        raise AblateError(
            f"precision {trainer.precision} casts the weights, which {where} has already placed or packed; load them "
            "in that dtype with ⟨--model.dtype bfloat16⟩ and use ⟨--trainer.precision⟩ 32 or bf16-mixed"
        )
    if module.self_placed and not mapped:  # bitsandbytes: placed on this process's GPU (LOCAL_RANK) at load
        placed, root = next(module.model.parameters()).device, trainer.strategy.root_device
        if placed != root:
            raise AblateError(
                f"bitsandbytes loaded the model on {placed} (this process's LOCAL_RANK), but the trainer runs on "
                f"{root}; count ⟨--trainer.devices⟩ from GPU 0 (CUDA_VISIBLE_DEVICES chooses which GPUs), or pass "
                f"⟨--model.device_map⟩ '{{\"\": {root.index}}}'"
            )
