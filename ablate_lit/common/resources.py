"""Memory checks made before a large allocation, so a setting that cannot fit ends in one line."""

from __future__ import annotations

from pathlib import Path

import torch

from ablate_lit.common.errors import AblateError


def free_bytes(device: torch.device) -> int | None:
    """Memory that can still be allocated on ``device`` (CUDA: free device memory; CPU: the kernel's
    MemAvailable), or None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_fits(needed: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse to allocate ``needed`` bytes for ``what`` where less than that is free on ``device``."""
    free = free_bytes(device)
    if free is not None and needed > free:
        raise AblateError(f"{what} need {gib(needed)} but {gib(free)} are free on {device}; {fix}")
