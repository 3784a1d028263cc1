"""Masked-LM data: windows ``[CLS] text [SEP]`` with pre-training style masking, fixed per data seed."""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset

from ablate_lit.common.errors import check
from ablate_lit.common.labels import IGNORE_INDEX
from ablate_lit.data.sampler import cached_loader, make_loader
from ablate_lit.data.text import TextData


def mask_windows(
    windows: torch.Tensor, special: torch.Tensor, mask_id: int, vocab: torch.Tensor, prob: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select round(prob * n) of each window's n non-special tokens; of those, round(80%) become the mask
    token, round(10%) a random vocabulary token and the rest stay. Returns (input_ids, labels) with
    labels = the original token at selected positions and -100 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    inputs, labels = windows.clone(), torch.full_like(windows, IGNORE_INDEX)
    for i, row in enumerate(windows):
        candidates = (~torch.isin(row, special)).nonzero().squeeze(1)
        k = int(round(prob * len(candidates)))
        chosen = candidates[torch.randperm(len(candidates), generator=gen)[:k]]
        n_mask, n_random = int(round(0.8 * k)), int(round(0.1 * k))
        labels[i, chosen] = row[chosen]
        inputs[i, chosen[:n_mask]] = mask_id
        random_pos = chosen[n_mask : n_mask + n_random]
        inputs[i, random_pos] = vocab[torch.randint(len(vocab), (len(random_pos),), generator=gen)]
    return inputs, labels


class MaskedDataset(Dataset):
    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        self.windows, self.labels = inputs, labels

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.windows[i], "labels": self.labels[i], "index": i}


class MaskedTextData(TextData):
    """Text windows for masked LMs, scored on the masked-out tokens (token unmasking and de-randomisation).

    The masking of the evaluation windows depends only on ``seed``, so it is identical for every
    method and fraction (a paired comparison); calibration windows are masked the same way with
    another stream of the same seed, so statistics describe the inputs the model is evaluated on.
    ``max_tokens`` counts text tokens; about ``mask_prob`` of them are scored.
    """

    def __init__(self, path: str, mask_prob: float = 0.15, context_length: int = 512, **kwargs):
        """
        Args:
            path: hub data set name, or a local file or folder (see TextData).
            mask_prob: share of non-special tokens selected for scoring (80% masked, 10% random, 10% kept).
            context_length: tokens per window, [CLS] and [SEP] included.
            **kwargs: every other TextData option (max_tokens, calib_tokens, batch_size, seed, ...).
        """
        check(0 < mask_prob < 1, f"⟨data.mask_prob⟩ must be in (0, 1), got {mask_prob}")
        super().__init__(path, context_length=context_length, **kwargs)
        self.mask_prob = mask_prob
        self.eval_labels = self.calib_labels = None

    @property
    def prefix(self) -> list[int]:
        tok = self.tokenizer
        return [tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id]

    @property
    def suffix(self) -> list[int]:
        tok = self.tokenizer
        return [tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id]

    def _vocab(self) -> tuple[torch.Tensor, torch.Tensor]:
        special = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)
        allowed = torch.ones(len(self.tokenizer), dtype=torch.bool)
        allowed[special[special < len(self.tokenizer)]] = False
        return special, allowed.nonzero().squeeze(1)

    def setup(self, stage: str | None = None) -> None:
        if self.eval_labels is not None:
            return
        check(
            self.tokenizer.mask_token_id is not None, "the tokenizer has no mask token; a masked-LM tokenizer is needed"
        )
        super().setup(stage)
        special, vocab = self._vocab()
        mask_id = self.tokenizer.mask_token_id
        self.eval_inputs, self.eval_labels = mask_windows(
            self.eval_windows, special, mask_id, vocab, self.mask_prob, self.seed
        )
        self.calib_inputs, self.calib_labels = mask_windows(
            self.calib_windows, special, mask_id, vocab, self.mask_prob, (self.seed + 1_000_003) % 2**63
        )
        per_window = self.body_length * self.mask_prob
        check(
            bool((self.eval_labels != IGNORE_INDEX).any()),
            f"no evaluation token is selected for scoring: ⟨data.mask_prob⟩ {self.mask_prob} x {self.body_length} text "
            f"tokens per window = {per_window:.2f}, which rounds to 0; raise ⟨--data.mask_prob⟩ or "
            "⟨--data.context_length⟩",
        )

    def fingerprint(self, which: str) -> str:
        """Hash of the exact model inputs and scored labels of a split (masking included)."""
        inputs, labels = (
            (self.calib_inputs, self.calib_labels) if which == "calibration" else (self.eval_inputs, self.eval_labels)
        )
        return hashlib.sha1(inputs.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:16]

    def _masked_loader(self, inputs, labels):
        return make_loader(MaskedDataset(inputs, labels), self.batch_size, self.num_workers)

    def calibration_sample(self, n: int, seed: int) -> MaskedDataset:
        rows = self.sample_rows(n, seed, len(self.calib_inputs))
        return MaskedDataset(self.calib_inputs[rows], self.calib_labels[rows])

    def calibration_subset(self, rows: torch.Tensor | None = None) -> MaskedDataset:
        if rows is None:
            return MaskedDataset(self.calib_inputs, self.calib_labels)
        return MaskedDataset(self.calib_inputs[rows], self.calib_labels[rows])

    def eval_dataset(self) -> MaskedDataset:
        return MaskedDataset(self.eval_inputs, self.eval_labels)

    def test_dataloader(self):
        return cached_loader(self, lambda: self._masked_loader(self.eval_inputs, self.eval_labels))

    def val_dataloader(self):
        return self._masked_loader(self.calib_inputs, self.calib_labels)
