"""Data loaders that count every sample exactly once, on one process or many."""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardSampler(DistributedSampler):
    """Process r of w takes samples r, r+w, r+2w, ...: no padding, so no sample is counted twice.

    Unlike torch's DistributedSampler (which pads every shard to the same length by repeating
    samples), results then equal a single-process run. Rank and world size are read when the
    sampler is iterated, i.e. after Lightning has started the processes, so the loader can be built
    before. Being a DistributedSampler, Lightning leaves it in place.
    """

    def __init__(self, dataset: Dataset):  # no super().__init__: it needs the process group now
        self.dataset = dataset
        self.epoch = 0

    def _indices(self) -> range:
        rank, world = rank_and_world()
        return range(rank, len(self.dataset), world)

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A loader over this process's shard; workers persist across epochs, and batches are pinned for
    fast copies where a GPU is present."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(dataset),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def cached_loader(owner, build: Callable[[], DataLoader]) -> DataLoader:
    """``owner``'s evaluation loader, built once per batch size and reused by every point of the
    schedule (with ``num_workers`` its workers start once per run, not once per point)."""
    loader = getattr(owner, "_test_loader", None)
    if loader is None or loader.batch_size != owner.batch_size:
        loader = owner._test_loader = build()
    return loader
