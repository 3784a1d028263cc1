"""Keeping a LightningModule where it is: one move to the device per run, not two per point; a model
placed by a device map (or bitsandbytes) at load is never moved."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ablate_lit.common.private import children_and_buffers, parse_to
from ablate_lit.families.loading.quantization import is_bnb


class KeptInPlace:
    """A LightningModule mixin: ``kept_in_place()`` makes Lightning's moves at the start and end of
    every ``trainer.test``/``validate`` happen once per run (the weights cross the bus once)."""

    @contextmanager
    def kept_in_place(self) -> Iterator[None]:
        """Inside this block the module moves at most once to each place (device or dtype): Lightning
        moves it to the device (and, for the true half precisions, casts it) at the start of every
        ``trainer.test``/``validate`` and back to the CPU at the end; here only the first move happens
        and the move back is skipped, so the weights cross the bus once per run, not twice per point."""
        self._kept, self._placed = True, set()
        try:
            yield
        finally:
            self._kept = False

    self_placed = False
    """The model placed itself when it loaded (``placed_by_itself``): moves leave it where it is."""

    def placed_by_itself(self) -> None:
        """Note a model that a device map placed (bitsandbytes sets one): Lightning's moves then move
        the metrics and replacement values, and the hooks move values between the model's devices."""
        self.self_placed = (
            getattr(self.model, "hf_device_map", None) is not None
            or self.settings.placement.device_map is not None
            or is_bnb(getattr(getattr(self.model, "config", None), "quantization_config", None))
        )

    def to(self, *args, **kwargs):
        device, dtype = parse_to(*args, **kwargs)[:2]
        if getattr(self, "_kept", False):
            target = (None if device is None else torch.device(device), dtype)
            if target in self._placed:
                return self
            self._placed.add(target)
        if not self.self_placed:
            return super().to(*args, **kwargs)
        if device is not None:
            self.home = torch.device(device)
            for _, hooks in self._by_site.values():
                hooks.home = self.home
        children = children_and_buffers(self)[0]
        order = list(children)
        model = children.pop("model")
        try:
            return super().to(*args, **kwargs)
        finally:
            children["model"] = model
            for name in order:  # the original order (state_dict, named_modules)
                children[name] = children.pop(name)

    def cpu(self):
        if getattr(self, "_kept", False):
            return self
        return self.to("cpu") if self.self_placed else super().cpu()
