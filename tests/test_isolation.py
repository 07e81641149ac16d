"""The tests never touch the user's caches (tests/conftest.py): isolated homes that no test can undo."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from lle_cli import cache, download

from .conftest import HomeGuard, real_cache_dirs, tree_changes, tree_state


def _inside(path: str | Path, root: Path) -> bool:
    path = Path(path)
    return path == root or root in path.parents


def test_monkeypatch_undo_keeps_the_isolated_homes(monkeypatch, lle_home, home_guard) -> None:
    monkeypatch.setenv("LLE_HOME", "/elsewhere")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.undo()  # what tests/test_clip.py once did, which sent the suite into ~/.cache/lle
    assert os.environ["LLE_HOME"] == str(lle_home) and cache.lle_home() == lle_home
    assert _inside(os.environ["HF_HOME"], lle_home) and _inside(download.hub_cache_dir(), lle_home)
    assert _inside(os.environ["XDG_CACHE_HOME"], lle_home)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and download.offline_mode()
    for path in (cache.lle_home(), download.hub_cache_dir(), os.environ["XDG_CACHE_HOME"]):
        assert not home_guard.guarded(path)


def test_a_write_to_the_real_cache_is_refused_and_reported(home_guard) -> None:
    # the parent does not exist, so even without the guard this open could not create anything
    probe = Path(os.path.expanduser("~/.cache/lle")) / f"no-such-dir-{uuid.uuid4().hex}" / "probe"
    seen = len(home_guard.violations)
    with pytest.raises(PermissionError, match="real cache"):
        probe.open("w").close()
    with pytest.raises(FileNotFoundError):
        probe.open().close()  # reading is allowed: the file simply is not there
    assert home_guard.violations[seen:] == [f"open {probe}"]
    del home_guard.violations[seen:]  # reported and handled here, not a leak for the teardown to flag


def test_guard_sees_every_kind_of_write(tmp_path) -> None:
    root = tmp_path / "real" / "lle"
    guard = HomeGuard([root], allowed=[tmp_path / "isolated"])
    guard.active = True
    inside, outside = str(root / "models" / "x.safetensors"), str(tmp_path / "isolated" / "x")
    for event, args in [
        ("open", (inside, "w", os.O_WRONLY | os.O_CREAT)),
        ("open", (inside, None, os.O_RDWR)),
        ("os.mkdir", (str(root), 0o777, -1)),
        ("os.rename", (outside, inside, -1, -1)),  # moving a file in counts as a write
        ("os.remove", (Path(inside), -1)),
        ("shutil.rmtree", (root, None)),
    ]:
        with pytest.raises(PermissionError):
            guard(event, args)
    assert len(guard.violations) == 6
    guard("open", (inside, "r", os.O_RDONLY))  # reads and writes elsewhere pass
    guard("os.mkdir", (outside, 0o777, -1))
    guard("os.rename", (outside, outside + ".new", -1, -1))
    guard("shutil.copyfile", (inside, outside))  # copying out of the real cache only reads it
    guard("os.symlink", (inside, outside, -1))
    guard("open", (3, "w", os.O_WRONLY))  # an inherited descriptor is not a path
    guard.active = False
    guard("os.mkdir", (str(root), 0o777, -1))
    assert len(guard.violations) == 6


def test_a_cache_root_above_the_temp_dir_is_not_guarded(tmp_path) -> None:
    # XDG_CACHE_HOME=/tmp would otherwise forbid the isolated homes the tests write to
    guard = HomeGuard([tmp_path, tmp_path.parent / "elsewhere"], allowed=[tmp_path / "isolated"])
    assert not guard.guarded(tmp_path / "isolated" / "lle" / "x")
    assert guard.guarded(tmp_path.parent / "elsewhere" / "x")


def test_real_cache_dirs_follow_the_users_environment(tmp_path) -> None:
    home = tmp_path / "home"
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "LLE_HOME": str(tmp_path / "mine"), "HF_HUB_CACHE": str(tmp_path / "hub")}
    dirs = real_cache_dirs(env, home)
    for expected in (tmp_path / "xdg" / "lle", home / ".cache" / "lle", tmp_path / "xdg" / "huggingface",
                     home / ".cache" / "clip", tmp_path / "mine", tmp_path / "hub"):
        assert expected in dirs


def test_tree_state_sees_new_changed_and_removed_entries(tmp_path) -> None:
    root = tmp_path / "lle"
    assert tree_state(root) is None
    (root / "models").mkdir(parents=True)
    (root / "models" / "a.json").write_text("{}")
    before = tree_state(root)
    assert set(before) == {".", "models", os.path.join("models", "a.json")}
    assert tree_state(root) == before
    (root / "models" / "a.json").write_text('{"x": 1}')  # a different size at least
    changed = tree_state(root)
    assert changed != before
    os.utime(root / "models" / "a.json", ns=(1, 1))  # same size, another mtime
    assert tree_state(root) != changed
    (root / "models" / "a.json").unlink()
    assert os.path.join("models", "a.json") not in tree_state(root)


def test_tree_changes_name_what_differs(tmp_path) -> None:
    root = tmp_path / "lle"
    assert tree_changes(None, None) == []
    assert tree_changes(None, {".": (True, 0, 1)}) == ["created"]
    (root / "locks").mkdir(parents=True)
    before = tree_state(root)
    (root / "locks" / "m.lock").touch()
    after = tree_state(root)
    # the new file first (its folder's mtime may have moved too, if the clock ticked in between)
    assert tree_changes(before, after)[0] == os.path.join("locks", "m.lock") + " (new)"
    os.utime(root / "locks" / "m.lock", ns=(1, 1))
    assert os.path.join("locks", "m.lock") + " (changed)" in tree_changes(after, tree_state(root))
    assert tree_changes(after, None) == ["removed"]
