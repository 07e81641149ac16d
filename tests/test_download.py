"""Downloading weights: the hub route of ``hf_hub_download``, the authors' URLs, the cache, offline use.

No network: a local server (tests/hub_server.py) plays the hub, its storage host and the authors' hosts,
and serves the real upstream checkpoints from ../shared plus our own conversions of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli import api, cache, download
from lle_cli.cli import _common
from lle_cli.cli.main import main
from lle_cli.errors import ChecksumError, DownloadError, OfflineError
from lle_cli.loading import convert_checkpoint, fetch_weights, weights_location
from lle_cli.registry import get_registry
from lle_cli.weights import sha256_file

from .conftest import UPSTREAM_FILES, shared_path
from .hub_server import FakeHub

SCL = "scl-lle.official"
GOLDEN_UNET = {
    "rave.paired": "rave_paired",
    "rave.unpaired": "rave_unpaired",
    "rave.unpaired-shifted": "rave_unpaired_shifted",
    "clip-lit.paired": "clip_lit_paired",
    "clip-lit.unpaired": "clip_lit_unpaired",
    "clip-lit.official": "cliplit_official",
    "clip-lit-latent.paired": "clip_lit_latent_paired",
    "clip-lit-latent.unpaired": "clip_lit_latent_unpaired",
}
RTOL = 1e-5  # as tests/models/test_parity.py: relative to the array's largest magnitude


def entry(name: str):
    return get_registry().resolve(name)


def upstream_bytes(name: str) -> bytes:
    return shared_path("upstream", "weights", UPSTREAM_FILES[name]).read_bytes()


def upstream_path(name: str) -> str:
    """The path of ``name``'s authors' file on the fake server (mirror layout)."""
    url = entry(name).upstream.url
    return "/" + url.split("://", 1)[1]


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> dict[str, bytes]:
    """Our hub files, made the way the maintainers make them: the deterministic conversion of the authors' files."""
    out = tmp_path_factory.mktemp("converted")
    files = {}
    for name in (SCL, "rave.paired", "rave.unpaired"):
        e = entry(name)
        target = out / e.hub.filename
        sha = convert_checkpoint(shared_path("upstream", "weights", UPSTREAM_FILES[name]), e, target)
        assert sha == e.hub.sha256, name  # the manifest's hub sha256 is reproducible from the authors' file
        files[name] = target.read_bytes()
    return files


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake hub + hosts, with the environment pointing at them and a private hub cache."""
    import huggingface_hub.constants as hf_constants

    server = FakeHub().start()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE",
                "HUGGINGFACE_HUB_CACHE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", server.hub_url)
    monkeypatch.setenv("LLE_UPSTREAM_MIRROR", server.files_url)
    # huggingface_hub reads these at import, possibly before this test: make them this test's
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)  # no agent-registry request to the real hub
    yield server
    server.stop()


@pytest.fixture
def no_sleep(monkeypatch) -> list[float]:
    """Record the back-off waits (ours and huggingface_hub's) instead of sleeping through them."""
    import huggingface_hub.file_download as hf_download
    import huggingface_hub.utils._http as hf_http

    waits: list[float] = []
    fake_time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fake_time.sleep = waits.append
    monkeypatch.setattr(hf_http, "time", fake_time)
    monkeypatch.setattr(hf_download, "time", fake_time)
    monkeypatch.setattr(download, "time", fake_time)
    return waits


def publish(server: FakeHub, converted: dict[str, bytes], name: str, data: bytes | None = None) -> None:
    e = entry(name)
    server.add_hub_file(e.hub.repo_id, e.hub.revision, e.hub.filename, converted[name] if data is None else data)


def golden_input(img: str) -> torch.Tensor:
    return torch.from_numpy(np.load(shared_path("golden", "inputs", f"{img}_float.npy")))


def assert_close(actual: torch.Tensor, golden: np.ndarray) -> None:
    assert actual.shape == golden.shape
    err = np.abs(actual.numpy() - golden).max() / np.abs(golden).max()
    assert err <= RTOL, f"relative error {err:.2e} > {RTOL:.0e}"


def assert_scl_lle_matches_golden(model) -> None:
    for img in ("backlit_a", "lowlight_a"):
        with torch.no_grad():
            half, final, curves = model.module.forward_all(golden_input(img))
        folder = shared_path("golden", "scllle")
        assert_close(half, np.load(folder / f"{img}_enhance_image_1.npy"))
        assert_close(final, np.load(folder / f"{img}_enhance_image.npy"))
        assert_close(curves, np.load(folder / f"{img}_r.npy"))


def forget_everywhere(name: str) -> None:
    """Remove a model from lle's cache and the hub cache: the next use downloads it again."""
    api.remove_model(name)
    download._discard_hub_file(download.hub_cached_file(entry(name).hub))


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- the hub route -------------------------------------------------------------------------------


@pytest.mark.parity
def test_first_use_downloads_from_the_hub_then_the_cache_serves(hub, converted) -> None:
    publish(hub, converted, SCL)
    e = entry(SCL)
    assert weights_location(e) == "downloadable"
    seen = []
    model = api.load_model("scl-lle", progress=lambda label, done, total: seen.append((label, done, total)))
    assert model.weights_source == str(cache.cached_weights_path(SCL))
    assert_scl_lle_matches_golden(model)  # download -> verify -> enhance reproduces the official outputs
    head = hub.seen("hub", "HEAD")
    assert len(head) == 1 and head[0].path == f"/{e.hub.repo_id}/resolve/{e.hub.revision}/{e.hub.filename}"
    assert head[0].headers["user-agent"].startswith("lle-cli/")  # library_name reaches the hub
    assert [r.path for r in hub.seen("files", "GET")] == [f"/blobs/{e.hub.sha256}"]
    assert seen[-1] == (e.hub.filename, e.hub.size, e.hub.size)  # progress reached the whole file
    # the hub file sits in the standard hub cache layout under HF_HOME, pinned by the revision tag
    repo_dir = Path(os.environ["HF_HOME"]) / "hub" / "models--lle-cli--scl-lle"
    assert (repo_dir / "refs" / e.hub.revision).read_text() == FakeHub.commit(e.hub.repo_id, e.hub.revision)
    assert (repo_dir / "blobs" / e.hub.sha256).is_file()
    assert cache.read_record(SCL)["via"] == "hub"
    before = len(hub.requests)
    assert api.load_model("scl-lle").weights_source == str(cache.cached_weights_path(SCL))
    assert weights_location(e) == "cached" and len(hub.requests) == before  # a cache hit asks nobody


def test_hub_cache_dir_follows_hf_hub_cache(hub, converted, tmp_path, monkeypatch) -> None:
    publish(hub, converted, SCL)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    fetch_weights(entry(SCL))
    assert (tmp_path / "elsewhere" / "models--lle-cli--scl-lle" / "blobs" / entry(SCL).hub.sha256).is_file()
    assert not (Path(os.environ["HF_HOME"]) / "hub").exists()


def test_token_is_sent_to_the_hub_and_nowhere_else(hub, converted, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_localtesttoken")
    publish(hub, converted, SCL)
    fetch_weights(entry(SCL))
    assert hub.seen("hub", "HEAD")[0].headers.get("authorization") == "Bearer hf_localtesttoken"
    assert "authorization" not in hub.seen("files", "GET")[0].headers  # the storage host is another origin
    hub.add_upstream(entry("rave.paired").upstream.url, upstream_bytes("rave.paired"))
    assert fetch_weights(entry("rave.paired")).via == "upstream"  # repo not on the hub: the authors' file
    assert "authorization" not in hub.seen("files", "GET", upstream_path("rave.paired"))[0].headers


def test_hub_checksum_mismatch_deletes_the_download(hub, converted) -> None:
    bad = bytearray(converted[SCL])
    bad[-1] ^= 0x01
    publish(hub, converted, SCL, bytes(bad))
    hub.add_upstream(entry(SCL).upstream.url, upstream_bytes(SCL))
    with pytest.raises(ChecksumError, match="does not match the manifest.*the download was deleted"):
        fetch_weights(entry(SCL))
    hub_dir = Path(os.environ["HF_HOME"]) / "hub" / "models--lle-cli--scl-lle"
    assert not [p for p in (hub_dir / "blobs").iterdir()]  # blob gone
    assert not list((hub_dir / "snapshots").rglob("*.safetensors"))  # and the snapshot entry
    assert not cache.cached_weights_path(SCL).exists()
    assert not hub.seen("files", path=upstream_path(SCL))  # a bad file is an error, not a reason to look elsewhere


# -- the authors' files --------------------------------------------------------------------------


def test_falls_back_to_the_authors_file_and_converts_it(hub) -> None:
    hub.add_upstream(entry(SCL).upstream.url, upstream_bytes(SCL))
    r = fetch_weights(entry(SCL))
    assert r.via == "upstream" and r.source == entry(SCL).upstream.url
    assert r.sha256 == entry(SCL).hub.sha256  # converted here, byte for byte the published file
    assert not list(cache.downloads_dir().iterdir())  # the original was converted and removed
    assert hub.seen("hub", "HEAD")  # the hub was asked first (and has no such repo)


def test_upstream_checksum_mismatch_deletes_the_download(hub) -> None:
    data = bytearray(upstream_bytes(SCL))
    data[1000] ^= 0xFF
    hub.add_upstream(entry(SCL).upstream.url, bytes(data))
    with pytest.raises(ChecksumError, match="does not match the manifest.*the download was deleted"):
        fetch_weights(entry(SCL))
    assert not cache.partial_download_path(SCL, entry(SCL).upstream.filename).exists()
    assert not cache.cached_weights_path(SCL).exists()


def test_interrupted_download_resumes_where_it_stopped(hub, no_sleep) -> None:
    path = hub.add_upstream(entry(SCL).upstream.url, upstream_bytes(SCL))
    hub.cut[path] = [100_000]
    assert fetch_weights(entry(SCL)).sha256 == entry(SCL).hub.sha256
    gets = hub.seen("files", "GET", path)
    assert len(gets) == 2 and "range" not in gets[0].headers and gets[1].headers["range"] == "bytes=100000-"
    assert no_sleep == [download.BACKOFF_S]


def test_partial_file_left_by_an_earlier_run_is_resumed(hub) -> None:
    data = upstream_bytes(SCL)
    path = hub.add_upstream(entry(SCL).upstream.url, data)
    part = cache.partial_download_path(SCL, entry(SCL).upstream.filename)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:150_000])  # what a killed process left behind
    assert fetch_weights(entry(SCL)).sha256 == entry(SCL).hub.sha256
    assert [g.headers.get("range") for g in hub.seen("files", "GET", path)] == ["bytes=150000-"]


