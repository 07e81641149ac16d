"""Finding, verifying, importing, downloading and exporting weights for a registry entry.

Resolution order for ``load_weights``: an explicit ``--weights`` file, the copy embedded in the wheel,
the cache (filled by ``lle models import`` or an earlier download), then a download: our safetensors
from the hub, else the authors' original file, from each of its public locations in the manifest's
order (e.g. Google Drive, a Hugging Face Space, a Git LFS copy), converted here. Every embedded, cached
or downloaded file is checked against its sha256 before use.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import torch

from .atomic import replacing, write_text_atomic
from . import __version__, cache, download
from .download import ProgressFn
from .errors import ChecksumError, DownloadError, OfflineError, OutputExistsError, UsageError, WeightsError
from .models import build_model, detect_family, load_state_strict
from .registry import ModelEntry, Registry, UpstreamLocation, UpstreamSource, get_registry
from .weights import load_safetensors, load_upstream_checkpoint, load_upstream_component, save_safetensors, sha256_file, verify_sha256

__all__ = [
    "ImportResult",
    "FetchResult",
    "VerifyResult",
    "ExportResult",
    "import_checkpoint",
    "import_checkpoints",
    "convert_checkpoint",
    "fetch_weights",
    "load_weights",
    "weights_location",
    "embedded_path",
    "verify_weights",
    "remove_weights",
    "export_weights",
]


@dataclass(frozen=True)
class ImportResult:
    model: str
    path: Path
    sha256: str
    source_sha256: str
    verified: bool  # the source matched the manifest's checksum
    # one file of a several-file model: its name, and the components still to import (while any are
    # missing, ``path``/``sha256`` are the staged component's; once none are, the model's)
    component: str | None = None
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchResult:
    model: str
    path: Path
    sha256: str
    via: str  # "cache" (was already there), "hub" or "upstream"
    source: str  # where the bytes came from: a hub reference or a URL
    skipped: tuple[str, ...] = ()  # why each source tried before that one failed


@dataclass(frozen=True)
class VerifyResult:
    model: str
    location: str  # "embedded" or "cached"
    path: Path
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class ExportResult:
    model: str
    weights: Path
    card: Path
    sha256: str


def embedded_path(entry: ModelEntry) -> Path | None:
    if not entry.embedded:
        return None
    p = resources.files("lle_cli") / entry.embedded
    return Path(str(p)) if p.is_file() else None


def weights_location(entry: ModelEntry) -> str | None:
    """Where ``load_weights`` would get this model: ``'embedded'``, ``'cached'``, ``'downloadable'`` or None."""
    if embedded_path(entry):
        return "embedded"
    if cache.cached_weights_path(entry.name).is_file():
        return "cached"
    return "downloadable" if entry.downloadable else None


def _conversion_metadata(entry: ModelEntry, source_sha256: str) -> dict[str, str]:
    # One metadata key: safetensors orders multiple keys unpredictably, which would change the sha256.
    info = {"model": entry.name, "family": entry.family, "source_sha256": source_sha256, "format": 1}
    return {"lle": json.dumps(info, sort_keys=True)}


def _components_wanted(entry: ModelEntry) -> str:
    """The authors' files of a several-file model that are not imported yet, with their addresses."""
    have = set(_staged_components(entry))
    return ", ".join(f"{c.filename} ({c.url})" for c in entry.components if c.component not in have)


def _missing_message(entry: ModelEntry) -> str:
    if entry.components:
        return (f"model {entry.name} has no weights on this machine; it is made of {len(entry.components)} authors' files: "
                f"import each, or the folder holding them, with `lle models import` (still needed: {_components_wanted(entry)})")
    up = entry.upstream
    if up is None:
        how, where = "`lle models import FILE`", ""
    elif up.sha256:
        how, where = f"`lle models import {up.filename}`", f" (the authors' file: {up.url})"
    else:  # lle cannot vouch for this file: the user has to
        how = f"`lle models import {up.filename} --model {entry.name} --trust-unknown`"
        where = f" (the authors' file: {up.url}; lle does not know its sha256)"
    return f"model {entry.name} has no weights on this machine; import the original checkpoint with {how}{where}, or pass --weights FILE"


