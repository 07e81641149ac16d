"""The authors' files from several public places: Google Drive (its HTML pages included), a Hugging Face
Space, a Git LFS copy on GitHub, tried in the manifest's order and all checked against one sha256.

No network: tests/hub_server.py plays Drive, the Space (through ``HF_ENDPOINT``) and GitHub with its LFS
host (through ``LLE_UPSTREAM_MIRROR``) on 127.0.0.1. The authors' LLFlow checkpoints are not here, so a
test entry pins the sha256 of a tiny LLFlow checkpoint made here; the real entries' wiring (which address
each location asks for) is checked with servers that answer 404.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli import cache, download
from lle_cli.cli.main import main
from lle_cli.errors import ChecksumError, DownloadError
from lle_cli.loading import fetch_weights, weights_location
from lle_cli.models import build_model
from lle_cli.registry import ManifestError, Registry, get_registry, manifest_path

from .hub_server import DRIVE_PATH, FakeHub

NAME = "llflow.test-mirrors"
TINY_ARCH = {"nf": 8, "nb": 3, "gc": 8, "K": 1, "hidden_channels": 8, "stack_blocks": [0, 2]}
DRIVE_ID = "1TestDriveFileId_abcdefghijklmnopq"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DRIVE_URL = f"https://drive.usercontent.google.com/download?id={DRIVE_ID}&export=download&confirm=t"
SPACE = "someone/llflow-demo"
SPACE_URL = f"https://huggingface.co/spaces/{SPACE}/resolve/main/models/llflow/tiny.pth"
GITHUB_URL = f"https://github.com/someone/mirror/raw/{COMMIT}/pretrained/tiny.pth"
LFS_URL = f"https://media.githubusercontent.com/media/someone/mirror/{COMMIT}/pretrained/tiny.pth"


@pytest.fixture(scope="module")
def payload() -> bytes:
    """A tiny LLFlow checkpoint as the authors save theirs (a torch.save'd state dict)."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(build_model("llflow", TINY_ARCH).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def registry(payload) -> Registry:
    """The packaged manifest plus NAME: the small model's entry, pinned to ``payload``, with three locations."""
    raw = json.loads(manifest_path().read_text())
    e = copy.deepcopy(raw["models"]["llflow.lol-small"])
    e.update(architecture=TINY_ARCH, title="test")
    e["sources"] = {"upstream": {
        "filename": "tiny.pth", "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload),
        "urls": [{"kind": "drive", "url": DRIVE_URL}, {"kind": "hub-space", "url": SPACE_URL}, {"kind": "url", "url": GITHUB_URL}],
    }}
    raw["models"][NAME] = e
    return Registry(raw)


@pytest.fixture
def entry(registry):
    return registry.models[NAME]


@pytest.fixture
def servers(monkeypatch):
    """Drive, the Space's hub and GitHub on 127.0.0.1, reached through HF_ENDPOINT and LLE_UPSTREAM_MIRROR."""
    server = FakeHub().start()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.hub_url)
    monkeypatch.setenv("LLE_UPSTREAM_MIRROR", server.files_url)
    yield server
    server.stop()


@pytest.fixture
def no_sleep(monkeypatch) -> list[float]:
    waits: list[float] = []
    fake_time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fake_time.sleep = waits.append
    monkeypatch.setattr(download, "time", fake_time)
    return waits


@pytest.fixture
def cli_registry(monkeypatch, registry) -> Registry:
    monkeypatch.setattr("lle_cli.api.get_registry", lambda: registry)
    return registry


def wrong(data: bytes) -> bytes:
    """The same size, one byte different: only the sha256 can tell."""
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    return bytes(bad)


def publish_space(server: FakeHub, data: bytes) -> None:
    server.add_space_file(SPACE, "main", "models/llflow/tiny.pth", data)


def publish_lfs(server: FakeHub, data: bytes) -> None:
    """GitHub's /raw/ address of an LFS file redirects to its LFS host, which serves the bytes."""
    server.add_redirect(GITHUB_URL, LFS_URL)
    server.add_upstream(LFS_URL, data)


