"""The model registry: ``weights_manifest.json`` is the single source of truth.

A model name is ``family-name.tag`` (``rave.unpaired``); a bare name (``rave``) is an alias for
its recommended tag. The manifest is validated when loaded so a broken entry fails loudly, once.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import LLEError, ModelNotFoundError

__all__ = ["HubSource", "UpstreamLocation", "UpstreamSource", "ModelEntry", "Registry", "get_registry", "LOCATION_KINDS"]

TASKS = {"low-light", "backlit"}
# how an upstream address is fetched: a plain URL (redirects followed, e.g. GitHub -> its LFS host), Google
# Drive's direct download (its HTML virus-scan page is followed), a file in a Hugging Face Space, a file
# the authors publish in a Hugging Face model repository
LOCATION_KINDS = ("url", "drive", "hub-space", "hub")
_SPACE_URL = re.compile(r"https://huggingface\.co/spaces/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")
_HUB_FILE_URL = re.compile(r"https://huggingface\.co/(?!spaces/)([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


@dataclass(frozen=True)
class HubSource:
    """Our safetensors on the Hugging Face hub; ``sha256`` is of that exact file.

    ``revision`` is a tag or commit of the hub repo, passed to ``hf_hub_download`` as is; the sha256,
    not the revision, is what makes a download trusted (a moved tag can only cause a checksum error).
    """

    repo_id: str
    filename: str
    sha256: str
    revision: str | None = None
    size: int | None = None  # bytes; lets a download stop early when a server sends something else


@dataclass(frozen=True)
class UpstreamLocation:
    """One public place the authors' file can be had: ``kind`` (one of ``LOCATION_KINDS``) says how to fetch ``url``.

    ``url`` is always the public https address a person could open; ``download.location_url`` maps it to
    what is fetched now (``LLE_UPSTREAM_MIRROR`` for ``url``/``drive``, ``HF_ENDPOINT`` for ``hub-space``).
    """

    kind: str
    url: str

    def _hub_parts(self, kind: str, pattern: re.Pattern[str], what: str) -> tuple[str, str, str]:
        m = pattern.fullmatch(self.url)
        if self.kind != kind or m is None:
            raise ValueError(f"{self.url} is not a Hugging Face {what} address")
        return m.group(1), unquote(m.group(2)), unquote(m.group(3))

    @property
    def space(self) -> tuple[str, str, str]:
        """``(repo_id, revision, filename)`` of a ``hub-space`` location."""
        return self._hub_parts("hub-space", _SPACE_URL, "Space file")

    @property
    def hub_file(self) -> tuple[str, str, str]:
        """``(repo_id, revision, filename)`` of a ``hub`` location (a file of a model repository)."""
        return self._hub_parts("hub", _HUB_FILE_URL, "model-repository file")

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


@dataclass(frozen=True)
class UpstreamSource:
    """The authors' original checkpoint; ``sha256`` (and ``size``) are of the original file.

    ``locations`` are every public place it can be had, tried in order; each download is checked against
    the one ``sha256``, so a mirror can only ever deliver the authors' exact bytes. ``url`` is the first
    location's address (a manifest entry may give just ``url``: one plain-URL location).

    ``sha256`` is None for files lle has never seen: those are never downloaded automatically, only
    imported by hand with ``--trust-unknown``; except files the authors publish on the Hugging Face hub
    without a checksum lle could pin in advance (``pins_on_download``): lle downloads those, checks that
    they fit the architecture, and pins the sha256 of that first verified download in the cache
    (``cache.read_pin``); every later download or import must then have the same bytes.

    ``component`` names one of several files that together make a model (``ModelEntry.components``):
    its tensors are stored under ``<component>.`` in the model's state dict.
    """

    url: str
    sha256: str | None
    filename: str
    size: int | None = None
    locations: tuple[UpstreamLocation, ...] = ()
    component: str | None = None

    def __post_init__(self) -> None:
        if not self.locations:
            object.__setattr__(self, "locations", (UpstreamLocation("url", self.url),))
        elif not self.url:
            object.__setattr__(self, "url", self.locations[0].url)

    @property
    def pins_on_download(self) -> bool:
        """No published sha256, but an authors' copy on the hub: pinned on the first verified download."""
        return self.sha256 is None and any(loc.kind == "hub" for loc in self.locations)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    task: str
    title: str
    paper: str
    license: str
    training_data: str
    parameters: int
    architecture: dict[str, Any] = field(default_factory=dict)
    hub: HubSource | None = None
    upstream: UpstreamSource | None = None
    # a model built from several authors' files (``sources.upstream.components``): each is verified
    # and imported on its own; the model is usable once all are in (then ``upstream`` is None)
    components: tuple[UpstreamSource, ...] = ()
    embedded: str | None = None  # path inside the package
    embedded_sha256: str | None = None
    training: dict[str, Any] | None = None
    notes: str = ""
    # default `lle score-ood` statistics shipped in the package ("ood_stats": {"path", "sha256"})
    ood_stats: str | None = None
    ood_stats_sha256: str | None = None

    @property
    def downloadable(self) -> bool:
        """lle can fetch and verify the weights itself (a file without a known sha256 is never fetched)."""
        if self.components:
            return self.hub is not None or all(c.sha256 for c in self.components)
        up = self.upstream
        return self.hub is not None or (up is not None and (bool(up.sha256) or up.pins_on_download))

    @property
    def known_sha256(self) -> set[str]:
        """Every checksum under which a file may stand for this model."""
        out = {s for s in (self.embedded_sha256,) if s}
        if self.hub:
            out.add(self.hub.sha256)
        if self.upstream and self.upstream.sha256:
            out.add(self.upstream.sha256)
        return out

    def component(self, digest: str) -> UpstreamSource | None:
        """The component file with this sha256, if the model is made of several."""
        return next((c for c in self.components if c.sha256 and c.sha256 == digest), None)


