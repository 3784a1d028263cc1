"""Small builders shared by the tests."""

from __future__ import annotations

import lightning as L

from ablate_lit import CausalLMAblation, TextData


def trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_checkpointing=False, enable_model_summary=False)


def module(path, **kwargs) -> CausalLMAblation:
    return CausalLMAblation(str(path), **kwargs)


def data(corpus, mod, **kwargs) -> TextData:
    settings = dict(max_tokens=120, calib_tokens=256, context_length=16, batch_size=4)
    settings.update(kwargs)
    d = TextData(str(corpus), **settings)
    d.connect(mod.tokenizer)
    d.setup("test")
    return d


def with_zero_inputs(pre_outs, fn):
    """fn() while every out-projection's forward is fed zeros, patched by hand (no ablate_lit hooks)."""
    import torch

    saved = [(p.module, p.module.forward) for p in pre_outs]
    for m, forward in saved:
        m.forward = lambda x, _f=forward: _f(torch.zeros_like(x))
    try:
        return fn()
    finally:
        for m, forward in saved:
            m.forward = forward
