"""Finding, verifying and importing weights for a registry entry.

Resolution order for ``load_weights``: an explicit ``--weights`` file, the copy embedded in the wheel,
then the cache (filled by ``lle models import``). Every embedded or cached file is checked against its
sha256 before use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from . import cache
from .errors import ChecksumError, UsageError, WeightsError
from .models import FAMILIES, build_model, detect_family, load_state_strict
from .registry import ModelEntry, Registry, get_registry
from .weights import load_safetensors, load_upstream_checkpoint, save_safetensors, sha256_file, verify_sha256

__all__ = ["ImportResult", "import_checkpoint", "load_weights", "weights_location", "embedded_path"]


@dataclass(frozen=True)
class ImportResult:
    model: str
    path: Path
    sha256: str
    source_sha256: str
    verified: bool  # the source matched the manifest's checksum


def embedded_path(entry: ModelEntry) -> Path | None:
    if not entry.embedded:
        return None
    p = resources.files("lle_cli") / entry.embedded
    return Path(str(p)) if p.is_file() else None


def weights_location(entry: ModelEntry) -> str | None:
    """``'embedded'``, ``'cached'`` or None: where ``load_weights`` would find this model's weights."""
    if embedded_path(entry):
        return "embedded"
    if cache.cached_weights_path(entry.name).is_file():
        return "cached"
    return None


def _conversion_metadata(entry: ModelEntry, source_sha256: str) -> dict[str, str]:
    # One metadata key: safetensors orders multiple keys unpredictably, which would change the sha256.
    info = {"model": entry.name, "family": entry.family, "source_sha256": source_sha256, "format": 1}
    return {"lle": json.dumps(info, sort_keys=True)}


def _missing_message(entry: ModelEntry) -> str:
    how = f"`lle models import {entry.upstream.filename}`" if entry.upstream else "`lle models import FILE`"
    where = f" (the authors' file: {entry.upstream.url})" if entry.upstream else ""
    return f"model {entry.name} has no weights on this machine; import the original checkpoint with {how}{where}, or pass --weights FILE"


def load_weights(entry: ModelEntry, weights: Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """State dict for ``entry`` and a short description of where it came from."""
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise WeightsError(f"{weights}: no such weights file")
        return load_upstream_checkpoint(weights), str(weights)
    emb = embedded_path(entry)
    if emb is not None:
        verify_sha256(emb, entry.embedded_sha256, what=f"embedded {entry.name}")
        return load_safetensors(emb), "embedded"
    path = cache.cached_weights_path(entry.name)
    if path.is_file():
        record = cache.read_record(entry.name) or {}
        expected = entry.hub.sha256 if entry.hub else None
        if record.get("sha256") and record["sha256"] != expected:
            expected = record["sha256"]  # imported with --trust-unknown: check integrity against the import
        try:
            verify_sha256(path, expected, what=entry.name)
        except ChecksumError as e:
            raise ChecksumError(f"{e}; delete it and run `lle models import` again") from None
        return load_safetensors(path), str(path)
    raise WeightsError(_missing_message(entry))


def import_checkpoint(
    path: Path, model: str | None = None, *, trust_unknown: bool = False, registry: Registry | None = None
) -> ImportResult:
    """Verify an authors' checkpoint, convert it to safetensors and store it in the cache."""
    reg = registry or get_registry()
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    digest = sha256_file(path)
    known = reg.by_sha256(digest)
    if model:
        entry = reg.resolve(model)
        verified = digest in entry.known_sha256
        if not verified and not trust_unknown:
            if known:
                hint = f"this file is {known.name}; import it without --model or with --model {known.name}"
            else:
                hint = "the file is corrupt or a different version; pass --trust-unknown to import it anyway"
            raise ChecksumError(f"{path}: sha256 {digest[:16]}... does not match {entry.name}; {hint}")
    elif known:
        entry, verified = known, True
    else:
        family = detect_family(load_upstream_checkpoint(path))
        guess = f" it looks like a {family} checkpoint;" if family else ""
        raise ChecksumError(
            f"{path}: unknown checkpoint (sha256 {digest[:16]}...);{guess} name the model with --model NAME "
            "and pass --trust-unknown if you trust the file"
        )
    state = load_upstream_checkpoint(path)
    module = build_model(entry.family, entry.architecture)
    load_state_strict(module, state, source=str(path))  # refuse files that do not fit before caching them
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in module.state_dict().items()}
    out = cache.cached_weights_path(entry.name)
    save_safetensors(state, out, metadata=_conversion_metadata(entry, digest))
    sha = sha256_file(out)
    cache.write_record(
        entry.name, {"model": entry.name, "sha256": sha, "source": str(path), "source_sha256": digest, "verified": verified}
    )
    return ImportResult(entry.name, out, sha, digest, verified)


