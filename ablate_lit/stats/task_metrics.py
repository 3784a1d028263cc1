"""Scores of a task on its answers: accuracy, answer CE, logit difference and KL, per row and in total."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate_lit.stats.exact import ExactMetric
from ablate_lit.stats.token_metrics import IGNORE_INDEX, KL_CHUNK, kl_of_log_probs

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
        return TaskScores(self.n_windows, longest=self.longest)  # keeps nothing: a unit map has its reference

    def kept_reference(self):
        """KEPT when every evaluated sequence's unablated log-probabilities are kept, else None."""
        return KEPT if self._complete else None

    def end_epoch(self) -> None:
        """An evaluation epoch ended: if it kept the reference of every batch, the keeping is complete."""
        self._complete = self._complete or (self._seen > 0 and self._stored == self._seen)
        self._seen = self._stored = 0

    def _reference(self, batch, reference, window) -> torch.Tensor:
        """log-probabilities of the unablated model in the answer window [items, longest, V]: read from
        the kept ones, or computed from ``reference`` logits (and kept)."""
        index = batch["index"]
        if reference is KEPT:
            return self._kept[index]
        log_p = torch.cat([F.log_softmax(r.float(), -1) for r in window(reference).split(KL_CHUNK)])
        if self._kept is None and 0 < self.n_sequences * self.longest * log_p.shape[-1] <= KEEP_LIMIT:
            self._kept = log_p.new_zeros(self.n_sequences, self.longest, log_p.shape[-1])
        if self._kept is not None and log_p.shape[1] == self.longest:
            self._kept[index] = log_p
            self._stored += 1
        return log_p

    @staticmethod
    def _answers(batch, labels: torch.Tensor, longest: int):
        """The answer window of every item: its labels [items, longest] (-100 past its continuation),
        and a function cutting the same window out of logits [items*pos, V] -> [items, longest, V].
        Positions are gathered from each item's ``start``, so nothing waits on the device."""
        n_items = batch["row"].numel()
        length = labels.numel() // n_items
        if not longest:  # not known in advance (optimal's calibration rows): the longest continuation here
            longest = int((labels.view(n_items, length) != IGNORE_INDEX).sum(1).max())
        offsets = batch["start"][:, None] + torch.arange(longest, device=labels.device)  # [items, longest]
        inside = offsets < length
        at = offsets.clamp_max(length - 1)
        window_labels = torch.where(inside, labels.view(n_items, length).gather(1, at), IGNORE_INDEX)

        def window(logits: torch.Tensor) -> torch.Tensor:
            vocab = logits.shape[-1]
            return logits.view(n_items, length, vocab).gather(1, at[..., None].expand(-1, -1, vocab))

        return window_labels, window

    def score(self, batch, logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None):
        """Add a batch (the interface ``TokenScores`` shares)."""
        self.update(batch, logits, labels, reference)

    def update(self, batch, logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None):
        """Add a batch: ``logits`` [items*pos, V] (its ``reference``, the unablated model's, for KL),
        ``labels`` [items*pos]."""
        targets, window = self._answers(batch, labels, self.longest)
        scored = targets != IGNORE_INDEX  # [items, longest]
        row, answer = batch["row"], batch["kind"] == 0
        self._seen += 1
        logp = F.log_softmax(window(logits).float(), -1)  # [items, longest, V]
        token = torch.where(scored, logp.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1), 0.0)
        wrong = (scored & (logp.argmax(-1) != targets)).sum(1)
        self.nonfinite += (scored & ~torch.isfinite(token)).sum()
        total, zero = token.sum(1).double(), torch.zeros((), dtype=torch.float64, device=logits.device)
        self.logp.index_add_(0, row, torch.where(answer, total, zero))
        self.wrong.index_add_(0, row, torch.where(answer, wrong, 0))
        self.seen.index_add_(0, row, answer.long())
        distractor = batch["distractor"]
        one_token = distractor != IGNORE_INDEX  # read at the answer sequence's first position
        first = logp[:, 0].gather(-1, distractor.clamp_min(0)[:, None]).squeeze(-1).double()
        self.logp_distractor.index_add_(0, row, torch.where(answer, torch.where(one_token, first, zero), total))
        self.seen_distractor.index_add_(0, row, (~answer | one_token).long())
        if reference is not None:
            kl = torch.where(scored, kl_of_log_probs(self._reference(batch, reference, window), logp), 0.0)
            self.kl_sum.index_add_(0, row, torch.where(answer, kl.sum(1).double(), zero))
            self.kl_count.index_add_(0, row, torch.where(answer, scored.sum(1), 0))

    @staticmethod
    def objective(batch, logits, labels, reference=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum, count) to minimise, differentiable: the answer CE summed over the batch's answer
        sequences, or with ``reference`` their KL at the answer positions (mean per row, summed)."""
        targets, window = TaskScores._answers(batch, labels, 0)
        scored = targets != IGNORE_INDEX
        logq = F.log_softmax(window(logits).float(), -1)
        if reference is None:
            per_item = -torch.where(scored, logq.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1), 0.0).sum(1)
        else:
            log_p = F.log_softmax(window(reference).float(), -1)
            kl = torch.where(scored, kl_of_log_probs(log_p, logq), 0.0)
            per_item = kl.sum(1) / scored.sum(1).clamp_min(1)
        answer = batch["kind"] == 0
        return torch.where(answer, per_item, 0.0).sum(), answer.sum()

    ATTRIBUTED = ("ce", "logit_diff")
    """The losses an attribution estimates the change of: the answer CE, and the logit difference."""

    @staticmethod
    def attributed(name: str, batch, logits, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the loss ``name`` summed over the batch's sequences, differentiable; the row of each sequence;
        what each sequence adds to the count of rows). ``ce``: minus the answer's summed log-probability,
        per answer sequence. ``logit_diff``: log p(answer) - log p(distractor), whose sum over a batch is
        the answer sequences' summed log-probability (minus the one-token distractor's at the answer
        position) minus the distractor sequences' (a row's two sequences may be in different batches)."""
        targets, window = TaskScores._answers(batch, labels, 0)
        scored = targets != IGNORE_INDEX
        logq = F.log_softmax(window(logits).float(), -1)
        summed = torch.where(scored, logq.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1), 0.0).sum(1)
        answer = batch["kind"] == 0
        if name == "ce":
            return -torch.where(answer, summed, 0.0).sum(), batch["row"], answer.long()
        distractor = batch["distractor"]
        one_token = distractor != IGNORE_INDEX
        first = logq[:, 0].gather(-1, distractor.clamp_min(0)[:, None]).squeeze(-1)
        per_item = torch.where(answer, summed - torch.where(one_token, first, 0.0), -summed)
        return per_item.sum(), batch["row"], ((answer & one_token) | ~answer).long()

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
            "windows": {
                "nll": nll,
                "correct": correct,
                "total": seen.long(),
                "kl": kl_row,
                "logit_diff": diff,
                "with_distractor": both.long(),  # the rows a logit difference is taken over
            },
        }
