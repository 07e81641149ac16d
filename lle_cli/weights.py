"""Reading, verifying and writing weight files.

We write safetensors only. Upstream pickles are read with ``weights_only=True`` and only when
importing an authors' checkpoint; every file is checked against its sha256 before use.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import replacing
from .digest import sha256_file
from .errors import ChecksumError, WeightsError

__all__ = [
    "sha256_file",
    "verify_sha256",
    "save_safetensors",
    "load_safetensors",
    "load_upstream_checkpoint",
    "load_upstream_component",
    "clean_state_dict",
    "UPSTREAM_SAFE_GLOBALS",
]

# The one class besides tensors and containers that a weights-only load of an authors' file may
# rebuild: URetinex-Net's checkpoints pickle their training options as an ``argparse.Namespace``
# (plain attributes, whose values go through the same weights-only unpickler). Allowed only inside
# ``_torch_load``, never globally.
UPSTREAM_SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)




def verify_sha256(path: Path, expected: str | None, *, what: str = "weights") -> str:
    """Return the file's sha256; raise ``ChecksumError`` if it differs from ``expected``."""
    actual = sha256_file(path)
    if expected and actual != expected.lower():
        raise ChecksumError(
            f"{path}: sha256 {actual[:16]}... does not match the manifest's {expected[:16]}... for {what}; "
            "the file is corrupt or a different version (re-download it, or pass --trust-unknown if you "
            "know where it comes from)"
        )
    return actual


def save_safetensors(state: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write atomically: a half-written weights file must never sit in the cache."""
    with replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=dict(metadata or {}))


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e}); re-download or re-import it") from e


def clean_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Unwrap ``{'state_dict': ...}``-style containers and strip DataParallel's ``module.`` prefix."""
    for key in ("state_dict", "model", "params", "net"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError("the checkpoint holds no state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``, with ``UPSTREAM_SAFE_GLOBALS`` allowed for this call only."""
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory; pass the checkpoint file inside it (.pth, .pt or .safetensors)")
    try:
        with torch.serialization.safe_globals(list(UPSTREAM_SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise WeightsError(f"{path}: no such file") from e
    except Exception as e:  # torch raises many types for a bad file; say which kind of bad it is
        raise WeightsError(f"{path}: {_unreadable_checkpoint(path, e)}") from e


def load_upstream_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Load an authors' ``.pth``/``.pt`` pickle safely (``weights_only=True``) or a safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return clean_state_dict(load_safetensors(path))
    return clean_state_dict(_torch_load(path))


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        key = prefix + k.removeprefix("module.")
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            raise WeightsError(f"the checkpoint's weights hold a {type(v).__name__} at {key!r}, not tensors")
    return out


def load_upstream_component(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One file of a several-file model: its weights, nested state dicts flattened with dots
    (``{'state_dict': {'model_R': {'conv1.weight': ...}}}`` -> ``model_R.conv1.weight``), and the
    options it pickles as an ``argparse.Namespace`` (``{}`` if none). Optimiser states are not read."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path), {}
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: the checkpoint holds no state dict of tensors")
    options: dict[str, Any] = {}
    for v in obj.values():
        if isinstance(v, argparse.Namespace):
            options = dict(vars(v))
            break
    weights: object = obj
    for key in ("state_dict", "model", "params", "net"):
        if key in obj and isinstance(obj[key], Mapping):
            weights = obj[key]
            break
    try:
        state = _flatten(weights)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    if not state:
        raise WeightsError(f"{path}: the checkpoint holds no tensors")
    return state, options


def _unreadable_checkpoint(path: Path, e: Exception) -> str:
    """Why ``torch.load`` failed, in terms of what the user should do."""
    import pickle
    import zipfile

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    text = str(e).lower()
    if size == 0:
        return "the file is empty; download it again"
    # a zip checkpoint cut short has lost its central directory; the legacy format reports EOF
    if isinstance(e, pickle.UnpicklingError) and "weights only" in text:
        return ("it stores Python objects besides tensors, which a weights-only load refuses (lle never unpickles "
                "arbitrary objects); save its state dict alone (torch.save(model.state_dict(), ...)) and import that")
    if (head == b"PK\x03\x04" and not zipfile.is_zipfile(path)) or "eof" in text or "corrupt" in text:
        return f"the file is truncated or corrupt ({size:,} bytes); download it again and check its size"
    return f"not a PyTorch checkpoint lle can read ({type(e).__name__}); check that it is a .pth/.pt of model weights"
