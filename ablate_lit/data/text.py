"""Text data for causal LMs: disjoint, deterministic evaluation and calibration windows."""

from __future__ import annotations

import hashlib
import math

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ablate_lit.common.errors import check, check_batch_size, check_seed
from ablate_lit.common.words import counted
from ablate_lit.data.random_inputs import generation_steps, text_inputs
from ablate_lit.data.sampler import cached_loader, make_loader
from ablate_lit.data.windows import SpecialTokens, WindowDataset, given_windows, token_stream


class TextData(SpecialTokens, L.LightningDataModule):
    """Documents from ``path`` tokenised into one stream, cut into windows of ``context_length``.

    Documents are read in order and joined with the EOS token until the stream holds enough tokens
    for both splits; the windows are then shuffled with ``seed`` and split, so evaluation and
    calibration windows are disjoint and drawn from the same text. Each window starts with the BOS
    token when ``prepend_bos`` (the first position is then not scored).
    """

    def __init__(
        self,
        path: str,
        text_column: str = "text",
        name: str | None = None,
        split: str = "train",
        streaming: bool | None = None,
        max_tokens: int = 100_000,
        calib_tokens: int = 100_000,
        context_length: int = 1024,
        prepend_bos: bool = True,
        batch_size: int | str = 8,
        num_workers: int = 0,
        seed: int = 0,
    ):
        """
        Args:
            path: hub data set name, or a local file (.txt .md .json .jsonl .csv .parquet, MediaWiki .xml.bz2) or folder
                (from Python also a list of strings, a datasets.Dataset, or a DataLoader of input_ids windows).
            text_column: column holding the text (hub and tabular files).
            name: hub data set configuration name.
            split: hub data set split.
            streaming: stream a hub data set (default: yes, only the documents needed are read).
            max_tokens: evaluation text tokens, special tokens not counted (rounded up to whole windows).
            calib_tokens: calibration text tokens for the statistics (rounded up to whole windows).
            context_length: tokens per window.
            prepend_bos: start every window with the tokenizer's BOS token (EOS if it has none).
            batch_size: windows per batch, or auto (the largest power of two that fits on the accelerator).
            num_workers: DataLoader workers.
            seed: seed of the window shuffle that splits evaluation from calibration.
        """
        super().__init__()
        check(context_length >= 2, f"⟨data.context_length⟩ must be at least 2, got {context_length}")
        check(max_tokens >= 1, f"⟨data.max_tokens⟩ must be positive, got {max_tokens}")
        check_seed(seed, "⟨data.seed⟩")
        check(calib_tokens >= 1, f"⟨data.calib_tokens⟩ must be positive, got {calib_tokens}")
        check_batch_size(batch_size)
        self.path, self.text_column, self.name, self.split, self.streaming = path, text_column, name, split, streaming
        self.max_tokens, self.calib_tokens, self.context_length = max_tokens, calib_tokens, context_length
        self.prepend_bos, self.batch_size, self.num_workers, self.seed = prepend_bos, batch_size, num_workers, seed
        self.tokenizer = None
        self.eval_windows: torch.Tensor | None = None
        self.calib_windows: torch.Tensor | None = None

    # -- wiring --------------------------------------------------------------------------------
    def connect(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @property
    def bos_id(self) -> int | None:
        """The token opening every window, or None."""
        return (self.prefix or [None])[0]

    @property
    def body_length(self) -> int:
        """Text tokens per window."""
        return self.context_length - len(self.prefix) - len(self.suffix)

    @property
    def n_eval_windows(self) -> int:
        return math.ceil(self.max_tokens / self.body_length)

    @property
    def n_calib_windows(self) -> int:
        return math.ceil(self.calib_tokens / self.body_length)

    def positions(self) -> int:
        """Positions per input (the length of every window)."""
        return self.context_length

    def check_positions(self, limit: int) -> None:
        check(
            self.context_length <= limit,
            f"⟨data.context_length⟩ {self.context_length} exceeds the model's {limit} positions; "
            f"lower ⟨--data.context_length⟩ to at most {limit}",
        )

    def shape_key(self) -> dict:
        """What a resample cache's shape and content depend on, besides the model."""
        return {"length": self.context_length, "prefix": self.prefix, "suffix": self.suffix}

    def describe(self, which: str) -> str:
        windows = self.calib_windows if which == "calibration" else self.eval_windows
        return f"{counted(windows.shape[0], 'window')} of {counted(self.context_length, 'token')}"

    # -- building the windows ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.eval_windows is not None:
            return
        check(self.tokenizer is not None, "TextData needs a tokenizer: call connect(tokenizer) first")
        check(
            self.body_length >= 1,
            f"⟨data.context_length⟩ {self.context_length} leaves no room for text between the special tokens",
        )
        body, n_windows = self.body_length, self.n_eval_windows + self.n_calib_windows
        if isinstance(self.path, DataLoader):
            windows = given_windows(self, n_windows)
        else:
            stream = token_stream(self, n_windows * body).view(n_windows, body)
            windows = torch.cat(
                [
                    torch.tensor([self.prefix] * n_windows, dtype=torch.long).view(n_windows, -1),
                    stream,
                    torch.tensor([self.suffix] * n_windows, dtype=torch.long).view(n_windows, -1),
                ],
                1,
            )
        order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(self.seed))
        self.eval_windows = windows[order[: self.n_eval_windows]].contiguous()
        self.calib_windows = windows[order[self.n_eval_windows :]].contiguous()

    def fingerprint(self, which: str) -> str:
        """Hash of the exact model inputs of a split (calibration statistics are cached by it)."""
        windows = self.calib_windows if which == "calibration" else self.eval_windows
        return hashlib.sha1(windows.numpy().tobytes()).hexdigest()[:16]

    # -- loaders ---------------------------------------------------------------------------------
    def _loader(self, windows: torch.Tensor) -> DataLoader:
        return make_loader(WindowDataset(windows), self.batch_size, self.num_workers)

    def sample_rows(self, n: int, seed: int, available: int) -> torch.Tensor:
        """``n`` of ``available`` calibration rows, drawn with ``seed`` (resample:data)."""
        check(
            n <= available,
            f"resample:data draws {n} rows from {available} calibration inputs; lower "
            f"⟨--ablation.n_resample⟩ to at most {available} or raise ⟨--data.calib_tokens⟩",
        )
        return torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n]

    def calibration_sample(self, n: int, seed: int) -> Dataset:
        """``n`` calibration windows (never evaluation ones), indexed 0..n-1: resample:data's inputs."""
        return WindowDataset(self.calib_windows[self.sample_rows(n, seed, len(self.calib_windows))])

    def calibration_subset(self, rows: torch.Tensor | None = None) -> Dataset:
        """The calibration windows (``rows`` of them), indexed 0..n-1 (optimal ablation fits on them)."""
        return WindowDataset(self.calib_windows if rows is None else self.calib_windows[rows])

    def eval_dataset(self) -> Dataset:
        return WindowDataset(self.eval_windows)

    task = None
    """Plain text is not a task: every token is scored."""
    has_counterfactual = False
    fixed_template = False

    def generation_steps(self, n: int, own: bool) -> int:
        """Decode steps that writing ``n`` rows of resample:generated takes (``own``: the tested model writes)."""
        return generation_steps(n, self.context_length, self.prefix, self.suffix, own)

    def random_inputs(self, source: str, n: int, seed: int, generator=None) -> Dataset:
        """``n`` randomised inputs of ``source`` laid out like the evaluation windows (``data.random_inputs``)."""
        return text_inputs(self, source, n, seed, generator)

    def test_dataloader(self) -> DataLoader:
        return cached_loader(self, lambda: self._loader(self.eval_windows))

    def val_dataloader(self) -> DataLoader:
        """The calibration split (the calibration pass runs as a validation epoch)."""
        return self._loader(self.calib_windows)
