"""The single-unit map's forward passes: every (unit, method) of one layer scored on a batch from one
unablated forward pass, running only the blocks from that layer on.

A unit of layer l changes nothing before l. So for each batch the unablated model runs once, and
the outputs of the blocks before l (and its logits) are kept; then for each (unit, method) the
model runs again with those blocks answering from the kept outputs instead of computing, so only
the embeddings, the blocks from l on and the head run. This is generic: the model's own forward
runs unchanged around the blocks (no architecture is re-implemented), and it is exact, since the
kept outputs are what those blocks compute under an ablation at l. KL is scored against the kept
unablated logits, so it costs no forward pass. The first batch of every layer checks that a
prefix-answered forward pass without ablation gives the unablated logits; a model where it does
not (state flowing between blocks outside their outputs) is evaluated with full forward passes.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn


@contextmanager
def kept_outputs(blocks: list[nn.Module], kept: dict[int, object]) -> Iterator[None]:
    """Inside this block each of ``blocks`` stores its output in ``kept`` (by ``id``) as it runs."""
    handles = [b.register_forward_hook(lambda m, args, out: kept.__setitem__(id(m), out)) for b in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def answered_from(blocks: list[nn.Module], kept: dict[int, object]) -> Iterator[None]:
    """Inside this block each of ``blocks`` returns its kept output without computing anything."""
    saved = [(b, b.__dict__.get("forward")) for b in blocks]
    for b in blocks:
        b.forward = lambda *args, _b=b, **kwargs: kept[id(_b)]
    try:
        yield
    finally:
        for b, own in saved:
            if own is None:
                del b.forward
            else:
                b.forward = own


class UnitMapStep:
    """Scores ``entries`` — (mask [n_layers, width], replacement values) pairs, all ablating units of
    ``layer`` — on each batch of an evaluation epoch, each into its own scores (a fresh copy of the
    module's ``scores``)."""

    def __init__(self, module, layer: int, entries: list[tuple[torch.Tensor, dict]], kl: bool):
        self.module, self.layer, self.entries, self.kl = module, layer, entries, kl
        self.scores = [module.scores.fresh().to(module.device) for _ in entries]
        own = module.pre_outs[layer].block
        before = [p.block for p in module.pre_outs[:layer]]
        self.blocks = list({id(b): b for b in before if b is not own}.values())
        self.prefix = bool(self.blocks) and not any(p.shared for p in module.pre_outs)
        """Whether the blocks before ``layer`` answer from kept outputs (False: full forward passes)."""
        self._checked = False

    def reset(self) -> None:
        for s in self.scores:
            s.reset()

    def step(self, batch, record: bool = True) -> None:
        """One batch: the unablated forward pass, then one (partial) pass per entry. ``record=False``
        runs the same passes and discards them (padding forwards under a sharding strategy)."""
        module = self.module
        kept: dict[int, object] = {}
        with kept_outputs(self.blocks if self.prefix else [], kept):
            reference, labels = module.logits_and_labels(batch)
        if self.prefix and not self._checked:
            self._check(batch, kept, reference)
        with answered_from(self.blocks, kept) if self.prefix else nullcontext():
            for (mask, replacement), scores in zip(self.entries, self.scores, strict=True):
                with module.hooks.ablating(mask, device=module.device, **replacement):
                    logits, _ = module.logits_and_labels(batch)
                if record:
                    scores.score(batch, logits, labels, reference if self.kl else None)

    def _check(self, batch, kept: dict, reference: torch.Tensor) -> None:
        """A prefix-answered pass without ablation must give the unablated logits; else full passes."""
        with answered_from(self.blocks, kept):
            again, _ = self.module.logits_and_labels(batch)
        self._checked = True
        if not torch.allclose(again.float(), reference.float(), rtol=1e-5, atol=1e-5):
            self.prefix = False
