"""Where lle keeps converted weights.

``$LLE_HOME`` wins; otherwise the platform's cache convention: ``$XDG_CACHE_HOME/lle`` (default
``~/.cache/lle``) on Linux, ``~/Library/Caches/lle`` on macOS, ``%LOCALAPPDATA%\\lle\\Cache`` on Windows.
Models live in ``<home>/models/<name>.safetensors`` with a ``<name>.json`` record of where they came from.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["lle_home", "models_dir", "cached_weights_path", "read_record", "write_record"]


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


def cached_weights_path(name: str) -> Path:
    return models_dir() / f"{name}.safetensors"


def read_record(name: str) -> dict[str, Any] | None:
    p = models_dir() / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def write_record(name: str, record: dict[str, Any]) -> None:
    p = models_dir() / f"{name}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.part")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p)