def assert_cached(entry, payload: bytes, source: str) -> None:
    path = cache.cached_weights_path(entry.name)
    record = cache.read_record(entry.name)
    assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    assert record["source_sha256"] == hashlib.sha256(payload).hexdigest() and record["verified"] and record["source"] == source
    assert not list(cache.downloads_dir().iterdir())  # no partial, no original, no HTML left behind
    assert weights_location(entry) == "cached"


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- Google Drive --------------------------------------------------------------------------------


def test_drive_serves_the_file_directly(servers, entry, payload) -> None:
    servers.add_drive_file(DRIVE_ID, payload)
    r = fetch_weights(entry)
    assert r.via == "upstream" and r.source == DRIVE_URL and r.skipped == ()
    assert_cached(entry, payload, DRIVE_URL)
    (get,) = servers.seen("files", "GET")
    assert get.path == DRIVE_PATH and get.query == f"id={DRIVE_ID}&export=download&confirm=t"
    assert get.headers["user-agent"].startswith("lle-cli/")
    assert not servers.seen("hub")  # the later locations are never asked


def test_drive_virus_scan_page_is_followed(servers, entry, payload) -> None:
    f = servers.add_drive_file(DRIVE_ID, payload, name="tiny.pth", page="virus-scan")
    r = fetch_weights(entry)
    assert r.source == DRIVE_URL and r.skipped == ()
    assert_cached(entry, payload, DRIVE_URL)
    first, second = servers.seen("files", "GET", DRIVE_PATH)
    assert "uuid" not in first.query
    # the page's form, submitted as a browser would: its action (through the mirror) and its hidden inputs
    assert second.query == f"id={DRIVE_ID}&export=download&confirm=t&uuid={f.uuid}"


def test_virus_scan_page_that_never_lets_go_is_a_reason_not_weights(servers, entry, payload, monkeypatch) -> None:
    servers.add_drive_file(DRIVE_ID, payload, page="virus-scan").stale_form = True  # the page, again and again
    publish_space(servers, payload)
    r = fetch_weights(entry)
    assert r.source == SPACE_URL
    host = servers.files_url.split("://")[1]
    assert r.skipped == (f"Google Drive: {host} kept answering with Google Drive's virus-scan page after its form was followed",)
    assert len(servers.seen("files", "GET", DRIVE_PATH)) == 1 + download.FORM_FOLLOWS  # bounded
    assert_cached(entry, payload, SPACE_URL)


@pytest.mark.parametrize("status", [200, 403, 429])
def test_drive_quota_page_fails_over_to_the_space(servers, entry, payload, no_sleep, status) -> None:
    servers.add_drive_file(DRIVE_ID, payload, page="quota", page_status=status)
    publish_space(servers, payload)
    r = fetch_weights(entry)
    assert r.via == "upstream" and r.source == SPACE_URL
    (reason,) = r.skipped
    assert reason.startswith("Google Drive: Google Drive refuses the download for now: too many users have viewed or downloaded")
    assert cache.read_record(NAME)["skipped"] == [reason]  # the reason stays with the cached file
    assert_cached(entry, payload, SPACE_URL)
    assert len(servers.seen("files", "GET", DRIVE_PATH)) == 1 and no_sleep == []  # a quota is not retried
    # the Space is asked where huggingface_hub would ask it: HF_ENDPOINT's /spaces/ route, then its storage
    assert [s.path for s in servers.seen("hub", "GET")] == [f"/spaces/{SPACE}/resolve/main/models/llflow/tiny.pth"]
    assert [s.path for s in servers.seen("files", "GET", "/blobs/")] == [f"/blobs/{hashlib.sha256(payload).hexdigest()}"]


# -- mirrors that fail -----------------------------------------------------------------------------


def test_404_and_wrong_bytes_fail_over_to_the_lfs_copy(servers, entry, payload) -> None:
    # Drive does not know the id (its HTML 404 page); the Space has other bytes of the same size
    publish_space(servers, wrong(payload))
    publish_lfs(servers, payload)
    r = fetch_weights(entry)
    assert r.via == "upstream" and r.source == GITHUB_URL
    drive, space = r.skipped
    assert drive.startswith("Google Drive: HTTP 404 Not Found for ")
    expected = hashlib.sha256(payload).hexdigest()
    assert space == (f"Space {SPACE}: the downloaded file's sha256 {hashlib.sha256(wrong(payload)).hexdigest()[:16]}... "
                     f"does not match the manifest's {expected[:16]}...; the download was deleted")
    assert_cached(entry, payload, GITHUB_URL)
    lfs = servers.seen("files", "GET", "/media.githubusercontent.com/")
    assert len(lfs) == 1 and "range" not in lfs[0].headers  # the wrong bytes were deleted, not resumed


