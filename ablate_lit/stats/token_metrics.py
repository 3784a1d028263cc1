"""Token-weighted Top1 accuracy and cross-entropy over the scored positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate_lit.stats.exact import ExactMetric

IGNORE_INDEX = -100


class TokenScores(ExactMetric):
    """Top1 accuracy and mean cross-entropy per scored token (labels == -100 are not scored).

    CE is computed in float32 from the logits and summed in float64; both scores are totals over
    tokens divided by the token count, so batches and processes of any size weigh by tokens.
    Perplexity is exp(mean CE), never a mean of per-token exponentials.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:  # [N, V], [N]
        # Masked sums, no boolean indexing: nothing here waits for the device (no host-device sync).
        keep = labels != IGNORE_INDEX
        nll = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
        nll = torch.where(keep, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
        self.nonfinite += (keep & ~torch.isfinite(nll)).sum()
        self.nll += nll.sum(dtype=torch.float64)
        self.correct += ((logits.argmax(-1) == labels) & keep).sum()
        self.total += keep.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """Scores over the scored tokens; NaN (never 0) when no token was scored."""
        total = torch.where(self.total > 0, self.total.to(torch.float64), torch.nan)
        ce = self.nll / total
        return {"top1": self.correct.to(torch.float64) / total, "ce": ce, "ppl": ce.exp(),
                "n_tokens": self.total.clone(), "nonfinite": self.nonfinite.clone()}
