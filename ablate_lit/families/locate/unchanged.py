"""Leave a model exactly as the user gave it after a check forward pass.

A forward pass may change the model it runs through: block-sparse BigBird, given fewer tokens than
its sparse pattern needs, switches itself to full attention for good (it replaces its attention
modules and an attribute), and every later row would describe another model. ``Unchanged`` records
what a forward pass can change (each module's public attributes and children, every buffer, the
config) and puts it back afterwards, naming what the pass had changed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ablate_lit.common.private import children_and_buffers


def _differs(old, new) -> bool:
    if old is new:
        return False
    if isinstance(old, torch.Tensor) or isinstance(new, torch.Tensor):
        return not (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and old.shape == new.shape)
    try:
        return bool(old != new)
    except Exception:  # objects without a usable comparison: rebinding is a change
        return True


class Unchanged:
    """``with Unchanged(model) as kept: ...``; ``kept.changed`` then names what the block changed (and was restored)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.changed: list[str] = []

    def __enter__(self) -> "Unchanged":
        self.names = {id(m): n or type(self.model).__name__ for n, m in self.model.named_modules()}
        self.modules = [
            (m, *map(dict, children_and_buffers(m)), {k: v for k, v in vars(m).items() if not k.startswith("_")})
            for m in self.model.modules()
        ]
        self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        config = getattr(self.model, "config", None)
        self.config = None
        if hasattr(config, "__dict__"):
            try:
                self.config = (config, copy.deepcopy(vars(config)))
            except Exception:  # a config holding something that cannot be copied: its top level then
                self.config = (config, dict(vars(config)))
        return self

    def __exit__(self, *exc) -> None:
        for module, children, buffers, attributes in self.modules:
            where = self.names[id(module)]
            own_children, own_buffers = children_and_buffers(module)
            swapped = [k for k, v in children.items() if own_children.get(k) is not v]
            now = {k: v for k, v in vars(module).items() if not k.startswith("_")}
            moved = [k for k in set(attributes) | set(now) if _differs(attributes.get(k), now.get(k))]
            self.changed += [f"{where}.{k} (module replaced)" for k in swapped] + [f"{where}.{k}" for k in moved]
            own_children.clear()
            own_children.update(children)
            own_buffers.clear()
            own_buffers.update(buffers)
            for k in set(now) - set(attributes):
                delattr(module, k)
            vars(module).update(attributes)
        with torch.no_grad():
            for buffer, saved in self.buffers:
                if buffer.shape != saved.shape or not torch.equal(buffer, saved):
                    buffer.data = saved
        if self.config is not None:
            config, saved = self.config
            moved = [k for k in set(saved) | set(vars(config)) if _differs(saved.get(k), vars(config).get(k))]
            self.changed += [f"config.{k}" for k in moved]
            vars(config).clear()
            vars(config).update(saved)
