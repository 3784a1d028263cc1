"""Keeping a LightningModule where it is: one move to the device per run, not two per point."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


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

    def to(self, *args, **kwargs):
        if getattr(self, "_kept", False):
            device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
            target = (None if device is None else torch.device(device), dtype)
            if target in self._placed:
                return self
            self._placed.add(target)
        return super().to(*args, **kwargs)

    def cpu(self):
        return self if getattr(self, "_kept", False) else super().cpu()
