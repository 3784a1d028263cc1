"""What a run reads from a task's splits (``data.task.TaskData``): its shape, the evaluated
sequences, the calibration split's, and the counterfactual ones."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ablate_lit.common.errors import AblateError, check
from ablate_lit.common.labels import IGNORE_INDEX
from ablate_lit.data.protocol import TaskShape
from ablate_lit.data.random_inputs import generation_steps, text_inputs
from ablate_lit.data.sampler import cached_loader, make_loader
from ablate_lit.data.task_sequences import TaskSequences


class TaskInputs:
    """The loaders and data sets of a set-up task; ``split_of`` holds its ``TaskSequences`` by split."""

    split_of: dict[str, TaskSequences]

    @property
    def task(self) -> TaskShape:
        """The task's name and size (its scores are ``stats.task_metrics.TaskScores``)."""
        evaluated = self.split_of["evaluation"]
        longest = int((evaluated.tensors["labels"] != IGNORE_INDEX).sum(1).max())  # most answer tokens of a sequence
        return TaskShape(self.task_name, self.n_rows, len(evaluated), longest)

    def sample_rows(self, n: int, seed: int, available: int) -> torch.Tensor:
        check(  # resample:data's rows
            n <= available,
            f"resample:data draws {n} sequences from the {available} of the calibration split; lower "
            f"⟨--ablation.n_resample⟩ to at most {available} or raise ⟨--data.calib_rows⟩",
        )
        return torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n]

    def calibration_sample(self, n: int, seed: int) -> Dataset:
        """``n`` answer sequences of the calibration split (resample:data's inputs)."""
        calib = self.calibration_subset()
        return calib.subset(self.sample_rows(n, seed, len(calib)))

    def calibration_subset(self, rows: torch.Tensor | None = None) -> TaskSequences:
        """The calibration split's answer sequences (``rows`` of them), indexed 0..n-1 (optimal fits on
        them, whatever the statistics were computed on)."""
        calib = self.split_of["task_calibration"]
        return calib if rows is None else calib.subset(rows)

    def counterfactual_inputs(self, which: str = "evaluation") -> TaskSequences:
        """The evaluated sequences with each row's counterfactual prompt (resample:counterfactual), or the
        calibration split's (``which="calibration"``, mean:counterfactual)."""
        if not self.has_counterfactual:
            raise AblateError(
                "the task has no counterfactual prompts; give a counterfactual column "
                "(⟨--data.counterfactual_column⟩) or use another method"
            )
        return self.split_of["counterfactual" if which == "evaluation" else "counterfactual_calibration"]

    def eval_dataset(self) -> Dataset:
        return self.split_of["evaluation"]

    def generation_steps(self, n: int, own: bool) -> int:
        """Decode steps that writing ``n`` rows of resample:generated takes (``own``: the tested model writes)."""
        return generation_steps(n, self.context_length, self.prefix, self.suffix, own)

    def random_inputs(self, source: str, n: int, seed: int, generator=None) -> Dataset:
        """``n`` randomised inputs of ``source`` laid out like the evaluated sequences (``data.random_inputs``)."""
        return text_inputs(self, source, n, seed, generator)

    def test_dataloader(self) -> DataLoader:
        return cached_loader(self, lambda: make_loader(self.split_of["evaluation"], self.batch_size, self.num_workers))

    def val_dataloader(self) -> DataLoader:
        """The calibration split of the statistics (task rows, each context once; or calibration_text windows)."""
        return make_loader(self.split_of["statistics"], self.batch_size, self.num_workers)