def test_every_location_failing_is_one_error_with_every_reason(servers, entry, payload, capsys, cli_registry) -> None:
    servers.add_drive_file(DRIVE_ID, payload, page="quota")
    publish_lfs(servers, wrong(payload))  # and no Space at all
    with pytest.raises(ChecksumError) as e:  # wrong bytes were among the answers
        fetch_weights(entry)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot download {NAME}: Google Drive: Google Drive refuses the download")
    assert f"; Space {SPACE}: HTTP 404 " in msg and "; github.com: the downloaded file's sha256" in msg
    assert "the download was deleted" in msg and "`lle models import tiny.pth`" in msg
    assert not cache.cached_weights_path(NAME).exists() and not list(cache.downloads_dir().iterdir())
    servers.files.clear()  # now nothing at all: an ordinary download error, from the CLI too
    code, out, err = run(capsys, "models", "download", NAME)
    assert code == 1 and out == "" and err.startswith(f"Error: cannot download {NAME}: Google Drive:") and "Traceback" not in err


def test_html_pages_and_lfs_pointers_are_reasons_not_weights(servers, entry, payload) -> None:
    servers.add_drive_file(DRIVE_ID, payload, page="sign-in")
    publish_space(servers, b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 1\n")
    # an HTML page sent as application/octet-stream: only its first bytes tell
    publish_lfs(servers, b"<!doctype html><html><head><title>Rate limited</title></head><body></body></html>")
    with pytest.raises(DownloadError) as e:
        fetch_weights(entry)
    msg, host = str(e.value), servers.files_url.split("://")[1]
    assert "Google Drive: Google asks to sign in: the file is not shared publicly (any more)" in msg
    assert f"Space {SPACE}: {host} serves a Git LFS pointer, not the file it points to" in msg
    assert f"github.com: {host} answered HTTP 200 with an HTML page ('Rate limited') instead of the file" in msg
    assert not cache.partial_download_path(NAME, "tiny.pth").exists()  # nothing was written


def test_drive_pages_leave_an_earlier_partial_download_alone(servers, entry, payload) -> None:
    part = cache.partial_download_path(NAME, "tiny.pth")
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:1000])  # what a killed run left behind
    servers.add_drive_file(DRIVE_ID, payload, page="quota")
    publish_space(servers, payload)
    assert fetch_weights(entry).source == SPACE_URL
    assert servers.seen("files", "GET", DRIVE_PATH)[0].headers["range"] == "bytes=1000-"
    (blob,) = servers.seen("files", "GET", "/blobs/")
    assert blob.headers["range"] == "bytes=1000-"  # the quota page did not touch the partial file: resumed
    assert_cached(entry, payload, SPACE_URL)


def test_a_partial_download_is_resumed_by_the_next_location(servers, entry, payload, no_sleep) -> None:
    servers.add_drive_file(DRIVE_ID, payload)
    servers.cut[DRIVE_PATH] = [1000] * (download.RETRIES + 1)  # Drive keeps dropping the connection
    publish_space(servers, payload)
    r = fetch_weights(entry)
    assert r.source == SPACE_URL and "gave up after" in r.skipped[0]
    have = 1000 * (download.RETRIES + 1)  # each attempt resumed where the last stopped
    (blob,) = servers.seen("files", "GET", "/blobs/")
    assert blob.headers["range"] == f"bytes={have}-"  # the Space (through its redirect) completed the same file
    assert_cached(entry, payload, SPACE_URL)


def test_wrong_bytes_resumed_from_an_earlier_location_are_fetched_again_whole(servers, entry, payload, monkeypatch) -> None:
    monkeypatch.setattr(download, "RETRIES", 0)
    half = len(payload) // 2 + 10
    servers.add_drive_file(DRIVE_ID, wrong(payload))  # a wrong byte in the first half, then the connection drops
    servers.cut[DRIVE_PATH] = [half]
    publish_lfs(servers, payload)
    r = fetch_weights(entry)
    assert r.source == GITHUB_URL and r.skipped[0].startswith("Google Drive: connection to")
    gets = servers.seen("files", "GET", "/media.githubusercontent.com/")
    # resumed from Drive's bytes: the sha256 fails, so GitHub is asked once more for the whole file
    assert [g.headers.get("range") for g in gets] == [f"bytes={half}-", None]
    assert_cached(entry, payload, GITHUB_URL)


