from __future__ import annotations

import json
import re

import pytest

from lle_cli.errors import ModelNotFoundError
from lle_cli.models import build_model
from lle_cli.registry import ManifestError, Registry, get_registry, manifest_path

from .conftest import UPSTREAM_FILES, shared_path


@pytest.mark.slow
def test_every_model_builds_with_its_declared_parameter_count() -> None:
    reg = get_registry()
    assert reg.default in reg.models
    for entry in reg.models.values():
        model = build_model(entry.family, entry.architecture)
        assert sum(p.numel() for p in model.parameters()) == entry.parameters, entry.name
        assert entry.hub or entry.upstream or entry.components or entry.embedded


def test_aliases_and_case_resolve() -> None:
    reg = get_registry()
    assert reg.resolve("rave").name == "rave.unpaired"
    assert reg.resolve("RAVE.paired").name == "rave.paired"
    assert reg.resolve("clip_lit.official").name == "clip-lit.official"
    assert reg.resolve(None).name == reg.default


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ModelNotFoundError, match=r"did you mean .*rave") as e:
        get_registry().resolve("rvae")
    assert e.value.exit_code == 2


def test_manifest_rejects_broken_entries() -> None:
    raw = json.loads(manifest_path().read_text())
    bad = json.loads(json.dumps(raw))
    bad["models"]["rave.paired"]["family"] = "nope"
    with pytest.raises(ManifestError, match="unknown family"):
        Registry(bad)
    bad = json.loads(json.dumps(raw))
    bad["models"]["rave.paired"]["architecture"]["depth"] = 3
    with pytest.raises(Exception, match="unknown architecture keys"):
        Registry(bad)
    bad = json.loads(json.dumps(raw))
    bad["aliases"]["x"] = "missing.model"
    with pytest.raises(ManifestError, match="unknown model"):
        Registry(bad)


def test_sha256_lookup_finds_the_upstream_file() -> None:
    reg = get_registry()
    e = reg.resolve("scl-lle")
    assert reg.by_sha256(e.upstream.sha256) is e
    assert reg.by_sha256("0" * 64) is None


def test_sources_are_pinned() -> None:
    """Hub files at a fixed revision, the authors' files at a fixed commit, each with its sha256 and size."""
    for e in get_registry().models.values():
        if e.hub:
            assert e.hub.revision, f"{e.name}: the hub revision must be pinned"
            assert re.fullmatch(r"[0-9a-f]{64}", e.hub.sha256) and e.hub.size and e.hub.size > 0, e.name
            assert e.hub.filename.endswith(".safetensors"), e.name
        if e.upstream and e.upstream.url.startswith("https://github.com/"):
            assert re.search(r"/raw/[0-9a-f]{40}/", e.upstream.url), f"{e.name}: not pinned to a commit"
        if e.upstream and e.upstream.sha256:
            assert re.fullmatch(r"[0-9a-f]{64}", e.upstream.sha256), e.name


@pytest.mark.parity
def test_manifest_sizes_are_the_upstream_files_sizes() -> None:
    reg = get_registry()
    for name, filename in UPSTREAM_FILES.items():
        assert reg.models[name].upstream.size == shared_path("upstream", "weights", filename).stat().st_size, name


def test_malformed_source_is_a_manifest_error() -> None:
    raw = json.loads(manifest_path().read_text())
    raw["models"]["rave.paired"]["sources"]["hub"]["sha265"] = raw["models"]["rave.paired"]["sources"]["hub"].pop("sha256")
    with pytest.raises(ManifestError, match="rave.paired.*malformed source"):
        Registry(raw)