def test_server_ignoring_range_restarts_the_file_cleanly(hub) -> None:
    data = upstream_bytes(SCL)
    path = hub.add_upstream(entry(SCL).upstream.url, data)
    hub.ignore_range = True
    part = cache.partial_download_path(SCL, entry(SCL).upstream.filename)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:150_000])
    assert fetch_weights(entry(SCL)).sha256 == entry(SCL).hub.sha256
    assert len(hub.seen("files", "GET", path)) == 1


def test_interrupted_hub_download_resumes_with_a_range_request(hub, converted, no_sleep, monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    # huggingface_hub keeps what it received in whole chunks (10 MB); make a chunk smaller than this file
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    publish(hub, converted, SCL)
    blob = f"/blobs/{entry(SCL).hub.sha256}"
    hub.cut[blob] = [50_000]
    assert fetch_weights(entry(SCL)).via == "hub"
    gets = hub.seen("files", "GET", blob)
    assert len(gets) == 2 and gets[1].headers["range"] == "bytes=49152-"  # 3 whole chunks were kept


def test_server_errors_are_retried_a_bounded_number_of_times(hub, no_sleep, capsys) -> None:
    path = hub.add_upstream(entry(SCL).upstream.url, upstream_bytes(SCL))
    hub.fail[path] = [503] * 20
    with pytest.raises(DownloadError) as e:
        fetch_weights(entry(SCL))
    msg = str(e.value)
    assert "\n" not in msg and "HTTP 503" in msg and f"gave up after {download.RETRIES + 1} attempts" in msg
    assert "not found" in msg and "lle models import SCL-LLE.pth" in msg  # the hub's answer, and the way out
    assert len(hub.seen("files", "GET", path)) == download.RETRIES + 1
    assert no_sleep == [download.BACKOFF_S * 2**i for i in range(download.RETRIES)]
    code, _, err = run(capsys, "models", "download", "scl-lle")
    assert code == 1 and err.startswith("Error: cannot download scl-lle.official") and "Traceback" not in err


def test_a_transient_server_error_is_retried(hub, no_sleep) -> None:
    path = hub.add_upstream(entry(SCL).upstream.url, upstream_bytes(SCL))
    hub.fail[path] = [500]
    assert fetch_weights(entry(SCL)).via == "upstream"
    assert len(hub.seen("files", "GET", path)) == 2


def test_hub_server_errors_fall_back_to_the_authors_file(hub, converted, no_sleep) -> None:
    publish(hub, converted, SCL)
    e = entry(SCL)
    head_path = f"/{e.hub.repo_id}/resolve/{e.hub.revision}/{e.hub.filename}"
    hub.fail[head_path] = [500] * 50
    hub.add_upstream(e.upstream.url, upstream_bytes(SCL))
    assert fetch_weights(e).via == "upstream"
    assert 1 < len(hub.seen("hub", "HEAD")) <= 10  # huggingface_hub's own retries, bounded


def test_unreachable_hosts_fail_fast_with_one_line(hub, monkeypatch) -> None:
    hub.stop()  # nothing listens on these ports any more: connection refused
    monkeypatch.setattr(download, "RETRIES", 0)
    monkeypatch.setenv("HF_ENDPOINT", "http://nonexistent.invalid")  # name resolution fails: no retries at all
    with pytest.raises(DownloadError, match=r"^cannot download scl-lle.official: hub: cannot resolve nonexistent.invalid") as e:
        fetch_weights(entry(SCL))
    assert "connection refused" in str(e.value) and "\n" not in str(e.value)


# -- offline ------------------------------------------------------------------------------------


def test_offline_uses_what_is_here_and_never_the_network(hub, converted, monkeypatch, capsys, tmp_path) -> None:
    publish(hub, converted, SCL)
    fetch_weights(entry(SCL))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(hub.requests)
    assert api.load_model("scl-lle").weights_source == str(cache.cached_weights_path(SCL))
    api.remove_model("scl-lle")
    assert api.load_model("scl-lle").name == SCL  # from the hub cache's copy, still without the network
    assert cache.read_record(SCL)["via"] == "hub"
    forget_everywhere(SCL)
    t = time.perf_counter()
    with pytest.raises(OfflineError) as e:
        api.load_model("scl-lle")
    assert time.perf_counter() - t < 2  # at once: no retries, no timeouts
    assert "HF_HUB_OFFLINE=1" in str(e.value) and "`lle models import SCL-LLE.pth`" in str(e.value)
    assert entry(SCL).upstream.url in str(e.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    img = shared_path("golden", "inputs", "lowlight_a.png")
    code, out, err = run(capsys, "enhance", img, "-m", "scl-lle", "--offline", "-o", tmp_path / "o.png")
    assert code == 1 and out == "" and "downloads are off (--offline)" in err and "lle models import SCL-LLE.pth" in err
    assert "Traceback" not in err and len(hub.requests) == asked and not (tmp_path / "o.png").exists()


# -- concurrency --------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_downloading_the_same_model_take_turns(hub, lle_home) -> None:
    path = hub.add_upstream(entry(SCL).upstream.url, upstream_bytes(SCL))
    hub.delay = 0.1  # 20 chunks: the download takes ~2 s, long enough for both processes to want it
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"}
    cmd = [sys.executable, "-m", "lle_cli", "models", "download", "scl-lle"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1].decode() for r in results]
    target = str(cache.cached_weights_path(SCL))
    assert [r[0].decode().strip() for r in results] == [target, target]
    assert len(hub.seen("files", "GET", path)) == 1  # one download; the other process waited and reused it
    notes = sorted(r[1].decode().strip() for r in results)
    assert notes == [f"{SCL}: already cached", f"{SCL}: downloaded from {entry(SCL).upstream.url}"]
    assert hashlib.sha256(Path(target).read_bytes()).hexdigest() == entry(SCL).hub.sha256
    assert sorted(p.name for p in cache.models_dir().iterdir()) == [f"{SCL}.json", f"{SCL}.safetensors"]


# -- the whole path on the real files --------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.slow
def test_download_all_then_enhance_reproduces_the_official_outputs(hub, capsys) -> None:
    # serve every authors' file that ../shared holds, found by its sha256 (zoo models made of several
    # files serve each of them); a model with a file missing here is expected to fail, alone
    by_digest = {sha256_file(f): f for f in shared_path("upstream", "weights").rglob("*") if f.is_file()}
    served, missing = set(), set()
    for e in get_registry().models.values():
        if e.name in UPSTREAM_FILES:
            continue
        if e.upstream is not None and e.upstream.pins_on_download:
            missing.add(e.name)  # files the authors publish on the hub without a sha256: not in ../shared
            continue
        files = [c for c in (e.components or ((e.upstream,) if e.upstream else ())) if c.sha256]
        if not files:
            continue
        if all(c.sha256 in by_digest for c in files):
            for c in files:
                hub.add_upstream(c.url, by_digest[c.sha256].read_bytes())
            served.add(e.name)
        else:
            missing.add(e.name)
    for name in UPSTREAM_FILES:
        hub.add_upstream(entry(name).upstream.url, upstream_bytes(name))
    code, out, _ = run(capsys, "models", "download", "--all", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    # the authors' LLFlow files are not in ../shared: every one of their locations answers 404 here, and
    # those failures leave the other downloads alone
    assert {"llflow.lol", "llflow.lol-small", "llflow.lol-v2"} <= missing
    assert code == 1 and {r["model"] for r in rows if r["status"] == "error"} == missing
    assert {r["model"] for r in rows} >= set(UPSTREAM_FILES) | served
    assert served >= {"iat.lol-v1", "sci.medium", "ruas.lol", "pairlie.official", "uretinex.lol"}
    assert all(r["status"] == "ok" for r in rows if r["model"] in served)
    for r in rows:
        if r["model"] in UPSTREAM_FILES:
            assert r["status"] == "ok" and r["via"] == "upstream" and r["sha256"] == entry(r["model"]).hub.sha256
    # every cached file is byte for byte the published conversion (sha256 above); run one of each
    # source repository through the official outputs (tests/models/test_parity.py covers every file)
    for name in ("rave.unpaired", "clip-lit.official"):
        folder = GOLDEN_UNET[name]
        model = api.load_model(name)
        for img in ("backlit_a", "lowlight_a"):
            x = golden_input(img)
            with torch.no_grad():
                light, enhanced = model.module.illumination(x), model.module(x)
            assert_close(light, np.load(shared_path("golden", "unet", folder, f"{img}_light_map.npy")))
            assert_close(enhanced, np.load(shared_path("golden", "unet", folder, f"{img}_enhanced.npy")))
    assert_scl_lle_matches_golden(api.load_model(SCL))
    code, out, _ = run(capsys, "models", "list", "--json")
    status = {json.loads(line)["name"]: json.loads(line)["weights"] for line in out.splitlines()}
    assert all(status[n] == "cached" for n in UPSTREAM_FILES)


# -- the CLI ------------------------------------------------------------------------------------


def test_list_verify_rm_cycle(hub, converted, capsys) -> None:
    publish(hub, converted, SCL)
    code, out, _ = run(capsys, "models", "list", "--json")
    rows = {json.loads(line)["name"]: json.loads(line) for line in out.splitlines()}
    assert code == 0 and rows[SCL]["weights"] == "downloadable" and rows[SCL]["path"] is None
    for name, row in rows.items():  # None: a file lle cannot verify, imported by hand only
        assert row["weights"] in ({"embedded", "cached", "downloadable"} if entry(name).downloadable else {"embedded", "cached", None})
    code, out, err = run(capsys, "models", "download", "scl-lle", "scl-lle.official")  # alias and name: once
    assert code == 0 and out.strip() == str(cache.cached_weights_path(SCL)) and "downloaded from hub:lle-cli/scl-lle@v1" in err
    code, out, _ = run(capsys, "models", "list", "--json")
    assert {json.loads(line)["name"]: json.loads(line)["weights"] for line in out.splitlines()}[SCL] == "cached"
    code, out, _ = run(capsys, "models", "verify", "scl-lle")
    assert code == 0 and out.startswith("ok") and SCL in out
    path = cache.cached_weights_path(SCL)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, err = run(capsys, "models", "verify", "--json")
    (row,) = [json.loads(line) for line in out.splitlines() if json.loads(line)["model"] == SCL]
    assert code == 1 and not row["ok"] and f"lle models download {SCL} --force" in err
    code, _, err = run(capsys, "enhance", shared_path("golden", "inputs", "lowlight_a.png"), "-m", "scl-lle", "-o", path.parent / "x.png")
    assert code == 1 and "--force" in err  # a damaged cache is reported, never silently used
    assert run(capsys, "models", "download", "scl-lle", "--force", "-q")[0] == 0
    assert run(capsys, "models", "verify")[0] == 0
    code, _, err = run(capsys, "models", "rm", "scl-lle")
    assert code == 0 and "removed scl-lle.official" in err and "the hub cache still holds" in err
    assert not path.exists() and weights_location(entry(SCL)) == "downloadable"
    assert run(capsys, "models", "download")[0] == 2  # neither names nor --all


def test_enhance_downloads_on_first_use_with_a_progress_bar_on_stderr(hub, converted, capsys, monkeypatch, tmp_path) -> None:
    import io

    from rich.console import Console

    publish(hub, converted, SCL)
    img = shared_path("golden", "inputs", "lowlight_a.png")
    code, out, err = run(capsys, "enhance", img, "-m", "scl-lle", "-o", tmp_path / "a.png")
    assert code == 0 and out.strip() == str(tmp_path / "a.png")
    assert "downloading" not in err  # stderr is not a terminal here: no bar
    forget_everywhere(SCL)
    terminal = io.StringIO()
    monkeypatch.setattr(_common, "err_console", Console(file=terminal, force_terminal=True, width=100))
    monkeypatch.setattr("lle_cli.cli.enhance.show_progress", lambda quiet, json_out: not quiet and not json_out)
    code, out, _ = run(capsys, "enhance", img, "-m", "scl-lle", "-o", tmp_path / "b.png")
    assert code == 0 and f"downloading {entry(SCL).hub.filename}" in terminal.getvalue()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
    forget_everywhere(SCL)
    terminal.truncate(0)
    assert run(capsys, "enhance", img, "-m", "scl-lle", "-o", tmp_path / "c.png", "-q")[0] == 0
    assert "downloading" not in terminal.getvalue()  # --quiet: no bar


def test_export_writes_the_published_bytes_and_a_model_card(hub, converted, capsys, tmp_path) -> None:
    publish(hub, converted, "rave.paired")
    publish(hub, converted, "rave.unpaired")
    out_dir = tmp_path / "lle-cli-rave"
    code, out, err = run(capsys, "models", "export", "rave.paired", out_dir)
    assert code == 0 and "hf upload lle-cli/rave" in err and "hf repos tag create lle-cli/rave v1" in err
    e = entry("rave.paired")
    weights = out_dir / e.hub.filename
    assert out.split() == [str(weights), str(out_dir / "README.md")]
    assert weights.read_bytes() == converted["rave.paired"]
    assert run(capsys, "models", "export", "rave", out_dir)[0] == 0  # a second file of the same hub repo
    card = (out_dir / "README.md").read_text()
    for model in ("rave.paired", "rave.unpaired"):
        m = entry(model)
        assert m.hub.sha256 in card and m.upstream.sha256 in card and m.upstream.url in card and f"`{m.hub.filename}`" in card
    assert e.license in card and e.paper in card and "library_name: lle-cli" in card
    code, _, err = run(capsys, "models", "export", "scl-lle", out_dir)
    assert code == 2 and "one folder per hub repo" in err and not (out_dir / entry(SCL).hub.filename).exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    code, _, err = run(capsys, "models", "export", "rave.paired", mine)
    assert code == 1 and "--overwrite" in err and (mine / "README.md").read_text() == "my notes\n"