def _offline_message(entry: ModelEntry, flag: bool) -> str:
    msg = f"model {entry.name} is not on this machine and downloads are off ({download.offline_reason(flag)})"
    if entry.components:
        msg += f"; get the authors' files {_components_wanted(entry)} and run `lle models import` on each, or on their folder"
    elif entry.upstream and entry.upstream.sha256:
        up = entry.upstream
        msg += f"; get the authors' file {up.filename} ({up.url}) and run `lle models import {up.filename}`"
    else:
        msg += "; get its weights file and run `lle models import FILE`"
    if entry.hub:
        rev = f" --revision {entry.hub.revision}" if entry.hub.revision else ""
        msg += f", or fetch it into the hub cache with `hf download {entry.hub.repo_id} {entry.hub.filename}{rev}`"
    return msg + ", or pass --weights FILE"


def _verify_cached(entry: ModelEntry, path: Path) -> str:
    """sha256 of the cached file; ``ChecksumError`` unless it is the manifest's (or a trusted import's)."""
    record = cache.read_record(entry.name) or {}
    expected = entry.hub.sha256 if entry.hub else None
    if record.get("sha256") and record["sha256"] != expected:
        expected = record["sha256"]  # imported with --trust-unknown: check integrity against the import
    return verify_sha256(path, expected, what=entry.name)


def load_weights(
    entry: ModelEntry, weights: Path | None = None, *, offline: bool = False, progress: ProgressFn | None = None
) -> tuple[dict[str, torch.Tensor], str]:
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
        try:
            _verify_cached(entry, path)
        except ChecksumError as e:
            raise ChecksumError(
                f"{e}; replace it with `lle models download {entry.name} --force` or `lle models import FILE`"
            ) from None
        return load_safetensors(path), str(path)
    if entry.downloadable:
        r = fetch_weights(entry, offline=offline, progress=progress)
        return load_safetensors(r.path), str(r.path)
    raise WeightsError(_missing_message(entry))


