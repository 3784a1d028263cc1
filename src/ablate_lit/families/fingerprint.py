"""A cheap fingerprint of a model's weights (part of every run's identity and cache key)."""

from __future__ import annotations

import hashlib
import json


def weights_fingerprint(model, projections: list) -> str:
    """Identifies ``model``'s weights cheaply: its class, config, dtype, and the sums of 16 evenly
    spaced parameter tensors and of every attention out-projection in ``projections`` (the modules
    an ablation acts on, so that a model differing there differs here)."""
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
        if t is not None:
            t = t.detach().double()
            h.update(f"{name}:{t.sum().item():.10e}:{t.abs().sum().item():.10e}".encode())
    return h.hexdigest()[:16]
