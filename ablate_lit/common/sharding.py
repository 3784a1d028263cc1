"""Sharded evaluation for models that do not fit one device: FSDP2 over all processes.

``--trainer.strategy fsdp2`` is Lightning's ``ModelParallelStrategy`` with every process in one
data-parallel group and no tensor parallelism: each transformer block (and the rest of the model)
is split across the processes with ``torch.distributed.fsdp.fully_shard`` and gathered only while
it runs. Activations are never sharded, so the pre-out hooks see whole ``[batch, pos, width]``
inputs exactly as on one device, and the calibration statistics reduce across processes as
under DDP. It runs on CPU (gloo) as well as on GPUs (nccl).

Every process must run the same number of forward passes, because each forward gathers weights
from all processes; ``AblationModule`` pads a process whose shard of the data has fewer batches
with forward passes whose results are discarded (hooks paused), so no sample is counted twice.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn

from ablate_lit.common.errors import AblateError

SHARDING = ("FSDP", "ModelParallel", "DeepSpeed")


def is_sharded(strategy) -> bool:
    """True for strategies that split the weights across processes (FSDP, FSDP2, DeepSpeed)."""
    return any(k in cls.__name__ for cls in type(strategy).__mro__ for k in SHARDING)


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with data-parallel size = number of processes, tensor-parallel size 1."""

    def __init__(self, **kwargs):
        kwargs.setdefault("tensor_parallel_size", 1)
        super().__init__(**kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


if "fsdp2" not in StrategyRegistry:
    StrategyRegistry.register(
        "fsdp2", FSDP2Strategy, description="FSDP2 (fully_shard) over all processes, no tensor parallelism (ablate_lit)"
    )


def shard(model: nn.Module, blocks: list[nn.Module], mesh) -> bool:
    """Apply FSDP2 to each block, then to the model (embeddings, head and anything left); False
    when the model is sharded already."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return False  # configure_model runs at every trainer call; shard once
    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
        raise AblateError(
            "ablate_lit shards weights but does not split attention heads across processes; "
            "use ⟨--trainer.strategy fsdp2⟩ (tensor_parallel_size 1)"
        )
    group = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    for block in blocks:
        fully_shard(block, mesh=group)
    fully_shard(model, mesh=group)
    return True


def pad_forwards(module, batch, batch_idx: int, n_batches: int, padding) -> None:
    """Under a sharding strategy every forward gathers weights from all processes, so all must run
    as many. After batch 0 (which every process has) the processes agree on the largest batch
    count; on its last batch, a process with fewer runs ``padding(batch)`` (the forward passes of
    one step, results discarded) once per missing batch."""
    if batch_idx == 0:
        mine = torch.tensor(n_batches, device=module.device)
        module._most_batches = int(module.trainer.strategy.reduce(mine, reduce_op="max"))
    if batch_idx == n_batches - 1:
        for _ in range(module._most_batches - n_batches):
            padding(batch)