def fetch_weights(
    entry: ModelEntry, *, offline: bool = False, force: bool = False, progress: ProgressFn | None = None
) -> FetchResult:
    """Make sure ``entry``'s verified weights are in the cache, downloading them if needed.

    Sources in order: the cache (unless ``force``); our safetensors on the hub (or already in the hub
    cache); the authors' file from each of its locations in turn, converted here. A location that fails
    or delivers other bytes (deleted at once) is skipped with its reason kept: in the error when all fail,
    else in ``FetchResult.skipped`` and the cache record. One process at a time per model (a lock), so
    concurrent ``lle`` runs wait for each other instead of writing the same files.
    """
    if not entry.downloadable:
        raise WeightsError(_missing_message(entry))
    off = download.offline_mode(offline)
    with cache.lock(entry.name):
        path = cache.cached_weights_path(entry.name)
        if path.is_file() and not force:
            try:
                sha = _verify_cached(entry, path)
            except ChecksumError:
                pass  # damaged: fetched again below and replaced
            else:
                return FetchResult(entry.name, path, sha, "cache", (cache.read_record(entry.name) or {}).get("source", ""))
        reasons = []
        if entry.hub:
            hub = entry.hub
            ref = f"hub:{hub.repo_id}@{hub.revision or 'main'}/{hub.filename}"
            try:
                src = download.hub_download(hub, offline=off, progress=progress)
            except download.SourceUnavailable as e:
                reasons.append(f"hub: {e}")
            else:
                out = cache.install_file(src, entry.name)
                sha = verify_sha256(out, hub.sha256, what=entry.name)
                cache.write_record(
                    entry.name, {"model": entry.name, "sha256": sha, "source": ref, "source_sha256": sha, "verified": True, "via": "hub"}
                )
                return FetchResult(entry.name, out, sha, "hub", ref)
        if entry.components:  # several authors' files, each downloaded, verified and staged in turn
            return _fetch_components(entry, off, progress, reasons)
        wrong_file = False
        if entry.upstream and (entry.upstream.sha256 or entry.upstream.pins_on_download) and not off:
            up = entry.upstream
            # the published sha256, or the one pinned by this machine's first verified download
            pin = cache.read_pin(entry.name) if up.sha256 is None else None
            expected = up.sha256 or (pin["sha256"] if pin else None)
            part = cache.partial_download_path(entry.name, up.filename)
            for loc in up.locations:  # in the manifest's order; each checked against the one sha256
                where = _location_label(up, loc)
                try:
                    download.location_download(loc, part, sha256=expected, size=up.size, label=up.filename, progress=progress)
                except download.SourceUnavailable as e:
                    reasons.append(f"{where}: {e}")
                    continue
                except download.WrongFileError as e:  # already deleted; another location may have the right bytes
                    reasons.append(f"{where}: {e.reason}")
                    wrong_file = True
                    continue
                original = part.with_name(part.name.removesuffix(".part"))
                os.replace(part, original)  # torch.load wants the real suffix
                digest = expected or sha256_file(original)
                try:
                    # converting loads the file into the architecture: a first download is pinned only if it fits
                    r = _import_locked(original, entry, digest, verified=True, source=loc.url, via="upstream", skipped=reasons)
                except WeightsError as e:
                    if expected is not None:
                        raise
                    reasons.append(f"{where}: {e}")
                    continue
                finally:
                    original.unlink(missing_ok=True)
                if expected is None:
                    _pin_first(entry, digest, loc.url)
                return FetchResult(entry.name, r.path, r.sha256, "upstream", loc.url, tuple(reasons))
        if off:
            raise OfflineError(_offline_message(entry, offline))
        up = entry.upstream
        manual = f"`lle models import {up.filename}` after getting {up.url}" if up and up.sha256 else "`lle models import FILE`"
        if up and up.pins_on_download:
            manual = f"`lle models import {up.filename} --model {entry.name}` after getting {up.url}"
        msg = f"cannot download {entry.name}: {'; '.join(reasons)}. Try again later, or use {manual}"
        raise (ChecksumError if wrong_file else DownloadError)(msg)