# -- the real entries and the CLI -------------------------------------------------------------------

SMALL_SHA = "2bf4c9192b401bf7155b2aa0781d9d8eed2e0bcc148286a9e2b224e12777bb38"
JOEL = "https://github.com/joelvp/ImageEnhancementTFG/raw/4738ee11a28a912ef80226cd11c23fe09a79fb4f/src/models/LLFlow/code/models/pretrained/"


def test_models_info_json_lists_the_pinned_sha256_and_every_source(capsys) -> None:
    code, out, _ = run(capsys, "models", "info", "llflow.lol-small", "--json")
    info = json.loads(out)
    up = info["upstream"]
    assert code == 0 and info["weights"] == "downloadable"
    assert up["filename"] == "LOL_smallNet.pth" and up["sha256"] == SMALL_SHA and up["size"] == 21_874_185
    assert up["sources"] == [
        {"kind": "drive", "url": "https://drive.usercontent.google.com/download?id=1tukKu2KBZ_ohlQiLG4EKnrn1CAt_2F6G&export=download&confirm=t"},
        {"kind": "hub-space", "url": "https://huggingface.co/spaces/SaffalPoosh/image_enhancement/resolve/main/models/llflow/LOL_smallNet.pth"},
        {"kind": "url", "url": JOEL + "LOL_smallNet.pth"},
    ]
    code, out, _ = run(capsys, "models", "info", "llflow.lol-small")
    assert code == 0 and SMALL_SHA in out and "hub-space" in out and "\n" + " " * 15 + "url" in out
    for name, filename, sha in [("llflow.lol", "LOL.pth", "16b7cf6eb2e05b2da2514110137139383314b8d64dac58aad7c2119341b5bd5c"),
                                ("llflow.lol-v2", "LOLv2.pth", "5dced5d8032239e5ee012cf3c4eea2d4f5415cf91b8a34576aa375be85424d7b")]:
        info = json.loads(run(capsys, "models", "info", name, "--json")[1])
        assert info["upstream"]["sha256"] == sha and info["upstream"]["size"] == 156_004_653
        assert [s["kind"] for s in info["upstream"]["sources"]] == ["drive", "url"]
        assert info["upstream"]["sources"][1]["url"] == JOEL + filename
    for name in ("llflow.lol", "llflow.lol-small", "llflow.lol-v2"):  # nothing left to do by hand
        e = get_registry().resolve(name)
        assert e.downloadable and "--trust-unknown" not in e.notes and "lle models import" not in e.notes


def test_the_real_llflow_small_entry_asks_each_place_in_order(servers, capsys) -> None:
    code, out, err = run(capsys, "models", "download", "llflow.lol-small")
    assert code == 1 and out == ""
    assert err.startswith("Error: cannot download llflow.lol-small: Google Drive: HTTP 404")
    assert "; Space SaffalPoosh/image_enhancement: HTTP 404" in err and "; github.com: HTTP 404" in err
    (drive,) = servers.seen("files", "GET", DRIVE_PATH)
    assert drive.query == "id=1tukKu2KBZ_ohlQiLG4EKnrn1CAt_2F6G&export=download&confirm=t"
    assert [s.path for s in servers.seen("hub", "GET")] == [
        "/spaces/SaffalPoosh/image_enhancement/resolve/main/models/llflow/LOL_smallNet.pth"
    ]
    assert [s.path for s in servers.seen("files", "GET") if s.path != DRIVE_PATH] == ["/" + JOEL.split("://")[1] + "LOL_smallNet.pth"]


def test_enhance_fetches_on_first_use(servers, payload, cli_registry, capsys, tmp_path) -> None:
    servers.add_drive_file(DRIVE_ID, payload, page="virus-scan")
    img = tmp_path / "dark.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((24, 32, 3)) * 60).astype(np.uint8)).save(img)
    code, out, err = run(capsys, "enhance", img, "-m", NAME, "-o", tmp_path / "out.png", "-q")
    assert code == 0 and out.strip() == str(tmp_path / "out.png") and (tmp_path / "out.png").is_file(), err
    assert cache.read_record(NAME)["source"] == DRIVE_URL
    code, out, err = run(capsys, "models", "download", NAME)
    assert code == 0 and out.strip() == str(cache.cached_weights_path(NAME)) and "already cached" in err


