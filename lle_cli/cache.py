"""Where lle keeps converted weights.

``$LLE_HOME`` wins; otherwise the platform's cache convention: ``$XDG_CACHE_HOME/lle`` (default
``~/.cache/lle``) on Linux, ``~/Library/Caches/lle`` on macOS, ``%LOCALAPPDATA%\\lle\\Cache`` on Windows.
Models live in ``<home>/models/<name>.safetensors`` with a ``<name>.json`` record of where they came from.
Partial downloads of the authors' files wait in ``<home>/downloads/`` (resumed on the next attempt), and
``<home>/locks/`` holds one lock file per model so that concurrent ``lle`` processes take turns.
``<home>/pins.json`` holds the sha256 pinned on the first verified download of each authors' file that
has no published checksum (``registry.UpstreamSource.pins_on_download``); ``lle models rm`` keeps it,
so a later download must bring the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .atomic import replacing, write_text_atomic
from .errors import DownloadError

__all__ = [
    "lle_home",
    "models_dir",
    "downloads_dir",
    "cached_weights_path",
    "partial_download_path",
    "read_record",
    "write_record",
    "install_file",
    "remove",
    "lock",
    "read_pin",
    "write_pin",
    "pinned_model",
]

LOCK_TIMEOUT_S = 900.0  # a download of the largest model over a slow link, with margin


def lle_home() -> Path:
    if env := os.environ.get("LLE_HOME"):
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "lle"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "lle" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lle"


def models_dir() -> Path:
    return lle_home() / "models"


def downloads_dir() -> Path:
    return lle_home() / "downloads"


def cached_weights_path(name: str) -> Path:
    return models_dir() / f"{name}.safetensors"


def partial_download_path(name: str, filename: str) -> Path:
    """Where an authors' file for ``name`` is downloaded to (and resumed from) before it is verified."""
    return downloads_dir() / f"{name}--{filename}.part"


def _record_path(name: str) -> Path:
    return models_dir() / f"{name}.json"


def read_record(name: str) -> dict[str, Any] | None:
    try:
        return json.loads(_record_path(name).read_text())
    except (OSError, ValueError):
        return None


def write_record(name: str, record: dict[str, Any]) -> None:
    p = _record_path(name)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(p, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _pins_path() -> Path:
    return lle_home() / "pins.json"


def _read_pins() -> dict[str, dict[str, Any]]:
    try:
        pins = json.loads(_pins_path().read_text())
    except (OSError, ValueError):
        return {}
    return pins if isinstance(pins, dict) else {}


def read_pin(name: str) -> dict[str, Any] | None:
    """``{"sha256", "filename", "url", "pinned"}`` of ``name``'s authors' file, if one was pinned here."""
    pin = _read_pins().get(name)
    return pin if isinstance(pin, dict) and isinstance(pin.get("sha256"), str) else None


def write_pin(name: str, pin: dict[str, Any]) -> None:
    """Record the first verified download's checksum (callers hold ``lock(name)``); never replaces a pin."""
    pins = _read_pins()
    if name in pins:
        return
    pins[name] = pin
    _pins_path().parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(_pins_path(), json.dumps(pins, indent=2, sort_keys=True) + "\n")


def pinned_model(sha256: str) -> str | None:
    """The model whose pinned authors' file has this sha256."""
    return next((n for n, p in _read_pins().items() if isinstance(p, dict) and p.get("sha256") == sha256), None)


def install_file(src: Path, name: str) -> Path:
    """Copy a verified file into the cache as ``name``'s weights, atomically (temporary file, rename)."""
    out = cached_weights_path(name)
    with replacing(out) as tmp:
        shutil.copyfile(src, tmp)
    return out


def remove(name: str) -> list[Path]:
    """Delete a model's cached weights, its record and any partial download; the paths removed."""
    gone = []
    partial = sorted(downloads_dir().glob(f"{name}--*")) if downloads_dir().is_dir() else []
    for p in (cached_weights_path(name), _record_path(name), *partial):
        if p.is_file():
            p.unlink()
            gone.append(p)
    return gone


@contextmanager
def lock(name: str, timeout: float | None = None) -> Iterator[None]:
    """Hold ``name``'s cache lock: one process at a time downloads or writes a model.

    An OS-level lock (``flock``/``LockFileEx`` via ``filelock``), released by the kernel if the holder dies,
    so a killed ``lle`` never leaves the cache locked.
    """
    from filelock import FileLock, Timeout

    path = lle_home() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    wait = LOCK_TIMEOUT_S if timeout is None else timeout
    try:
        with FileLock(str(path), timeout=wait):
            yield
    except Timeout:
        raise DownloadError(
            f"another lle process has held the lock on {name} for {wait:.0f} s ({path}); "
            "wait for it to finish, or stop it and try again"
        ) from None
