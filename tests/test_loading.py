"""Importing authors' checkpoints, checksum enforcement and safe unpickling."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lle_cli import api, cache
from lle_cli.errors import ChecksumError, OfflineError, WeightsError
from lle_cli.loading import import_checkpoint, load_weights, weights_location
from lle_cli.models import build_model
from lle_cli.registry import Registry, get_registry, manifest_path
from lle_cli.weights import save_safetensors, sha256_file

from .conftest import UPSTREAM_FILES, shared_path


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(UPSTREAM_FILES))
def test_import_recognises_and_converts_every_upstream_checkpoint(name: str) -> None:
    src = shared_path("upstream", "weights", UPSTREAM_FILES[name])
    r = import_checkpoint(src)
    entry = get_registry().resolve(name)
    assert r.model == name and r.verified
    assert r.source_sha256 == entry.upstream.sha256
    assert r.sha256 == entry.hub.sha256  # the conversion is deterministic: same bytes as on the hub
    assert api.load_model(name).weights_source == str(cache.cached_weights_path(name))


def _random_checkpoint(tmp_path, family="zero_dce"):
    model = build_model(family)
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_unknown_checksum_is_refused_without_trust(tmp_path) -> None:
    path = _random_checkpoint(tmp_path)
    with pytest.raises(ChecksumError, match="looks like a zero_dce checkpoint"):
        import_checkpoint(path)
    with pytest.raises(ChecksumError, match="does not match scl-lle.official"):
        import_checkpoint(path, "scl-lle")
    r = import_checkpoint(path, "scl-lle", trust_unknown=True)
    assert not r.verified and r.path.is_file()
    assert api.load_model("scl-lle").name == "scl-lle.official"  # loads, integrity checked against the import record


def test_wrong_sha256_of_a_known_file_is_refused(tmp_path) -> None:
    src = shared_path("upstream", "weights", "scl_lle.pth")
    bad = tmp_path / "scl_lle.pth"
    data = bytearray(src.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256"):
        import_checkpoint(bad, "scl-lle")


def test_tampered_cache_is_detected() -> None:
    import_checkpoint(shared_path("upstream", "weights", "scl_lle.pth"))
    path = cache.cached_weights_path("scl-lle.official")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="replace it with `lle models download scl-lle.official --force`"):
        api.load_model("scl-lle")


def test_pickles_with_code_are_never_executed(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    path = tmp_path / "evil.pth"
    torch.save({"weights": Evil()}, path)
    with pytest.raises(WeightsError, match="weights-only"):
        import_checkpoint(path, "scl-lle", trust_unknown=True)
    assert (tmp_path / "victim").is_dir()


def test_missing_weights_offline_explain_how_to_get_them(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="lle models import SCL-LLE.pth") as e:
        api.load_model("scl-lle")
    assert "HF_HUB_OFFLINE=1" in str(e.value) and "hf download lle-cli/scl-lle scl-lle.official.safetensors --revision v1" in str(e.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(OfflineError, match=r"downloads are off \(--offline\)"):
        api.load_model("scl-lle", offline=True)


def test_a_file_without_a_known_sha256_is_never_downloaded() -> None:
    raw = json.loads(manifest_path().read_text())
    src = raw["models"]["scl-lle.official"]["sources"]
    del src["hub"]
    src["upstream"]["sha256"] = None  # e.g. a release on Google Drive that lle has never seen
    entry = Registry(raw).resolve("scl-lle")
    assert not entry.downloadable and weights_location(entry) is None
    with pytest.raises(WeightsError, match="--model scl-lle.official --trust-unknown"):
        load_weights(entry)


def test_weights_file_that_does_not_fit_is_refused(tmp_path) -> None:
    path = tmp_path / "unet.safetensors"
    save_safetensors(build_model("illumination_unet").state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit"):
        api.load_model("scl-lle", weights=path)
    assert sha256_file(path)  # untouched
