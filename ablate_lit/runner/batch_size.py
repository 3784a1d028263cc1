"""``--data.batch_size auto``: the largest batch whose forward fits on the accelerator."""

from __future__ import annotations

import torch

from ablate_lit.common.errors import AblateError

CPU_DEFAULT = 8


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


@torch.inference_mode()
def find_batch_size(module, dataset, device_type: str, limit: int = 1024) -> int:
    """Double the batch from 1 while a forward + scoring of that many items of ``dataset`` fits;
    return the last size that did, halved once more as headroom for the ablation's own buffers
    (a resample replacement holds one [batch, pos, width] tensor per layer call). Without an
    accelerator nothing runs out of memory, so CPU_DEFAULT is used."""
    if device_type != "cuda":
        return min(CPU_DEFAULT, len(dataset))
    collate = torch.utils.data.default_collate
    fits, size = 0, 1
    while size <= min(limit, len(dataset)):
        batch = collate([dataset[i] for i in range(size)])
        batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        try:
            module.logits_and_labels(batch)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not _is_oom(exc):
                raise
            break
        finally:
            del batch
            torch.cuda.empty_cache()
        fits, size = size, size * 2
    if fits == 0:
        raise AblateError(
            "not even one input fits in accelerator memory; use ⟨--model.dtype⟩ bfloat16, a shorter "
            "⟨--data.context_length⟩, or a sharded strategy"
        )
    return max(1, fits // 2) if fits < len(dataset) else fits


MOST_PER_PASS = 32
"""The most ablations ``auto`` puts in one forward pass (beyond this a pass gains nothing on any GPU)."""


@torch.inference_mode()
def find_per_pass(module, dataset, batch_size: int, device_type: str, setting) -> int:
    """``--ablation.ablations_per_pass``: ``setting`` where it is a number; for ``auto``, as many copies of
    a batch as the GPU's free memory holds (from the memory one forward pass of a batch takes, with a
    third of the free memory left as headroom), and 1 without a GPU: on a CPU a larger batch is no faster."""
    if setting != "auto":
        return int(setting)
    if device_type != "cuda":
        return 1
    collate = torch.utils.data.default_collate
    batch = collate([dataset[i] for i in range(min(batch_size, len(dataset)))])
    batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    module.logits_and_labels(batch)
    one = max(1, torch.cuda.max_memory_allocated() - before)
    free = torch.cuda.mem_get_info()[0]
    return max(1, min(MOST_PER_PASS, int(2 * free / 3 // one)))
