"""Shared fixtures. Tests that need ../shared skip with a reason, or fail when LLE_REQUIRE_SHARED=1."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(os.environ.get("LLE_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))

# local file names of the authors' checkpoints in ../shared/upstream/weights, by registry name
UPSTREAM_FILES = {
    "rave.paired": "rave_paired.pth",
    "rave.unpaired": "rave_unpaired.pth",
    "rave.unpaired-shifted": "rave_unpaired_shifted.pth",
    "clip-lit.paired": "clip_lit_paired.pth",
    "clip-lit.unpaired": "clip_lit_unpaired.pth",
    "clip-lit.official": "clip_lit_official.pth",
    "clip-lit-latent.paired": "clip_lit_latent_paired.pth",
    "clip-lit-latent.unpaired": "clip_lit_latent_unpaired.pth",
    "scl-lle.official": "scl_lle.pth",
    "zero-dce.official": "zero_dce.pth",
}


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip (fail under LLE_REQUIRE_SHARED=1) when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"{p} is missing (the shared fixtures live in ../shared beside the checkout)"
        if os.environ.get("LLE_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " and LLE_REQUIRE_SHARED=1")
        pytest.skip(msg)
    return p


# ---- the user's caches stay untouched ------------------------------------------------------------
# huggingface_hub and open_clip read HF_HOME/XDG_CACHE_HOME once, when first imported, and some tests call
# `monkeypatch.undo()`: so the isolation is set on os.environ for the whole session, before any test
# module is imported, and the per-test home uses a MonkeyPatch of its own that no test can undo.
_ISOLATED = ("LLE_HOME", "HF_HOME", "XDG_CACHE_HOME", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "LLE_MEMORY_MB")
# these would override HF_HOME and send the hub cache back to the user's disk
_DROPPED = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# audit event -> the positions of the paths it changes (a copy's or a link's source is only read)
_MUTATING_EVENTS = {"os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.utime": (0,), "os.chmod": (0,),
                    "os.chown": (0,), "os.truncate": (0,), "shutil.rmtree": (0,), "os.rename": (0, 1),
                    "shutil.move": (0, 1), "shutil.copyfile": (1,), "os.symlink": (1,), "os.link": (1,)}


def real_cache_dirs(env: Mapping[str, str], home: Path) -> list[Path]:
    """The caches lle, huggingface_hub and open_clip would write to outside the tests."""
    cache = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    dirs = [cache / "lle", home / ".cache" / "lle", cache / "huggingface", home / ".cache" / "huggingface",
            home / ".cache" / "clip"]  # open_clip keeps URL downloads in ~/.cache/clip whatever the env says
    dirs += [Path(env[k]) for k in ("LLE_HOME", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE") if env.get(k)]
    return dirs


class HomeGuard:
    """Refuses (PermissionError) and records every write this process tries under the real caches.

    An audit hook sees the write before it happens, so a leaking test fails without leaving a file in
    the user's cache; subprocesses inherit the isolated environment instead.
    """

    def __init__(self, roots: list[Path], allowed: list[Path]) -> None:
        keep = []
        for root in roots:
            root = Path(os.path.abspath(os.path.expanduser(root)))
            # a root above the temp dir (XDG_CACHE_HOME=/tmp, say) would forbid the isolated homes too
            if not any(_under(a, root) for a in allowed):
                keep += [root, Path(os.path.realpath(root))]
        self.roots = tuple(dict.fromkeys(str(r) for r in keep))
        self.violations: list[str] = []
        self.active = False

    def guarded(self, path: object) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):  # an int is a descriptor already opened
            return False
        p = os.path.abspath(os.fsdecode(path))
        return any(p == r or p.startswith(r + os.sep) for r in self.roots)

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            paths = [args[0]] if args[2] & _WRITE_FLAGS else []
        elif event in _MUTATING_EVENTS:
            paths = [args[i] for i in _MUTATING_EVENTS[event] if i < len(args)]
        else:
            return
        for path in paths:
            if self.guarded(path):
                what = f"{event} {os.fsdecode(path)}"
                self.violations.append(what)  # kept: library code may swallow the PermissionError
                raise PermissionError(f"a test tried to change the real cache: {what}")


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def tree_state(root: Path) -> dict[str, tuple[bool, int, int]] | None:
    """Every entry under ``root`` with (is_dir, size, mtime_ns), or None when ``root`` does not exist."""
    if not root.exists():
        return None
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:  # removed while we walked
                continue
            state[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    st = root.stat()
    state["."] = (True, 0, st.st_mtime_ns)
    return state


def tree_changes(before: dict | None, after: dict | None) -> list[str]:
    """What differs between two ``tree_state`` results, one entry per line of a report."""
    if before is None or after is None:
        return [] if before == after else ["created" if before is None else "removed"]
    out = [f"{k} (new)" for k in sorted(after.keys() - before.keys())]
    out += [f"{k} (gone)" for k in sorted(before.keys() - after.keys())]
    out += [f"{k} (changed)" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return out


_GUARD: HomeGuard | None = None
_SESSION: dict = {}


def pytest_configure(config: pytest.Config) -> None:
    global _GUARD
    home = Path.home()
    watched = sorted({Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "lle", home / ".cache" / "lle"})
    tmp = Path(tempfile.mkdtemp(prefix="lle-tests-"))
    _SESSION.update(
        tmp=tmp,
        saved={k: os.environ.get(k) for k in _ISOLATED + _DROPPED},
        watched={p: tree_state(p) for p in watched},
    )
    _GUARD = HomeGuard(real_cache_dirs(os.environ, home), [tmp, Path(tempfile.gettempdir())])
    os.environ.update(LLE_HOME=str(tmp / "lle"), HF_HOME=str(tmp / "hf"), XDG_CACHE_HOME=str(tmp / "xdg"),
                      # tests that exercise downloads serve them on 127.0.0.1 and set their own HF_* variables
                      HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                      # the tile plans follow the machine's free memory by default (lle_cli.memory); the
                      # tests plan for the bounded target so that they tile alike on every machine
                      LLE_MEMORY_MB="2560")
    for k in _DROPPED:
        os.environ.pop(k, None)
    sys.addaudithook(_GUARD)  # cannot be removed: pytest_unconfigure switches it off instead
    _GUARD.active = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    changed = {p: tree_changes(before, tree_state(p)) for p, before in _SESSION.get("watched", {}).items()}
    if changed := {p: c for p, c in changed.items() if c}:
        _SESSION["changed"] = changed
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if changed := _SESSION.get("changed"):
        terminalreporter.write_sep("=", "real cache changed", red=True, bold=True)
        for path, what in changed.items():
            more = f", and {len(what) - 5} more" if len(what) > 5 else ""
            terminalreporter.write_line(f"ERROR: {path} changed during the tests: {', '.join(what[:5])}{more}", red=True)
        # the tree is compared, not who wrote it: an `lle` run alongside the tests shows up here too
        terminalreporter.write_line("(if another process wrote there meanwhile, rerun the tests to tell)")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _GUARD is not None:
        _GUARD.active = False
    for k, v in _SESSION.get("saved", {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if "tmp" in _SESSION:
        shutil.rmtree(_SESSION["tmp"], ignore_errors=True)


@pytest.fixture(scope="session")
def home_guard() -> HomeGuard:
    if _GUARD is None:
        pytest.fail("tests/conftest.py did not install its home guard (pytest_configure never ran)")
    return _GUARD


@pytest.fixture(autouse=True)
def lle_home(tmp_path_factory, home_guard) -> Iterator[Path]:
    """Every test gets its own empty cache: tests never touch the user's ~/.cache/lle."""
    home = tmp_path_factory.mktemp("lle_home")
    seen = len(home_guard.violations)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLE_HOME", str(home))
        mp.setenv("HF_HOME", str(home / "hf"))
        mp.setenv("XDG_CACHE_HOME", str(home / "xdg"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield home
    if len(home_guard.violations) > seen:
        pytest.fail("this test tried to change the real cache: " + "; ".join(home_guard.violations[seen:]))


@pytest.fixture(autouse=True)
def _threads_and_seed():
    # seeded so that a test's random inputs are the same on every run (no flaky tolerances)
    torch.set_num_threads(2)
    torch.manual_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def weights(tmp_path) -> Path:
    """Random Zero-DCE weights as a safetensors file: what the CLI, record and eval tests enhance with."""
    from lle_cli.models import build_model
    from lle_cli.weights import save_safetensors

    path = tmp_path / "zdce.safetensors"
    save_safetensors(build_model("zero_dce").state_dict(), path)
    return path
