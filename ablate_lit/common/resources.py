"""Memory checks made before a large allocation, so a setting that cannot fit ends in one line."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from ablate_lit.common.errors import AblateError


def _kib(path: str, key: str) -> int | None:
    """A ``key: N kB`` line of a /proc file, in bytes."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_free() -> int | None:
    """What this process's cgroup (v2) may still allocate: memory.max - memory.current."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().split("::")[-1]
        folder = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, ValueError, IndexError):
        return None


def cpu_limits() -> list[tuple[int, str]]:
    """(bytes that can still be allocated, what limits it) on the CPU: the kernel's MemAvailable, and
    the limits that apply to this process (address space and data segment, ulimit -v / -d; its cgroup)."""
    limits = []
    available = _kib("/proc/meminfo", "MemAvailable")
    if available is not None:
        limits.append((available, ""))
    for which, used, name in (
        (resource.RLIMIT_AS, "VmSize", "address-space"),
        (resource.RLIMIT_DATA, "VmData", "data"),
    ):
        soft = resource.getrlimit(which)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(
                (max(0, soft - (_kib("/proc/self/status", used) or 0)), f" under this process's {name} limit")
            )
    cgroup = _cgroup_free()
    if cgroup is not None:
        limits.append((max(0, cgroup), " under this process's cgroup memory limit"))
    return limits


def free_memory(device: torch.device) -> tuple[int, str] | None:
    """(free bytes, what limits them) on ``device``, or None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0], ""
    if device.type == "cpu":
        limits = cpu_limits()
        return min(limits) if limits else None
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_fits(needed: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse to allocate ``needed`` bytes for ``what`` where less than that is free on ``device``."""
    found = free_memory(device)
    if found is not None and needed > found[0]:
        free, why = found
        raise AblateError(f"{what} need {gib(needed)} but {gib(free)} are free on {device}{why}; {fix}")
