"""Scores of a task on its answers: accuracy, answer CE, logit difference and KL, per row and in total."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate_lit.stats.exact import ExactMetric
from ablate_lit.stats.token_metrics import IGNORE_INDEX, KL_CHUNK, _kl

KEEP_LIMIT = 2**28
"""Most unablated log-probabilities kept for KL (1 GiB in float32); beyond, each point recomputes them."""
KEPT = object()
"""Stands for the reference when the kept log-probabilities are read (``TaskScores.kept_reference``)."""


class TaskScores(ExactMetric):
    """Per task row (``n_rows`` of them), from teacher-forced sequences (``data.task.TaskSequences``):

    * **accuracy**: 1 when every answer token is the argmax where it is predicted (greedy decoding
      would write the answer), else 0;
    * **answer CE**: minus the answer's summed log-probability, log p(answer | prompt);
    * **logit difference**: log p(answer | prompt) - log p(distractor | prompt). For one-token answer
      and distractor this is exactly logit[answer] - logit[distractor] at the answer position (the
      softmax normaliser cancels); for longer ones, the difference of the summed log-probabilities;
    * **KL**: KL(unablated || ablated) of the predicted distributions at the answer's positions
      (the one position predicting a one-token answer), averaged over them.

    Totals are means over rows (each row weighs the same). Every state is a per-row sum reduced by
    summation across processes, so a row's answer and distractor sequences may be scored anywhere.

    The unablated log-probabilities at the answer positions are the same at every point: the first
    evaluation that scores them with a reference (the baseline) keeps them, [sequences, answer
    positions, vocab] on the device, and later points read them back (``kept_reference``) instead of
    running every batch a second time with the hooks paused. Kept only up to KEEP_LIMIT numbers.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_rows: int, n_sequences: int = 0, longest: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n_windows, self.n_sequences, self.longest = n_rows, n_sequences, longest
        self._kept: torch.Tensor | None = None  # [n_sequences, longest, vocab] unablated log-probabilities
        self._complete = False  # every sequence this process scores is kept
        self._seen = self._stored = 0  # batches of the running epoch, and those whose reference was kept
        for name, dtype in (
            ("logp", torch.float64),
            ("logp_distractor", torch.float64),
            ("wrong", torch.int64),
            ("seen", torch.int64),
            ("seen_distractor", torch.int64),
            ("kl_sum", torch.float64),
            ("kl_count", torch.int64),
        ):
            self.add_state(name, default=torch.zeros(n_rows, dtype=dtype), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def fresh(self) -> "TaskScores":
        return TaskScores(self.n_windows)

    def kept_reference(self):
        """KEPT when every evaluated sequence's unablated log-probabilities are kept, else None."""
        return KEPT if self._complete else None

    def end_epoch(self) -> None:
        """An evaluation epoch ended: if it kept the reference of every batch, the keeping is complete."""
        self._complete = self._complete or (self._seen > 0 and self._stored == self._seen)
        self._seen = self._stored = 0

    def _reference(self, batch, item, offset, reference, where) -> torch.Tensor:
        """log-probabilities of the unablated model at the scored positions ``where`` [n, V]: read from
        the kept ones, or computed from ``reference`` logits (and kept)."""
        index = batch["index"][item]
        if reference is KEPT:
            return self._kept[index, offset]
        log_p = torch.cat([F.log_softmax(r.float(), -1) for r in reference[where].split(KL_CHUNK)])
        if self._kept is None and 0 < self.n_sequences * self.longest * log_p.shape[-1] <= KEEP_LIMIT:
            self._kept = log_p.new_zeros(self.n_sequences, self.longest, log_p.shape[-1])
        if self._kept is not None:
            self._kept[index, offset] = log_p
            self._stored += 1
        return log_p

    @staticmethod
    def _scored(batch, labels: torch.Tensor):
        """Flat positions of the scored tokens, the batch item of each, and the positions predicting a
        one-token distractor (with their items)."""
        n_items = batch["row"].numel()
        length = labels.numel() // n_items
        where = (labels != IGNORE_INDEX).nonzero().squeeze(1)
        has = (batch["distractor"] != IGNORE_INDEX).nonzero().squeeze(1)
        return where, where // length, has * length + batch["start"][has], has

    def score(self, batch, logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None):
        """Add a batch (the interface ``TokenScores`` shares)."""
        self.update(batch, logits, labels, reference)

    def update(self, batch, logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None):
        """Add a batch: ``logits`` [items*pos, V] (its ``reference``, the unablated model's, for KL),
        ``labels`` [items*pos]."""
        where, item, first, has = self._scored(batch, labels)
        row, answer = batch["row"][item], batch["kind"][item] == 0
        self._seen += 1
        logp = F.log_softmax(logits[where].float(), -1)  # [scored, V]
        token = logp.gather(1, labels[where, None]).squeeze(1)
        right = logp.argmax(-1) == labels[where]
        self.nonfinite += (~torch.isfinite(token)).sum()
        self.logp.index_add_(0, row[answer], token[answer].double())
        self.wrong.index_add_(0, row[answer], (~right[answer]).long())
        self.seen.index_add_(0, row[answer], torch.ones_like(row[answer]))
        self.logp_distractor.index_add_(0, row[~answer], token[~answer].double())
        self.seen_distractor.index_add_(0, row[~answer], torch.ones_like(row[~answer]))
        if len(has):  # one-token distractors, read at their answer sequence's first position
            d = F.log_softmax(logits[first].float(), -1).gather(1, batch["distractor"][has, None]).squeeze(1)
            self.logp_distractor.index_add_(0, batch["row"][has], d.double())
            self.seen_distractor.index_add_(0, batch["row"][has], torch.ones_like(has))
        if reference is not None:
            length = labels.numel() // batch["row"].numel()
            offset = where % length - batch["start"][item]  # the answer token each scored position predicts
            log_p = self._reference(batch, item[answer], offset[answer], reference, where[answer])
            log_q = logp[answer]
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)
            self.kl_sum.index_add_(0, row[answer], kl.double())
            self.kl_count.index_add_(0, row[answer], torch.ones_like(row[answer]))

    @staticmethod
    def objective(batch, logits, labels, reference=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum, count) to minimise, differentiable: the answer CE summed over the batch's answer
        sequences, or with ``reference`` their KL at the answer positions (mean per row, summed)."""
        where, item, _, _ = TaskScores._scored(batch, labels)
        answer = batch["kind"][item] == 0
        where, item = where[answer], item[answer]
        n_items = batch["row"].numel()
        if reference is None:
            per_token = F.cross_entropy(logits[where].float(), labels[where], reduction="none")
        else:
            per_token = _kl(reference[where], logits[where])
        per_item = torch.zeros(n_items, device=logits.device).index_add(0, item, per_token)
        count = torch.zeros(n_items, device=logits.device).index_add(0, item, torch.ones_like(per_token))
        if reference is not None:
            per_item = per_item / count.clamp_min(1)
        return per_item.sum(), (batch["kind"] == 0).sum()

    def compute(self) -> dict:
        seen = self.seen > 0
        n = seen.sum()
        total = torch.where(n > 0, n.to(torch.float64), torch.nan)
        nll = torch.where(seen, -self.logp, 0.0)
        correct = (seen & (self.wrong == 0)).long()
        kl_row = torch.where(self.kl_count > 0, self.kl_sum / self.kl_count.clamp_min(1), 0.0)
        has_kl = (self.kl_count > 0).sum()
        both = seen & (self.seen_distractor > 0)
        diff = torch.where(both, self.logp - self.logp_distractor, 0.0)
        ce = nll.sum() / total
        return {
            "top1": correct.sum().double() / total,
            "ce": ce,
            "ppl": ce.exp(),
            "kl": kl_row.sum() / torch.where(has_kl > 0, has_kl.double(), torch.nan),
            "logit_diff": diff.sum() / torch.where(both.sum() > 0, both.sum().double(), torch.nan),
            "n_tokens": n.clone(),
            "nonfinite": self.nonfinite.clone(),
            "windows": {"nll": nll, "correct": correct, "total": seen.long(), "kl": kl_row, "logit_diff": diff},
        }