def _pin_first(entry: ModelEntry, digest: str, source: str) -> None:
    """Pin the sha256 of a file that fitted the architecture, for a model whose authors publish none."""
    up = entry.upstream
    if up is not None and up.pins_on_download and cache.read_pin(entry.name) is None:
        cache.write_pin(entry.name, {"sha256": digest, "filename": up.filename, "url": source,
                                     "pinned": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _location_label(up: UpstreamSource, loc: UpstreamLocation) -> str:
    """How a failed location is named in the reasons: the kind of host, or "authors' file" when it is the only one."""
    if len(up.locations) == 1 and loc.kind == "url":
        return "authors' file"
    if loc.kind == "drive":
        return "Google Drive"
    if loc.kind == "hub-space":
        return f"Space {loc.space[0]}"
    return loc.host


def convert_checkpoint(path: Path, entry: ModelEntry, out: Path, *, source_sha256: str | None = None) -> str:
    """Convert an authors' checkpoint to our safetensors file ``out``; returns its sha256.

    Deterministic: the same source file gives the same bytes on every machine (sorted float32 tensors,
    one metadata key), which is how the manifest's hub sha256 can be checked by anyone.
    """
    path = Path(path)
    digest = source_sha256 or sha256_file(path)
    state = load_upstream_checkpoint(path)
    module = build_model(entry.family, entry.architecture)
    load_state_strict(module, state, source=str(path))  # refuse files that do not fit before writing them
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in module.state_dict().items()}
    save_safetensors(state, out, metadata=_conversion_metadata(entry, digest))
    return sha256_file(out)


def _import_locked(
    path: Path, entry: ModelEntry, digest: str, *, verified: bool, source: str, via: str, skipped: list[str] | None = None
) -> ImportResult:
    out = cache.cached_weights_path(entry.name)
    sha = convert_checkpoint(path, entry, out, source_sha256=digest)
    record = {"model": entry.name, "sha256": sha, "source": source, "source_sha256": digest, "verified": verified, "via": via}
    if skipped:
        record["skipped"] = list(skipped)  # why the sources before this one failed
    cache.write_record(entry.name, record)
    return ImportResult(entry.name, out, sha, digest, verified)


# ---- models made of several authors' files (``ModelEntry.components``) ----
#
# Each file is verified by its own sha256, loaded weights-only, checked against the architecture and
# staged as ``<models>/<name>.parts/<component>.safetensors`` (its tensors under ``<component>.``).
# When every component is staged they are assembled into the one ``<name>.safetensors`` all other code
# reads, deterministically (the same files give the same bytes in any import order), and the staging
# folder is removed.

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def _parts_dir(entry: ModelEntry) -> Path:
    return cache.models_dir() / f"{entry.name}.parts"


def _part_info(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("lle", "{}"))
    except (SafetensorError, OSError, ValueError):  # a damaged staged file is re-imported, not trusted
        return {}


def _staged_components(entry: ModelEntry) -> dict[str, dict]:
    """Components already staged for ``entry``: name -> their record (source sha256, verified, source)."""
    out = {}
    for c in entry.components:
        part = _parts_dir(entry) / f"{c.component}.safetensors"
        info = _part_info(part) if part.is_file() else {}
        if info.get("component") == c.component and (info.get("source_sha256") == c.sha256 or not info.get("verified", True)):
            out[c.component] = info
    return out


def _check_options(module: torch.nn.Module, component: str, options: dict, source: str) -> None:
    """The training options a component file pickles must be the config's (``upstream_options`` maps
    each option to a config field): a file made with other constants would be run wrongly."""
    wanted = getattr(module, "upstream_options", {}).get(component, {})
    for option, field in wanted.items():
        ours = getattr(module.config, field)
        if option not in options:
            raise WeightsError(f"{source}: the checkpoint does not record {option!r}, which this model needs ({field}={ours})")
        if options[option] != ours:
            raise WeightsError(
                f"{source}: the checkpoint was made with {option}={options[option]!r}, but the model's {field} is {ours!r}; "
                "it is not the file this model expects"
            )


def _stage_component(path: Path, entry: ModelEntry, comp: UpstreamSource, digest: str, *, verified: bool, source: str) -> Path:
    """Load, check and stage one component file; returns the staged file."""
    state, options = load_upstream_component(path)
    module = build_model(entry.family, entry.architecture)
    _check_options(module, comp.component, options, str(path))
    prefix = f"{comp.component}."
    ignored = tuple(getattr(module, "ignored_checkpoint_prefixes", ()))
    state = {prefix + k: v for k, v in state.items() if not (prefix + k).startswith(ignored)}
    own = {k: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or wrong or not own:
        what = (f"missing {missing[:1]}" if missing else f"unexpected {unexpected[:1]}" if unexpected
                else f"wrong shape for {wrong[:1]}" if wrong else f"the model has no component {comp.component!r}")
        raise WeightsError(f"{path}: does not fit {entry.name}'s {comp.component} ({what})")
    out = _parts_dir(entry) / f"{comp.component}.safetensors"
    info = {"model": entry.name, "component": comp.component, "source_sha256": digest, "verified": verified, "source": source}
    save_safetensors({k: v.detach().to(torch.float32) for k, v in state.items()}, out, metadata={"lle": json.dumps(info, sort_keys=True)})
    return out


def _assemble(entry: ModelEntry, via: str, skipped: list[str] | None = None) -> Path | None:
    """Join the staged components into the model's safetensors once all are there; None while some are missing."""
    staged = _staged_components(entry)
    if len(staged) < len(entry.components):
        return None
    state: dict[str, torch.Tensor] = {}
    for c in entry.components:
        state.update(load_safetensors(_parts_dir(entry) / f"{c.component}.safetensors"))
    module = build_model(entry.family, entry.architecture)
    load_state_strict(module, state, source=f"{entry.name}'s imported files")
    digests = {c.component: staged[c.component]["source_sha256"] for c in entry.components}
    info = {"model": entry.name, "family": entry.family, "source_sha256": digests, "format": 1}
    out = cache.cached_weights_path(entry.name)
    save_safetensors({k: v.detach().to(torch.float32) for k, v in module.state_dict().items()}, out, metadata={"lle": json.dumps(info, sort_keys=True)})
    verified = all(staged[c]["verified"] for c in staged)
    record = {"model": entry.name, "sha256": sha256_file(out), "source": {c: i["source"] for c, i in staged.items()},
              "source_sha256": digests, "verified": verified, "via": via}
    if skipped:
        record["skipped"] = list(skipped)
    cache.write_record(entry.name, record)
    shutil.rmtree(_parts_dir(entry), ignore_errors=True)
    return out


def _unpack_assembled(entry: ModelEntry) -> None:
    """Stage again the components of an already assembled model (when one of them is imported anew), so
    that the others are kept; a damaged or foreign cached file is ignored (it will be replaced)."""
    path, record = cache.cached_weights_path(entry.name), cache.read_record(entry.name) or {}
    digests = record.get("source_sha256")
    if not path.is_file() or not isinstance(digests, dict):
        return
    try:
        _verify_cached(entry, path)
    except ChecksumError:
        return
    state, staged = load_safetensors(path), _staged_components(entry)
    sources = record.get("source") if isinstance(record.get("source"), dict) else {}
    for c in entry.components:
        if c.component in staged or c.component not in digests:
            continue
        prefix = f"{c.component}."
        info = {"model": entry.name, "component": c.component, "source_sha256": digests[c.component],
                "verified": bool(record.get("verified")), "source": sources.get(c.component, "")}
        part = {k: v for k, v in state.items() if k.startswith(prefix)}
        save_safetensors(part, _parts_dir(entry) / f"{c.component}.safetensors", metadata={"lle": json.dumps(info, sort_keys=True)})


def _import_component_locked(path: Path, entry: ModelEntry, comp: UpstreamSource, digest: str, *, verified: bool, source: str, via: str) -> ImportResult:
    _unpack_assembled(entry)
    part = _stage_component(path, entry, comp, digest, verified=verified, source=source)
    done = _assemble(entry, via)
    if done is None:
        have = _staged_components(entry)
        missing = tuple(c.component for c in entry.components if c.component not in have)
        return ImportResult(entry.name, part, sha256_file(part), digest, verified, comp.component, missing)
    return ImportResult(entry.name, done, sha256_file(done), digest, verified, comp.component, ())


def _fetch_components(entry: ModelEntry, off: bool, progress: ProgressFn | None, reasons: list[str]) -> FetchResult:
    """Download every component not yet staged (each from its locations in order, each checked against
    its sha256), then assemble. Called with the model's lock held."""
    wrong_file = False
    for comp in entry.components:
        if comp.component in _staged_components(entry):
            continue
        if off:
            raise OfflineError(_offline_message(entry, off))
        part = cache.partial_download_path(entry.name, comp.filename)
        for loc in comp.locations:
            where = f"{comp.filename} from {loc.host}"
            try:
                download.location_download(loc, part, sha256=comp.sha256, size=comp.size, label=comp.filename, progress=progress)
            except download.SourceUnavailable as e:
                reasons.append(f"{where}: {e}")
                continue
            except download.WrongFileError as e:
                reasons.append(f"{where}: {e.reason}")
                wrong_file = True
                continue
            original = part.with_name(part.name.removesuffix(".part"))
            os.replace(part, original)
            try:
                _stage_component(original, entry, comp, comp.sha256 or "", verified=True, source=loc.url)
            finally:
                original.unlink(missing_ok=True)
            break
        else:
            msg = f"cannot download {entry.name}: {'; '.join(reasons)}. Try again later, or use `lle models import` on the authors' files"
            raise (ChecksumError if wrong_file else DownloadError)(msg)
    out = _assemble(entry, "upstream", reasons)
    if out is None:  # a staged file vanished under us
        raise WeightsError(_missing_message(entry))
    return FetchResult(entry.name, out, sha256_file(out), "upstream", entry.components[0].url, tuple(reasons))


def _identify(path: Path, digest: str, model: str | None, trust_unknown: bool, reg: Registry) -> tuple[ModelEntry, UpstreamSource | None, bool]:
    """Which model (and component) a file is: by its sha256, or by ``--model`` (and its file name, for a
    component) with ``--trust-unknown``. Returns ``(entry, component or None, verified)``."""
    known = reg.by_sha256(digest)
    if known is None and (pinned := cache.pinned_model(digest)) in reg.models:
        known = reg.models[pinned]  # the authors' file this machine pinned on its first download
    part = reg.component_by_sha256(digest)
    if model:
        entry = reg.resolve(model)
        if entry.components:
            comp = entry.component(digest)
            if comp is not None:
                return entry, comp, True
            if trust_unknown:
                comp = next((c for c in entry.components if c.filename == path.name), None)
                if comp is None:
                    names = ", ".join(c.filename for c in entry.components)
                    raise UsageError(f"{path}: not one of {entry.name}'s files by sha256 nor by name ({names}); rename it to the file it stands for")
                return entry, comp, False
        pin = cache.read_pin(entry.name) if entry.upstream and entry.upstream.pins_on_download else None
        verified = digest in entry.known_sha256 or (pin is not None and pin["sha256"] == digest)
        if entry.upstream and entry.upstream.pins_on_download and pin is None and not verified:
            # no checksum published and none pinned yet: the file is checked against the architecture
            # on import, and pinned, as a first download would be
            return entry, None, True
        if not verified and not trust_unknown:
            if known or part:
                other = known.name if known else part[0].name
                hint = f"this file is {other}; import it without --model or with --model {other}"
            else:
                hint = "the file is corrupt or a different version; pass --trust-unknown to import it anyway"
            raise ChecksumError(f"{path}: sha256 {digest[:16]}... does not match {entry.name}; {hint}")
        return entry, None, verified
    if known:
        return known, None, True
    if part:
        return part[0], part[1], True
    family = detect_family(load_upstream_checkpoint(path))
    guess = f" it looks like a {family} checkpoint;" if family else ""
    raise ChecksumError(
        f"{path}: unknown checkpoint (sha256 {digest[:16]}...);{guess} name the model with --model NAME "
        "and pass --trust-unknown if you trust the file"
    )


def import_checkpoints(
    paths: list[Path], model: str | None = None, *, trust_unknown: bool = False, registry: Registry | None = None
) -> list[ImportResult]:
    """Import several files, or folders of checkpoints (their ``.pth``/``.pt``/``.ckpt``/``.safetensors``
    files, not recursive): each is identified first, so nothing is imported if one is unknown."""
    reg = registry or get_registry()
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in CHECKPOINT_SUFFIXES)
            if not found:
                raise WeightsError(f"{p}: is a directory with no checkpoint files in it (.pth, .pt, .ckpt, .safetensors)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise WeightsError(f"{p}: no such file")
    plan = []
    for f in files:
        digest = sha256_file(f)
        plan.append((f, digest, *_identify(f, digest, model, trust_unknown, reg)))
    out = []
    for f, digest, entry, comp, verified in plan:
        with cache.lock(entry.name):
            if comp is not None:
                out.append(_import_component_locked(f, entry, comp, digest, verified=verified, source=str(f), via="import"))
            else:
                out.append(_import_locked(f, entry, digest, verified=verified, source=str(f), via="import"))
                _pin_first(entry, digest, str(f))
    return out


def import_checkpoint(
    path: Path, model: str | None = None, *, trust_unknown: bool = False, registry: Registry | None = None
) -> ImportResult:
    """Verify an authors' checkpoint, convert it to safetensors and store it in the cache.

    A file that is one component of a several-file model is staged until the others are imported
    (``ImportResult.missing``). A folder imports the files of one model inside it (see
    ``import_checkpoints`` for files of several models); the result is that model's last import.
    """
    reg = registry or get_registry()
    path = Path(path)
    if path.is_dir():
        results = import_checkpoints([path], model, trust_unknown=trust_unknown, registry=reg)
        models = sorted({r.model for r in results})
        if len(models) > 1:  # all were imported; say that one result cannot stand for them
            raise UsageError(f"{path}: holds files of several models ({', '.join(models)}); all were imported, import folders of one model to get its result")
        return results[-1]
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    digest = sha256_file(path)
    entry, comp, verified = _identify(path, digest, model, trust_unknown, reg)
    with cache.lock(entry.name):
        if comp is not None:
            return _import_component_locked(path, entry, comp, digest, verified=verified, source=str(path), via="import")
        r = _import_locked(path, entry, digest, verified=verified, source=str(path), via="import")
        _pin_first(entry, digest, str(path))
        return r


def verify_weights(entries: list[ModelEntry]) -> list[VerifyResult]:
    """Re-hash every embedded or cached weights file among ``entries`` against the manifest."""
    out = []
    for entry in entries:
        emb = embedded_path(entry)
        if emb is not None:
            try:
                verify_sha256(emb, entry.embedded_sha256, what=f"embedded {entry.name}")
                out.append(VerifyResult(entry.name, "embedded", emb, True))
            except ChecksumError as e:
                out.append(VerifyResult(entry.name, "embedded", emb, False, str(e)))
        path = cache.cached_weights_path(entry.name)
        if path.is_file():
            try:
                _verify_cached(entry, path)
                out.append(VerifyResult(entry.name, "cached", path, True))
            except ChecksumError as e:
                out.append(VerifyResult(entry.name, "cached", path, False, str(e)))
    return out


def remove_weights(entry: ModelEntry) -> list[Path]:
    """Delete ``entry``'s cached weights, record and partial downloads; the paths removed."""
    with cache.lock(entry.name):
        gone = cache.remove(entry.name)
        parts = _parts_dir(entry)
        if parts.is_dir():  # components staged for a several-file model
            gone += sorted(p for p in parts.iterdir() if p.is_file())
            shutil.rmtree(parts, ignore_errors=True)
        return gone


CARD_MARKER = "<!-- generated by `lle models export`"


def _card_repo(card: Path) -> str | None:
    """The hub repo an earlier ``lle models export`` card in this folder was written for."""
    text = card.read_text(encoding="utf-8", errors="replace")
    if CARD_MARKER not in text:
        return None
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return None


def model_card(repo_id: str, entries: list[ModelEntry], sizes: dict[str, int]) -> str:
    """README.md for a hub repo holding ``entries``' safetensors: licence, paper, source and checksums."""
    lines = [
        "---",
        "license: other",
        "license_name: authors-terms",
        f"library_name: {download.LIBRARY_NAME}",
        "pipeline_tag: image-to-image",
        "tags:",
        "- low-light-image-enhancement",
        "- backlit-image-enhancement" if any(e.task == "backlit" for e in entries) else "- low-light",
        "- safetensors",
        "---",
        f"{CARD_MARKER} {__version__} from weights_manifest.json; edit the manifest, not this file -->",
        f"# {repo_id}",
        "",
        "Safetensors copies of published low-light / backlit enhancement checkpoints, for the `lle` command line "
        "tool and Python library. Each file is a deterministic conversion of the authors' own checkpoint: the same "
        "tensors as float32, without DataParallel's `module.` key prefix where the original had one; nothing else "
        "changes. The weights keep their authors' terms (below); the conversion adds none.",
        "",
        "| file | model | task | parameters | bytes | sha256 |",
        "|---|---|---|---|---|---|",
    ]
    entries = [e for e in entries if e.hub is not None]
    for e in entries:
        lines.append(f"| `{e.hub.filename}` | `{e.name}` | {e.task} | {e.parameters:,} | {sizes[e.name]:,} | `{e.hub.sha256}` |")
    lines += ["", "## Use", "", "With lle installed:", "", "```bash"]
    lines += [f"lle enhance photo.jpg --model {e.name}" for e in entries[:1]]
    lines += ["```", "", "lle downloads the file on first use, checks its sha256 and caches it; see the lle README.", ""]
    for e in entries:
        lines += [f"## `{e.name}`: {e.title}", "", f"- Paper: {e.paper}", f"- Licence: {e.license}", f"- Training data: {e.training_data}"]
        lines += [f"- Architecture: `{e.family}` {json.dumps(e.architecture, sort_keys=True)}, {e.parameters:,} parameters"]
        if e.upstream:
            lines += [f"- Source: the authors' file {e.upstream.url}", f"  (sha256 `{e.upstream.sha256}`)"]
        if e.notes:
            lines += [f"- Notes: {e.notes}"]
        lines += [f"- This file: `{e.hub.filename}`, sha256 `{e.hub.sha256}`", ""]
    up = next((e.upstream for e in entries if e.upstream), None)
    lines += [
        "## Check these files yourself",
        "",
        "Convert the authors' file with lle and compare checksums; the conversion is byte-for-byte reproducible:",
        "",
        "```bash",
    ]
    if up:
        lines += [f"curl -LO {up.url}", f"lle models import {up.filename}   # verifies the source's sha256, converts"]
    lines += ["lle models list --json   # where the converted files are", "sha256sum ~/.cache/lle/models/*.safetensors", "```", ""]
    return "\n".join(lines)


def export_weights(
    entry: ModelEntry,
    directory: Path,
    *,
    overwrite: bool = False,
    offline: bool = False,
    progress: ProgressFn | None = None,
    registry: Registry | None = None,
) -> ExportResult:
    """Write ``entry``'s safetensors and the hub repo's model card into ``directory``, ready to upload.

    Only the manifest's exact bytes are exported (sha256 checked), so an upload can never publish
    something the manifest does not vouch for. Several models of one hub repo share a folder and a card.
    """
    reg = registry or get_registry()
    if entry.hub is None:
        raise UsageError(f"model {entry.name} has no hub entry in the manifest (repo_id, filename, sha256); add one to export it")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    card = directory / "README.md"
    if card.exists():
        repo = _card_repo(card)
        if repo is None and not overwrite:
            raise OutputExistsError(f"{card} already exists and was not written by lle; pass --overwrite to replace it")
        if repo is not None and repo != entry.hub.repo_id:
            raise UsageError(f"{directory} holds the export of {repo}; use one folder per hub repo ({entry.hub.repo_id})")
    src = embedded_path(entry) or fetch_weights(entry, offline=offline, progress=progress).path
    sha = sha256_file(src)
    if sha != entry.hub.sha256:
        raise ChecksumError(
            f"{src}: sha256 {sha[:16]}... is not the manifest's {entry.hub.sha256[:16]}... for {entry.name} "
            "(imported with --trust-unknown?); refusing to export bytes the manifest does not vouch for"
        )
    target = directory / entry.hub.filename
    if target.exists() and sha256_file(target) != sha:
        if not overwrite:
            raise OutputExistsError(f"{target} already exists with other contents; pass --overwrite to replace it")
    if not target.exists() or sha256_file(target) != sha:
        with replacing(target) as tmp:
            shutil.copyfile(src, tmp)
    # the card lists every file of this repo in the folder, each checked: a stale one would make it lie
    members, sizes = [], {}
    for e in (reg.models[n] for n in reg.names()):
        if e.hub is None or e.hub.repo_id != entry.hub.repo_id or not (directory / e.hub.filename).is_file():
            continue
        f = directory / e.hub.filename
        if sha256_file(f) != e.hub.sha256:
            raise ChecksumError(f"{f}: not the manifest's file for {e.name}; delete it or export {e.name} again with --overwrite")
        members.append(e)
        sizes[e.name] = f.stat().st_size
    write_text_atomic(card, model_card(entry.hub.repo_id, members, sizes))
    return ExportResult(entry.name, target, card, sha)
