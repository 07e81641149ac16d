"""Authors' files on the Hugging Face hub without a published sha256: pinned on the first verified download.

A local server plays the hub (tests/hub_server.py); the model is a small real family (Zero-DCE) with
weights made here, published under a hub model repository's file address.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import save as save_bytes

from lle_cli import cache
from lle_cli.cli.main import main
from lle_cli.errors import ChecksumError, DownloadError, WeightsError
from lle_cli.loading import fetch_weights, import_checkpoint, load_weights, weights_location
from lle_cli.models import build_model
from lle_cli.registry import Registry

from .test_download import hub  # noqa: F401  (the fake hub fixture)

REPO, REV, FILE = "authors/SomeNet", "main", "LOL.pth"
NAME = "zero-dce.pinned-test"


def _manifest() -> dict:
    return {
        "schema": 1,
        "default": NAME,
        "aliases": {},
        "models": {
            NAME: {
                "family": "zero_dce", "task": "low-light", "title": "test model", "paper": "test", "license": "MIT",
                "training_data": "none", "parameters": 79416, "architecture": {},
                "sources": {"upstream": {"filename": FILE, "sha256": None,
                                         "urls": [{"kind": "hub", "url": f"https://huggingface.co/{REPO}/resolve/{REV}/{FILE}"}]}},
            }
        },
    }


def _checkpoint(seed: int) -> bytes:
    """A BasicSR-style pickle ({'params': state_dict}) of Zero-DCE weights drawn with ``seed``."""
    torch.manual_seed(seed)
    state = build_model("zero_dce").state_dict()
    buf = io.BytesIO()
    torch.save({"params": state}, buf)
    return buf.getvalue()


@pytest.fixture
def reg() -> Registry:
    return Registry(_manifest())


def test_manifest_accepts_hub_files_only_at_hub_addresses() -> None:
    bad = _manifest()
    bad["models"][NAME]["sources"]["upstream"]["urls"][0]["url"] = f"https://huggingface.co/spaces/{REPO}/resolve/{REV}/{FILE}"
    with pytest.raises(Exception, match="not a hub file address"):
        Registry(bad)


def test_first_download_is_pinned_and_later_downloads_must_match(hub, reg, tmp_path) -> None:  # noqa: F811
    entry = reg.resolve(NAME)
    assert entry.downloadable and entry.upstream.pins_on_download
    assert weights_location(entry) == "downloadable"
    first = _checkpoint(0)
    hub.add_hub_file(REPO, REV, FILE, first)
    r = fetch_weights(entry)
    pin = cache.read_pin(NAME)
    import hashlib

    assert pin is not None and pin["sha256"] == hashlib.sha256(first).hexdigest()
    assert pin["url"].endswith(f"{REPO}/resolve/{REV}/{FILE}")
    state, _ = load_weights(entry)
    torch.manual_seed(0)
    want = build_model("zero_dce").state_dict()
    assert all(torch.equal(state[k], want[k]) for k in want)  # the converted weights are the file's
    assert r.path == cache.cached_weights_path(NAME)
    # the cache is cleared and the hub now serves other bytes: refused, the pin stays
    cache.remove(NAME)
    hub.add_hub_file(REPO, REV, FILE, _checkpoint(1))
    with pytest.raises(ChecksumError):
        fetch_weights(entry)
    assert cache.read_pin(NAME)["sha256"] == pin["sha256"]
    assert not cache.cached_weights_path(NAME).exists()
    # the pinned bytes again: accepted
    hub.add_hub_file(REPO, REV, FILE, first)
    fetch_weights(entry)
    assert cache.cached_weights_path(NAME).is_file()


def test_a_first_download_that_does_not_fit_is_not_pinned(hub, reg) -> None:  # noqa: F811
    buf = io.BytesIO()
    torch.save({"params": {"conv.weight": torch.zeros(3, 3, 1, 1)}}, buf)
    hub.add_hub_file(REPO, REV, FILE, buf.getvalue())
    with pytest.raises((DownloadError, WeightsError), match="do not fit"):
        fetch_weights(reg.resolve(NAME))
    assert cache.read_pin(NAME) is None


def test_import_pins_then_recognises_the_file_by_its_sha256(reg, tmp_path) -> None:
    good, other = tmp_path / FILE, tmp_path / "other.pth"
    good.write_bytes(_checkpoint(0))
    other.write_bytes(_checkpoint(1))
    r = import_checkpoint(good, NAME, registry=reg)  # no checksum published: the file that fits is pinned
    assert r.verified and cache.read_pin(NAME)["sha256"] == r.source_sha256
    cache.remove(NAME)
    assert import_checkpoint(good, registry=reg).model == NAME  # known now by its sha256, no --model needed
    with pytest.raises(ChecksumError, match="does not match"):
        import_checkpoint(other, NAME, registry=reg)  # not the pinned bytes


def test_models_info_says_the_checksum_is_pinned_on_first_download(capsys, monkeypatch) -> None:
    from lle_cli.registry import get_registry

    code = main(["models", "info", "iat.lol-v1", "--json"])  # a model with a published sha256: no "pinned"
    assert code == 0 and "pinned" not in json.loads(capsys.readouterr().out)["upstream"]
    pinned = [e.name for e in get_registry().models.values() if e.upstream is not None and e.upstream.pins_on_download]
    if not pinned:
        pytest.skip("no model of the manifest pins its checksum on download")
    code = main(["models", "info", pinned[0]])
    out = capsys.readouterr().out
    assert code == 0 and "not published" in out and "first" in out
