"""What a test epoch scores with: ``Scores``, the interface TokenScores and TaskScores share.

A LightningModule scores every batch of an evaluation into one ``Scores`` (``evaluate_with``); the
single-unit map scores each of its entries into a fresh one; optimal's fit minimises its
``objective``; the result writer reads ``compute()``. Every state is a sum reduced across processes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Scores(Protocol):
    n_windows: int
    """Evaluation windows (a task's rows, or images) kept apart for paired comparisons."""

    def fresh(self) -> Scores:
        """An empty metric of the same shape."""

    def score(self, batch, logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None):
        """Add a batch's predictions (``reference``: the unablated logits, for KL)."""

    def kept_reference(self):
        """The unablated predictions kept from the baseline (a task's answers), or None."""

    def end_epoch(self) -> None:
        """Called when a test epoch ends."""

    def objective(self, batch, logits, labels, reference=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum, count) to minimise, differentiable: CE over what is scored, or with ``reference`` the KL."""

    ATTRIBUTED: tuple[str, ...]
    """The losses an attribution estimates the change of (text: ce; a task: ce and logit_diff)."""

    def attributed(self, name: str, batch, logits, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a loss summed over the batch, differentiable; the window of each item; each item's count)."""

    def compute(self) -> dict:
        """The scores (top1, ce, ppl, kl, n_tokens, nonfinite, per-window totals under ``windows``)."""

    def reset(self) -> None: ...
