"""Thread count from the CPUs a process may use, and OpenMP threads that sleep when idle."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lle_cli import _threads


def test_available_cpus_follows_the_affinity_mask() -> None:
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); from lle_cli._threads import available_cpus; print(available_cpus())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_a_cgroup_quota_caps_the_count(monkeypatch) -> None:
    monkeypatch.setattr(_threads, "_cgroup_quota", lambda: 1.5)
    assert _threads.available_cpus() == min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    monkeypatch.setattr(_threads, "_cgroup_quota", lambda: None)
    assert _threads.available_cpus() >= 1


def test_the_cli_sets_threads_and_a_passive_wait_unless_the_user_did() -> None:
    probe = ("import os, sys; from lle_cli.cli.main import main; main(['--version']); import torch; "
             "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout.split()
    n = str(_threads.available_cpus())
    assert out[-3:] == ["PASSIVE", n, n]
    env.update(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out[-3:] == ["ACTIVE", "1", "1"]
