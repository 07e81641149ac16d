"""How much memory a process of lle may plan for: the machine's real budget, or the user's.

Torch-free (the ONNX runtimes and the worker pool read it too). The tile planner (``lle_cli.runner``)
prices one pass's activations against ``process_memory_target()``: by default half of what the kernel
says can be allocated without swapping when the plan is made, inside a container the cgroup's limit
less what the group already holds, and never less than ``PROCESS_MEMORY_MB``. So a 2048x1536 photo
runs whole on a machine with the memory for it, and a 24-megapixel one in a few large tiles, while a
small machine keeps the bounded 2.5 GiB behaviour. ``LLE_MEMORY_MB`` fixes the target (a shared
server, a reproducible tiling).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError

__all__ = ["MEMORY_ENV", "PROCESS_MEMORY_MB", "RUNTIME_MB", "AVAILABLE_SHARE", "available_memory", "cgroup_headroom",
           "megabytes_from_env", "process_memory_target"]

MEMORY_ENV = "LLE_MEMORY_MB"
# The bounded target: the smallest the automatic one gets, and what it was before it followed the
# machine (Python, torch and the weights ~0.6 GiB, the rest for the image and one pass).
PROCESS_MEMORY_MB = 2560
# Python, torch and a model's weights in each lle process, before any image (the runner's and the
# worker pool's estimate)
RUNTIME_MB = 640
# Half of the available memory: the other half stays for the page cache, the user's other programs
# and the estimates' error (they are the worst peaks measured, bench/tiling.py).
AVAILABLE_SHARE = 0.5

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < _UNLIMITED else None


def _stat_field(path: Path, key: str) -> int:
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return 0


def cgroup_headroom(root: Path = _CGROUP_ROOT) -> int | None:
    """Bytes this process's memory cgroup can still take before its limit, or None without a limit.

    cgroup v2 (``memory.max``/``memory.current``) or v1 (``memory/memory.limit_in_bytes``/
    ``usage_in_bytes``); the group's inactive file pages count as free, the kernel reclaims them first.
    """
    for limit_f, usage_f, stat_f, inactive in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        limit = _read_int(root / limit_f)
        if limit is None:
            continue
        usage = _read_int(root / usage_f) or 0
        return max(limit - usage + _stat_field(root / stat_f, inactive), 0)
    return None


def available_memory() -> int | None:
    """Bytes that can be allocated without swapping: Linux's ``MemAvailable``, lowered to the cgroup's
    headroom inside a limited container; None where neither is known (not Linux)."""
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    headroom = cgroup_headroom()
    if headroom is not None:
        free = headroom if free is None else min(free, headroom)
    return free


def megabytes_from_env(var: str) -> float | None:
    """``$var`` as a positive number of MiB, None when unset or empty; anything else is a UsageError."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return None
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise UsageError(f"{var}={raw!r}: expected a positive number of megabytes")
    return mb


def process_memory_target() -> float:
    """MiB a whole lle process may plan for: ``$LLE_MEMORY_MB``, else ``AVAILABLE_SHARE`` of the
    available memory, at least ``PROCESS_MEMORY_MB`` (also where the available memory is unknown)."""
    mb = megabytes_from_env(MEMORY_ENV)
    if mb is not None:
        return mb
    free = available_memory()
    if free is None:
        return float(PROCESS_MEMORY_MB)
    return max(float(PROCESS_MEMORY_MB), AVAILABLE_SHARE * free / 2**20)
