"""How many threads a process should use, and how its idle threads wait.

Two defaults of the runtime behave badly when lle is not alone on the machine (a batch job beside
other work, a container with a CPU quota):

* torch sizes its pool from the machine's cores, not from the CPUs this process may run on (its
  affinity mask, a cgroup quota), so a container limited to 2 CPUs of 64 runs 64 threads that take
  turns on 2;
* OpenMP's threads spin between parallel regions (``OMP_WAIT_POLICY=ACTIVE``-like behaviour for a
  while), which costs little on an idle machine but, when another process holds a core, burns the
  time slices the other threads need: each region then waits for a thread that is not running.

``prepare_process`` fixes both through the environment, before torch (and its OpenMP) is loaded; a
value the user set is never replaced.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

__all__ = ["available_cpus", "prepare_process"]


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may actually use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def prepare_process() -> None:
    """Set ``OMP_NUM_THREADS`` to the available CPUs and ``OMP_WAIT_POLICY=PASSIVE`` (idle threads
    sleep instead of spinning) unless the user set them; only before torch is imported, which reads them."""
    if "torch" in sys.modules:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cpus()))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
