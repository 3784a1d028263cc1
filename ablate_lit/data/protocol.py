"""What a run reads from its DataModule: ``AblationData``, the interface TextData, MaskedTextData,
TaskData and ImageData share (checked by ``tests/test_families.py`` for every registered one).

A DataModule gives two disjoint, deterministic splits (evaluation and calibration), each as a
loader and a fingerprint of its exact inputs; samples of the calibration split (resample:data,
optimal's fits); randomised inputs laid out like its evaluation inputs (the resample sources); and
says whether it is a task, whose answers are scored instead of every token (``TaskShape``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class TaskShape:
    """A task's size, all its scores need (``stats.task_metrics.TaskScores``)."""

    name: str
    """The shipped task's name, or the rows file's stem."""
    n_rows: int
    """Rows evaluated (each scored once: accuracy, answer CE, logit difference, KL)."""
    n_sequences: int
    """Teacher-forced sequences evaluated (an answer's, and a distractor's where it has its own)."""
    longest: int
    """Most answer tokens of one sequence."""


@runtime_checkable
class AblationData(Protocol):
    batch_size: int | str
    """Inputs per batch, or ``auto`` (found from the device's memory before the run)."""

    def connect(self, *model_side) -> None:
        """What the model side gives the data: a tokenizer, or (preprocessing, classes, input size)."""

    def setup(self, stage: str | None = None) -> None: ...

    def test_dataloader(self) -> DataLoader:
        """The evaluation split, in a fixed order, each input once whatever the number of processes."""

    def val_dataloader(self) -> DataLoader:
        """The calibration split the statistics are computed on (a validation epoch)."""

    def eval_dataset(self) -> Dataset: ...

    def calibration_subset(self, rows=None) -> Dataset:
        """The calibration split (``rows`` of it), indexed 0..n-1: optimal fits on it."""

    def calibration_sample(self, n: int, seed: int) -> Dataset:
        """``n`` calibration inputs drawn with ``seed``: resample:data's inputs."""

    def random_inputs(self, source: str, n: int, seed: int, generator=None) -> Dataset:
        """``n`` inputs of a resample ``source``, laid out like the evaluation inputs."""

    def fingerprint(self, which: str) -> str:
        """A hash of a split's exact inputs (evaluation, calibration, ...)."""

    def shape_key(self) -> dict:
        """What the inputs' layout is (cached statistics and resample caches depend on it)."""

    def positions(self) -> int | None:
        """Positions of every input (None where the model decides, e.g. images)."""

    def check_positions(self, limit: int) -> None:
        """Refuse, in one line naming the fix, inputs longer than the model's ``limit`` positions."""

    def describe(self, which: str) -> str:
        """A split in words: ``25 windows of 256 tokens``."""

    @property
    def task(self) -> TaskShape | None:
        """The task's shape where answers are scored (TaskData), else None (every token or image)."""

    @property
    def has_counterfactual(self) -> bool:
        """The rows carry counterfactual prompts (resample:counterfactual, mean:counterfactual)."""

    @property
    def fixed_template(self) -> bool:
        """Every input has the same length, so a position means the same in every input (+position fits)."""
