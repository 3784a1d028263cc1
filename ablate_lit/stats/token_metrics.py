"""Token-weighted Top1 accuracy and cross-entropy over the scored positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate_lit.common.labels import IGNORE_INDEX
from ablate_lit.stats.exact import ExactMetric

__all__ = ["IGNORE_INDEX", "KL_CHUNK", "TokenScores", "kl_of_log_probs"]


KL_CHUNK = 4096
"""Positions per chunk of the KL computation (two float32 log-softmaxes over the vocabulary)."""


class TokenScores(ExactMetric):
    """Top1 accuracy, mean cross-entropy and (optionally) mean KL per scored token (labels == -100 are
    not scored), in total and per evaluation window (or image).

    CE is computed in float32 from the logits and summed in float64; every score is a total over
    tokens divided by the token count, so batches and processes of any size weigh by tokens.
    Perplexity is exp(mean CE), never a mean of per-token exponentials. KL is that of the ablated
    model's predicted distribution from the unablated model's, KL(unablated || ablated), given the
    unablated logits of the same batch. With ``n_windows``, the same totals are kept per window
    (by the dataset index of each input): the paired comparisons of ``report`` resample them.
    Every state reduces across processes by summation; nothing in ``update`` waits on the device.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_windows: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n_windows = n_windows
        self.add_state("correct", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("kl", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kl_total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        for name, dtype in (
            ("w_nll", torch.float64),
            ("w_correct", torch.int64),
            ("w_total", torch.int64),
            ("w_kl", torch.float64),
        ):
            self.add_state(name, default=torch.zeros(n_windows, dtype=dtype), dist_reduce_fx="sum")

    def fresh(self) -> "TokenScores":
        """An empty metric of the same shape."""
        return TokenScores(self.n_windows)

    def score(self, batch, logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None):
        """Add a batch (the interface ``stats.task_metrics.TaskScores`` shares)."""
        self.update(logits, labels, batch.get("index"), reference)

    def kept_reference(self):
        """None: every point's reference logits are computed again (those of every token are not kept)."""

    def end_epoch(self) -> None:
        """Nothing is kept across evaluations."""

    @staticmethod
    def objective(batch, logits, labels, reference=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum, count) to minimise, differentiable: CE over the scored tokens, or with ``reference`` the
        KL(unablated || ablated) there."""
        keep = labels != IGNORE_INDEX
        if reference is None:
            return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum"), keep.sum()
        return _kl(reference[keep], logits[keep]).sum(), keep.sum()

    ATTRIBUTED = ("ce",)
    """The losses an attribution estimates the change of (``attributed``): the CE over the scored tokens."""

    @staticmethod
    def attributed(name: str, batch, logits, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the loss ``name`` summed over the batch, differentiable; the window of each item [items]; what
        each item adds to the loss's count [items]): CE summed over the scored tokens, counted in tokens."""
        keep = labels != IGNORE_INDEX
        total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        index = batch["index"]
        return total, index, keep.view(index.numel(), -1).sum(1)

    def update(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        index: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> None:  # [N, V], [N], [batch], [N, V]
        keep = labels != IGNORE_INDEX
        zero = torch.zeros((), dtype=torch.float32, device=logits.device)
        nll = torch.where(
            keep, F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none"), zero
        )
        right = (logits.argmax(-1) == labels) & keep
        self.nonfinite += (keep & ~torch.isfinite(nll)).sum()
        self.nll += nll.sum(dtype=torch.float64)
        self.correct += right.sum()
        self.total += keep.sum()
        kl = None
        if reference is not None:
            kl = torch.where(keep, _kl(reference, logits), zero)
            self.kl += kl.sum(dtype=torch.float64)
            self.kl_total += keep.sum()
        if self.n_windows and index is not None:
            window = index.repeat_interleave(labels.numel() // index.numel())  # the input each scored row belongs to
            self.w_nll.index_add_(0, window, nll.double())
            self.w_correct.index_add_(0, window, right.long())
            self.w_total.index_add_(0, window, keep.long())
            if kl is not None:
                self.w_kl.index_add_(0, window, kl.double())

    def compute(self) -> dict[str, torch.Tensor]:
        """Scores over the scored tokens; NaN (never 0) when no token was scored (and KL when not measured)."""
        total = torch.where(self.total > 0, self.total.to(torch.float64), torch.nan)
        ce = self.nll / total
        kl = self.kl / torch.where(self.kl_total > 0, self.kl_total.to(torch.float64), torch.nan)
        windows = {
            "nll": self.w_nll.clone(),
            "correct": self.w_correct.clone(),
            "total": self.w_total.clone(),
            "kl": self.w_kl.clone(),
        }  # per window: summed CE, correct and scored tokens, summed KL
        return {
            "top1": self.correct.to(torch.float64) / total,
            "ce": ce,
            "ppl": ce.exp(),
            "kl": kl,
            "n_tokens": self.total.clone(),
            "nonfinite": self.nonfinite.clone(),
            "windows": windows,
        }


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) || softmax(logits)) per row [N], in float32, in chunks of KL_CHUNK rows."""
    out = []
    for ref, abl in zip(reference.split(KL_CHUNK), logits.split(KL_CHUNK)):
        out.append(kl_of_log_probs(F.log_softmax(ref.float(), -1), F.log_softmax(abl.float(), -1)))
    return torch.cat(out)


def kl_of_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from the two distributions' log-probabilities [N, V] -> [N]."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)
