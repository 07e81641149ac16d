"""The memory a process plans for follows the machine (lle_cli.memory), and the tile planner with it."""

from __future__ import annotations

import pytest
import torch

from lle_cli import memory
from lle_cli.errors import UsageError
from lle_cli.models import build_model
from lle_cli.registry import get_registry
from lle_cli.runner import TILE_MEMORY_ENV, LoadedModel
from lle_cli.worker_tasks import worker_tile_budget

GiB = 2**30


def _cgroup_v2(root, limit: str, current: int, inactive: int) -> None:
    (root / "memory.max").write_text(limit + "\n")
    (root / "memory.current").write_text(f"{current}\n")
    (root / "memory.stat").write_text(f"anon 123\nfile 456\ninactive_file {inactive}\nactive_file 7\n")


def test_cgroup_v2_headroom_counts_inactive_file_pages_as_free(tmp_path) -> None:
    _cgroup_v2(tmp_path, str(4 * GiB), current=3 * GiB, inactive=GiB // 2)
    assert memory.cgroup_headroom(tmp_path) == GiB + GiB // 2


def test_cgroup_over_its_limit_has_no_headroom(tmp_path) -> None:
    _cgroup_v2(tmp_path, str(GiB), current=2 * GiB, inactive=0)
    assert memory.cgroup_headroom(tmp_path) == 0


def test_unlimited_cgroups_set_no_bound(tmp_path) -> None:
    _cgroup_v2(tmp_path, "max", current=3 * GiB, inactive=0)
    assert memory.cgroup_headroom(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert memory.cgroup_headroom(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{8 * GiB}\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{2 * GiB}\n")
    (v1 / "memory" / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {GiB}\n")
    assert memory.cgroup_headroom(v1) == 7 * GiB
    assert memory.cgroup_headroom(tmp_path / "absent") is None


def test_a_container_limit_lowers_the_available_memory(monkeypatch) -> None:
    free = memory.available_memory()
    if free is None:
        pytest.skip("no /proc/meminfo on this system")
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: 123 * 2**20)
    assert memory.available_memory() == min(free, 123 * 2**20)


def test_target_is_half_the_available_memory_and_at_least_the_bounded_one(monkeypatch) -> None:
    monkeypatch.delenv(memory.MEMORY_ENV, raising=False)
    monkeypatch.setattr(memory, "available_memory", lambda: 16 * GiB)
    assert memory.process_memory_target() == 8192
    monkeypatch.setattr(memory, "available_memory", lambda: 1 * GiB)
    assert memory.process_memory_target() == memory.PROCESS_MEMORY_MB
    monkeypatch.setattr(memory, "available_memory", lambda: None)  # not Linux: the bounded target
    assert memory.process_memory_target() == memory.PROCESS_MEMORY_MB


def test_the_users_target_wins_and_a_bad_one_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 64 * GiB)
    monkeypatch.setenv(memory.MEMORY_ENV, "3000")
    assert memory.process_memory_target() == 3000
    for bad in ("lots", "0", "-5"):
        monkeypatch.setenv(memory.MEMORY_ENV, bad)
        with pytest.raises(UsageError, match="LLE_MEMORY_MB"):
            memory.process_memory_target()


def _model(name: str) -> LoadedModel:
    entry = get_registry().resolve(name)
    return LoadedModel(entry, build_model(entry.family, entry.architecture).eval(), torch.device("cpu"), torch.float32, "test")


@pytest.mark.parametrize("name", ["rave.unpaired", "zero-dce.lle-sice", "llflow.lle-synth-rqs"])
def test_a_2048x1536_photo_runs_whole_where_the_memory_is_there(monkeypatch, name) -> None:
    """The families that tile at the bounded 2.5 GiB target run a 3 MP photo whole on a machine with
    24 GiB free (tiles cost time: bench/tiling.py), and a 24 MP one in a few large tiles."""
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    model = _model(name)
    monkeypatch.setenv(memory.MEMORY_ENV, "2560")
    bounded = model.tile_plan(1536, 2048)
    assert bounded is not None and bounded.tiled
    monkeypatch.delenv(memory.MEMORY_ENV)
    monkeypatch.setattr(memory, "available_memory", lambda: 24 * GiB)
    assert model.tile_plan(1536, 2048) is None
    big = model.tile_plan(4000, 6000)
    assert big is not None and 2 <= len(big) < len(_bounded_plan(monkeypatch, model, 4000, 6000))


def _bounded_plan(monkeypatch, model: LoadedModel, h: int, w: int):
    monkeypatch.setenv(memory.MEMORY_ENV, str(memory.PROCESS_MEMORY_MB))
    try:
        return model.tile_plan(h, w)
    finally:
        monkeypatch.delenv(memory.MEMORY_ENV)


def test_workers_share_the_target(monkeypatch) -> None:
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    monkeypatch.setenv(memory.MEMORY_ENV, "8192")
    assert worker_tile_budget(1) is None  # one process plans for itself
    assert worker_tile_budget(2) == (8192 - 640) // 2 - 256
    monkeypatch.setenv(memory.MEMORY_ENV, "1000")
    assert worker_tile_budget(4) == 512  # never below the smallest activation budget
    monkeypatch.setenv(TILE_MEMORY_ENV, "700")
    assert worker_tile_budget(2) is None  # the user's activation budget wins
