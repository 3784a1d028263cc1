"""A cheap fingerprint of a model's weights (part of every run's identity and cache key)."""

from __future__ import annotations

import hashlib
import json

import torch

from ablate_lit.common.private import accelerate_hook


def weights_fingerprint(model, projections: list) -> str:
    """Identifies ``model``'s weights cheaply: its class, config, dtype, and the sums of 16 evenly
    spaced parameter tensors and of every attention out-projection in ``projections`` (the modules
    an ablation acts on, so that a model differing there differs here). A quantized model's config
    holds its quantization settings, and its quantized weights are summed as stored (``_sums``)."""
    h = hashlib.sha1(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    else:  # timm
        h.update(json.dumps(getattr(model, "pretrained_cfg", {}), sort_keys=True, default=str).encode())
    h.update(str(next(model.parameters()).dtype).encode())
    named = dict(model.named_parameters())
    proj_ids = {id(p) for p in projections}
    projections = [n + ".weight" for n, m in model.named_modules() if id(m) in proj_ids]
    for name in sorted(named)[:: max(1, len(named) // 16)] + projections:
        t = named.get(name)
        if t is not None and t.device.type == "meta":  # offloaded by a device map: read where accelerate keeps it
            t = _offloaded(model, name)
        if t is not None:
            h.update(f"{name}:{_sums(t)}".encode())
    return h.hexdigest()[:16]


def _offloaded(model, name: str):
    """The value of parameter ``name`` that a device map offloaded (to the CPU or disk), or None."""
    owner, _, key = name.rpartition(".")
    hook = accelerate_hook(model.get_submodule(owner))
    weights = getattr(hook, "weights_map", None)
    try:
        return None if weights is None else weights[key]
    except KeyError:
        return None


def _sums(t) -> str:
    """Sum and absolute sum of a tensor; of each inner tensor (data, scales, zero points) of a
    quantized tensor subclass (quanto, torchao), whose own ``sum`` would dequantize or fail."""
    t = t.detach()
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return ";".join(f"{n}={_sums(getattr(t, n))}" for n in names)
    t = torch.Tensor(t.data) if type(t) is not torch.Tensor else t
    t = t.double()
    return f"{t.sum().item():.10e}:{t.abs().sum().item():.10e}"
