"""Several ablations scored on each batch: ``per_pass`` of them in one forward pass, and for a
single-unit map only the blocks from the unit's layer on.

Each batch runs once unablated (the reference for KL); then the entries, ``per_pass`` at a time: the
batch is repeated once per entry along its first dimension and each copy gets its own mask and
values (``PreOutHooks.ablating_copies``), so a device that one batch leaves idle scores several
ablations in the time of one. Each copy is replaced and scored exactly as one ablation alone.

A unit of layer l changes nothing before l (``UnitMapStep``). So the outputs of the blocks before l
are kept from the unablated pass, and every ablated pass has those blocks answer from the kept
outputs instead of computing (repeated once per copy), so only the embeddings, the blocks from l
on and the head run. This is generic: the model's own forward runs unchanged around the blocks (no
architecture is re-implemented), and it is exact, since the kept outputs are what those blocks
compute under an ablation at l. The first batch checks that a prefix-answered pass without ablation
gives the unablated logits; a model where it does not (state flowing between blocks outside their
outputs) is evaluated with full forward passes.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn

from ablate_lit.common.logs import say


@contextmanager
def kept_outputs(blocks: list[nn.Module], kept: dict[int, object]) -> Iterator[None]:
    """Inside this block each of ``blocks`` stores its output in ``kept`` (by ``id``) as it runs."""
    handles = [b.register_forward_hook(lambda m, args, out: kept.__setitem__(id(m), out)) for b in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def repeated(value, copies: int, batch: int):
    """``value`` (a block's output) with every tensor of ``batch`` rows repeated ``copies`` times along its
    first dimension; tuples, lists and dicts (a ModelOutput) are repeated item by item."""
    if torch.is_tensor(value):
        return value.repeat(copies, *[1] * (value.dim() - 1)) if value.dim() and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(repeated(v, copies, batch) for v in value)
    if isinstance(value, dict):
        return type(value)(**{k: repeated(v, copies, batch) for k, v in value.items()})
    return value


@contextmanager
def answered_from(blocks: list[nn.Module], kept: dict[int, object], copies: int = 1, batch: int = 0):
    """Inside this block each of ``blocks`` returns its kept output without computing anything (repeated
    ``copies`` times along the batch of ``batch`` rows, for a pass over that many copies)."""
    outputs = kept if copies == 1 else {k: repeated(v, copies, batch) for k, v in kept.items()}
    saved = [(b, b.__dict__.get("forward")) for b in blocks]
    for b in blocks:
        b.forward = lambda *args, _b=b, **kwargs: outputs[id(_b)]
    try:
        yield
    finally:
        for b, own in saved:
            if own is None:
                del b.forward
            else:
                b.forward = own


class AblationsStep:
    """Scores ``entries`` — (mask [n_layers, width], replacement values) pairs — on each batch of an
    evaluation epoch, each into its own scores (a fresh copy of the module's ``scores``), ``per_pass``
    of them per forward pass; ``blocks`` (those before every ablated layer) answer from kept outputs."""

    def __init__(self, module, entries: list[tuple[torch.Tensor, dict]], kl: bool, per_pass: int = 1, blocks=()):
        self.module, self.entries, self.kl, self.per_pass = module, entries, kl, max(1, per_pass)
        self.scores = [module.scores.fresh().to(module.device) for _ in entries]
        self.blocks = list(blocks)
        self.prefix = bool(self.blocks) and not any(p.shared for p in module.pre_outs)
        """Whether the blocks before the ablated layer answer from kept outputs (False: full forward passes)."""
        self._checked = False

    def reset(self) -> None:
        for s in self.scores:
            s.reset()

    def step(self, batch, record: bool = True) -> None:
        """One batch: the unablated forward pass, then the entries, ``per_pass`` at a time.
        ``record=False`` runs the same passes and discards them (padding forwards under a sharding strategy)."""
        module = self.module
        kept: dict[int, object] = {}
        with kept_outputs(self.blocks if self.prefix else [], kept):
            reference, labels = module.logits_and_labels(batch)
        if self.prefix and not self._checked:
            self._check(batch, kept, reference)
        start = 0
        while start < len(self.entries):
            chunk = slice(start, start + self.per_pass)
            try:
                logits = self._pass(batch, kept, self.entries[chunk])
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # several copies did not fit: fewer
                if self.per_pass == 1 or "out of memory" not in str(exc).lower():
                    raise
                self._fewer()
                continue
            if record:
                for scores, copy in zip(self.scores[chunk], logits, strict=True):
                    scores.score(batch, copy, labels, reference if self.kl else None)
            start = chunk.stop

    def _pass(self, batch, kept: dict, entries: list) -> list[torch.Tensor]:
        """The logits of each of ``entries``, from one forward pass over as many copies of ``batch``."""
        module, copies = self.module, len(entries)
        answering = answered_from(self.blocks, kept, copies, batch_size(batch)) if self.prefix else nullcontext()
        with answering, module.hooks.ablating_copies(entries, module.device):
            return module.forward_copies(batch, copies)[0]

    def _fewer(self) -> None:
        """Halve the ablations per pass after an out-of-memory error, saying so once per halving."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.per_pass //= 2
        say(self.module.trainer, f"out of memory with more ablations per pass: {self.per_pass} per pass from now on")

    def _check(self, batch, kept: dict, reference: torch.Tensor) -> None:
        """A prefix-answered pass without ablation must give the unablated logits (in every copy, where
        several ablations share a pass); else full passes."""
        copies = min(2, self.per_pass)
        with answered_from(self.blocks, kept, copies, batch_size(batch)):
            again = self.module.forward_copies(batch, copies)[0]
        self._checked = True
        if not all(torch.allclose(a.float(), reference.float(), rtol=1e-5, atol=1e-5) for a in again):
            self.prefix = False


def batch_size(batch: dict) -> int:
    """Inputs in ``batch`` (the first dimension of its sample indices)."""
    return int(batch["index"].shape[0])


class UnitMapStep(AblationsStep):
    """The entries of a single-unit map's ``layer``: every one ablates units of that layer only, so the
    blocks before it answer from kept outputs."""

    def __init__(self, module, layer: int, entries: list[tuple[torch.Tensor, dict]], kl: bool, per_pass: int = 1):
        own = module.pre_outs[layer].block
        before = [p.block for p in module.pre_outs[:layer]]
        blocks = list({id(b): b for b in before if b is not own}.values())
        super().__init__(module, entries, kl, per_pass, blocks)
        self.layer = layer