class ManifestError(LLEError):
    """The packaged manifest is broken: a bug in lle, not in the user's input."""


def _location(raw: dict[str, Any]) -> UpstreamLocation:
    """One entry of ``upstream.urls``: ``{"kind": ..., "url": ...}``, checked so a typo fails at load time."""
    if not isinstance(raw, dict) or set(raw) != {"kind", "url"}:
        raise ValueError(f"each of upstream.urls needs exactly 'kind' and 'url', got {raw!r}")
    loc = UpstreamLocation(str(raw["kind"]), str(raw["url"]))
    if loc.kind not in LOCATION_KINDS:
        raise ValueError(f"upstream url kind {loc.kind!r} is not one of {list(LOCATION_KINDS)}")
    parts = urlsplit(loc.url)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{loc.url} is not an https address")
    if loc.kind == "drive" and not (parts.netloc.endswith("google.com") and parse_qs(parts.query).get("id")):
        raise ValueError(f"{loc.url} is not a Google Drive download address with an id")
    if loc.kind == "hub-space" and _SPACE_URL.fullmatch(loc.url) is None:
        raise ValueError(f"{loc.url} is not a Space file address (https://huggingface.co/spaces/OWNER/NAME/resolve/REV/PATH)")
    if loc.kind == "hub" and _HUB_FILE_URL.fullmatch(loc.url) is None:
        raise ValueError(f"{loc.url} is not a hub file address (https://huggingface.co/OWNER/NAME/resolve/REV/PATH)")
    return loc


def _upstream(raw: dict[str, Any]) -> UpstreamSource:
    """``{"filename", "sha256", "size"?}`` plus either ``"url"`` (one plain URL) or ``"urls"`` (ordered locations)."""
    raw = dict(raw)
    if "locations" in raw:
        raise ValueError("upstream: give its addresses as 'urls'")
    urls = raw.pop("urls", None)
    if urls is None:
        return UpstreamSource(**raw)
    if "url" in raw:
        raise ValueError("upstream has both 'url' and 'urls'; give the first address once, in 'urls'")
    if not isinstance(urls, list) or not urls:
        raise ValueError("upstream.urls must be a non-empty list")
    locations = tuple(_location(u) for u in urls)
    return UpstreamSource(url="", locations=locations, **raw)


def _components(raw: dict[str, Any]) -> tuple[UpstreamSource, ...]:
    """``{"components": [{"name", "filename", "sha256", "size"?, "url" | "urls"}, ...]}``: one model from several files."""
    if set(raw) != {"components"}:
        raise ValueError("upstream with 'components' takes nothing else (each component has its own filename, sha256 and url)")
    items = raw["components"]
    if not isinstance(items, list) or len(items) < 2:
        raise ValueError("upstream.components must list at least two files")
    out = []
    for item in items:
        item = dict(item)
        name = item.pop("name", None)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"each upstream component needs a 'name' usable as a key prefix, got {name!r}")
        out.append(dataclasses.replace(_upstream(item), component=name))
    names = [c.component for c in out]
    if len(set(names)) != len(names) or len({c.sha256 for c in out if c.sha256}) != sum(1 for c in out if c.sha256):
        raise ValueError(f"upstream components must have distinct names and sha256, got {names}")
    return tuple(out)