# -- the manifest's shape ---------------------------------------------------------------------------


def test_manifest_rejects_malformed_locations() -> None:
    raw = json.loads(manifest_path().read_text())
    up = raw["models"]["llflow.lol-small"]["sources"]["upstream"]
    for bad, match in [
        ({"kind": "ftp", "url": "https://x.org/f"}, "kind 'ftp'"),
        ({"kind": "url", "url": "http://x.org/f"}, "not an https address"),
        ({"kind": "drive", "url": "https://drive.google.com/file/d/abc/view"}, "Google Drive download address"),
        ({"kind": "hub-space", "url": "https://huggingface.co/someone/model/resolve/main/f.pth"}, "Space file address"),
        ({"kind": "url", "url": "https://x.org/f", "sha256": "0" * 64}, "exactly 'kind' and 'url'"),
    ]:
        broken = copy.deepcopy(raw)
        broken["models"]["llflow.lol-small"]["sources"]["upstream"]["urls"] = [*up["urls"], bad]
        with pytest.raises(ManifestError, match=match):
            Registry(broken)
    broken = copy.deepcopy(raw)
    broken["models"]["llflow.lol-small"]["sources"]["upstream"]["url"] = up["urls"][0]["url"]
    with pytest.raises(ManifestError, match="both 'url' and 'urls'"):
        Registry(broken)


def test_one_url_is_one_plain_location() -> None:
    e = get_registry().resolve("rave.paired")
    (loc,) = e.upstream.locations
    assert loc.kind == "url" and loc.url == e.upstream.url and download.location_url(loc) == e.upstream.url
    space = get_registry().resolve("llflow.lol-small").upstream.locations[1]
    assert space.space == ("SaffalPoosh/image_enhancement", "main", "models/llflow/LOL_smallNet.pth")


def test_mirrors_map_every_kind(monkeypatch) -> None:
    monkeypatch.setenv("LLE_UPSTREAM_MIRROR", "http://mirror.local/m/")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    drive, space, github = get_registry().resolve("llflow.lol-small").upstream.locations
    assert download.location_url(drive) == (
        "http://mirror.local/m/drive.usercontent.google.com/download?id=1tukKu2KBZ_ohlQiLG4EKnrn1CAt_2F6G&export=download&confirm=t"
    )
    assert download.location_url(space) == (
        "https://hf-mirror.example/spaces/SaffalPoosh/image_enhancement/resolve/main/models/llflow/LOL_smallNet.pth"
    )
    assert download.location_url(github) == "http://mirror.local/m/" + JOEL.split("://")[1] + "LOL_smallNet.pth"


def test_every_location_of_every_model_is_pinned() -> None:
    """A GitHub address names a commit; the other kinds are trusted through the one sha256 and size."""
    for e in get_registry().models.values():
        for up in (e.upstream, *e.components):  # a several-file model: each of its files
            if up is None or not up.sha256:
                continue
            assert up.size and up.size > 0, e.name
            for loc in up.locations:
                if loc.host == "github.com":
                    assert re.search(r"/raw/[0-9a-f]{40}/", loc.url), f"{e.name}: {loc.url} is not pinned to a commit"


def test_older_drive_pages_link_instead_of_a_form(monkeypatch) -> None:
    """drive.google.com's older warning page has a ``uc-download-link`` anchor, relative to the page."""
    monkeypatch.delenv("LLE_UPSTREAM_MIRROR", raising=False)
    body = (b'<html><head><title>Google Drive - Virus scan warning</title></head><body>'
            b'<a id="uc-download-link" href="/uc?export=download&amp;confirm=Ab1_&amp;id=XYZ">Download anyway</a></body></html>')
    page = download._Page("https://drive.google.com/uc?export=download&id=XYZ", 200, body)
    assert download._drive_next(page) == "https://drive.google.com/uc?export=download&confirm=Ab1_&id=XYZ"
    assert download._drive_next(download._Page("https://x.org/", 200, b"<html><title>t</title></html>")) is None