def _entry(name: str, raw: dict[str, Any], families: Mapping[str, Any] | None) -> ModelEntry:
    def need(key: str) -> Any:
        if key not in raw:
            raise ManifestError(f"weights_manifest.json: model {name!r} lacks {key!r}")
        return raw[key]

    family = need("family")
    if families is not None and family not in families:
        raise ManifestError(f"weights_manifest.json: model {name!r} has unknown family {family!r}")
    if need("task") not in TASKS:
        raise ManifestError(f"weights_manifest.json: model {name!r} has task {raw['task']!r}, not one of {sorted(TASKS)}")
    arch = dict(raw.get("architecture") or {})
    if families is not None:
        families[family].make_config(arch)  # rejects unknown keys now rather than at load time
    src = raw.get("sources") or {}
    try:
        hub = HubSource(**src["hub"]) if "hub" in src else None
        raw_up = src.get("upstream")
        multi = isinstance(raw_up, dict) and "components" in raw_up
        up = _upstream(raw_up) if raw_up is not None and not multi else None
        components = _components(raw_up) if multi else ()
    except (TypeError, ValueError) as e:  # a missing or misspelt source field
        raise ManifestError(f"weights_manifest.json: model {name!r} has a malformed source ({e})") from None
    emb = src.get("embedded") or {}
    if not (hub or up or components or emb):
        raise ManifestError(f"weights_manifest.json: model {name!r} has no weight source")
    ood = raw.get("ood_stats") or {}
    if ood and not (ood.get("path") and ood.get("sha256")):
        raise ManifestError(f"weights_manifest.json: model {name!r} has ood_stats without a path and sha256")
    return ModelEntry(
        name=name,
        family=family,
        task=raw["task"],
        title=need("title"),
        paper=need("paper"),
        license=need("license"),
        training_data=need("training_data"),
        parameters=int(need("parameters")),
        architecture=arch,
        hub=hub,
        upstream=up,
        components=components,
        embedded=emb.get("path"),
        embedded_sha256=emb.get("sha256"),
        training=raw.get("training"),
        notes=raw.get("notes", ""),
        ood_stats=ood.get("path"),
        ood_stats_sha256=ood.get("sha256"),
    )


class Registry:
    def __init__(self, manifest: dict[str, Any], *, check_architectures: bool = True) -> None:
        """``check_architectures``: check each family and its architecture keys against the model
        code now (that imports PyTorch); without it the parse stays light, for ``lle enhance
        --runtime onnx|openvino``, which never builds a PyTorch model (the shipped manifest is
        checked by the tests)."""
        families = None
        if check_architectures:
            from .models import FAMILIES

            families = FAMILIES
        self.models: dict[str, ModelEntry] = {n: _entry(n, r, families) for n, r in manifest.get("models", {}).items()}
        self.aliases: dict[str, str] = dict(manifest.get("aliases", {}))
        self.default: str = manifest.get("default", "")
        for alias, target in [*self.aliases.items(), ("default", self.default)]:
            if target not in self.models:
                raise ManifestError(f"weights_manifest.json: {alias!r} points to unknown model {target!r}")

    @classmethod
    def from_file(cls, path: Path, *, check_architectures: bool = True) -> Registry:
        try:
            return cls(json.loads(Path(path).read_text()), check_architectures=check_architectures)
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path}: cannot read the weights manifest ({e})") from e

    def names(self) -> list[str]:
        return sorted(self.models)

    def resolve(self, name: str | None) -> ModelEntry:
        """Entry for a full name or alias; unknown names raise with the closest matches."""
        if not name:
            return self.models[self.default]
        key = name.strip().lower().replace("_", "-")
        key = self.aliases.get(key, key)
        if key in self.models:
            return self.models[key]
        choices = [*self.models, *self.aliases]
        close = difflib.get_close_matches(key, choices, n=4, cutoff=0.5)
        close += [c for c in choices if key and key in c and c not in close][: 4 - len(close)]
        hint = f"did you mean {', '.join(close)}?" if close else "see `lle models list`"
        raise ModelNotFoundError(f"unknown model {name!r}; {hint}")

    def by_sha256(self, digest: str) -> ModelEntry | None:
        for entry in self.models.values():
            if digest in entry.known_sha256:
                return entry
        return None

    def component_by_sha256(self, digest: str) -> tuple[ModelEntry, UpstreamSource] | None:
        """The model and component a file with this sha256 is a part of (several-file models only)."""
        for entry in self.models.values():
            if (comp := entry.component(digest)) is not None:
                return entry, comp
        return None


def manifest_path() -> Path:
    """The packaged manifest; in a source checkout, the top-level file it is built from."""
    packaged = resources.files("lle_cli") / "weights_manifest.json"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "weights_manifest.json"


@lru_cache(maxsize=2)
def get_registry(*, check_architectures: bool = True) -> Registry:
    """The packaged manifest, parsed once (see ``Registry`` for ``check_architectures``)."""
    return Registry.from_file(manifest_path(), check_architectures=check_architectures)
