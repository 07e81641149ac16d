"""Downloading weight files: our safetensors from the Hugging Face hub, the authors' files from their URLs.

The ecosystem's conventions are read when a download starts (not at import): ``HF_HUB_CACHE`` /
``HF_HOME`` (where hub files are cached), ``HF_ENDPOINT`` (a hub mirror), ``HF_HUB_OFFLINE=1`` (no network
at all), and ``HF_TOKEN`` or the token saved by ``hf auth login``, which huggingface_hub sends to the hub
and never to the authors' hosts. ``LLE_UPSTREAM_MIRROR`` plays the role of ``HF_ENDPOINT`` for the
authors' URLs: ``https://github.com/a/b?q`` is fetched from ``$LLE_UPSTREAM_MIRROR/github.com/a/b?q``
(Google Drive's ``https://drive.usercontent.google.com/download?id=...`` included). A file in a Hugging
Face Space (``https://huggingface.co/spaces/...``) is fetched from ``$HF_ENDPOINT/spaces/...``.

An authors' file may have several public locations (``registry.UpstreamLocation``); each is one plain
HTTP download here, resumable, retried on transient failures. A server that answers with an HTML page
instead of the file (Google Drive's "can't scan this file for viruses" page, its download-quota page, a
sign-in page) or with a Git LFS pointer never has its answer saved as weights: Drive's virus-scan form is
followed, anything else makes the location unavailable with the reason said.

Every file is checked against the manifest's sha256 before anything uses it; a mismatch deletes it.
This module only moves bytes; converting and caching them is ``loading``'s job.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import http.cookiejar
import importlib
import inspect
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urlencode, urljoin, urlsplit

from . import __version__
from .errors import ChecksumError
from .registry import HubSource, UpstreamLocation
from .digest import sha256_file

__all__ = [
    "ProgressFn",
    "SourceUnavailable",
    "WrongFileError",
    "offline_mode",
    "offline_reason",
    "hub_cache_dir",
    "hub_endpoint",
    "upstream_url",
    "location_url",
    "hub_download",
    "hub_cached_file",
    "url_download",
    "location_download",
]

# progress(label, bytes_done, bytes_total_or_None), called as bytes arrive
ProgressFn = Callable[[str, int, "int | None"], None]

LIBRARY_NAME = "lle-cli"  # what the hub's download statistics see (User-Agent)
USER_AGENT = f"{LIBRARY_NAME}/{__version__}"
RETRIES = 3  # after the first attempt, for transient failures only (network, timeout, 5xx, 408, 429)
BACKOFF_S = 1.0  # wait before the first retry, doubled after each
TIMEOUT_S = 30.0  # per connect / per read, not for the whole file
CHUNK = 1 << 16
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
PAGE_MAX = 1 << 20  # bytes of an HTML answer read to understand it (Drive's pages are a few KiB)
FORM_FOLLOWS = 2  # Drive's virus-scan form is followed at most this often per location
_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


class SourceUnavailable(Exception):
    """This source cannot deliver the file now (network, server, not published, offline): try the next."""


class WrongFileError(ChecksumError):
    """A location delivered a complete file whose sha256 is not the manifest's; the file was deleted.

    ``reason`` is the short form (without the advice), for a list of the reasons each location failed.
    """

    def __init__(self, url: str, actual: str, expected: str) -> None:
        self.url, self.actual, self.expected = url, actual, expected
        self.reason = (
            f"the downloaded file's sha256 {actual[:16]}... does not match the manifest's {expected[:16]}...; "
            "the download was deleted"
        )
        super().__init__(
            f"{url}: {self.reason}. The file at that address changed or was damaged on the way; get it another "
            "way and check it with `lle models import FILE`"
        )


class _Transient(Exception):
    """A failure worth retrying; the partial file is kept and the next attempt resumes it."""


class _Page(Exception):
    """A server answered with an HTML page where a file was expected (never saved as weights)."""

    def __init__(self, url: str, status: int, body: bytes) -> None:
        super().__init__(f"HTML page from {url}")
        self.url, self.status = url, status
        self.text = body.decode("utf-8", errors="replace")
        parser = _PageParser()
        with contextlib.suppress(AssertionError):  # html.parser's reaction to a few malformed declarations
            parser.feed(self.text)
            parser.close()
        self.title = " ".join(parser.title.split())
        self.forms, self.links = parser.forms, parser.links


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def offline_mode(flag: bool = False) -> bool:
    """``--offline``, or the hub's own switch (``HF_HUB_OFFLINE``, legacy ``TRANSFORMERS_OFFLINE``)."""
    return flag or _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def offline_reason(flag: bool = False) -> str:
    if flag:
        return "--offline"
    return "HF_HUB_OFFLINE=1" if _truthy(os.environ.get("HF_HUB_OFFLINE")) else "TRANSFORMERS_OFFLINE=1"


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub itself would use, resolved now (the env may have changed since import)."""
    env = os.environ
    if p := env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.path.expandvars(p)).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def upstream_url(url: str) -> str:
    """The authors' URL, or its copy under ``$LLE_UPSTREAM_MIRROR`` (``<mirror>/<host>/<path>``)."""
    mirror = os.environ.get("LLE_UPSTREAM_MIRROR", "").rstrip("/")
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def location_url(loc: UpstreamLocation) -> str:
    """What to fetch for ``loc`` now: a Space's or a model repository's file from ``HF_ENDPOINT``, anything
    else via ``upstream_url``."""
    if loc.kind == "hub-space":
        repo_id, revision, filename = loc.space
        return f"{hub_endpoint()}/spaces/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"
    if loc.kind == "hub":
        repo_id, revision, filename = loc.hub_file
        return f"{hub_endpoint()}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"
    return upstream_url(loc.url)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _progress_class(progress: ProgressFn | None, label: str) -> type:
    """A tqdm class that never draws (huggingface_hub would draw its own bar) and feeds ``progress``.

    The first bar of a download reports; Xet downloads open a second, byte-transfer bar that would
    count the same file twice.
    """
    from tqdm.std import tqdm

    state = {"reporting": None}

    class _Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            if state["reporting"] is None:
                state["reporting"] = id(self)
            self._emit()

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            self._emit()
            return None

        def _emit(self) -> None:
            if progress is not None and state["reporting"] == id(self):
                progress(label, max(self._done, 0), self.total)

    return _Bar


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a failed hub download raises: OSError/ValueError subclasses, plus the HTTP client's transport
    errors (httpx2 in huggingface_hub 2.x, httpx in 1.x; requests' errors are OSErrors)."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _describe_hub_error(e: BaseException, hub: HubSource, offline: bool) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{hub.repo_id}@{hub.revision or 'main'}"
    if isinstance(e, GatedRepoError):
        return f"{where} is gated: accept its terms on the hub and log in with `hf auth login`"
    if isinstance(e, RepositoryNotFoundError):
        return f"repository {hub.repo_id} not found on {hub_endpoint()} (not published yet, or private: log in with `hf auth login`)"
    if isinstance(e, RevisionNotFoundError):
        return f"revision {hub.revision} not found in {hub.repo_id}"
    if isinstance(e, RemoteEntryNotFoundError):
        return f"{hub.filename} not found in {where}"
    if isinstance(e, LocalEntryNotFoundError):
        if offline:
            return f"{hub.filename} is not in the hub cache {hub_cache_dir()}"
        cause = e.__cause__
        if cause is None:
            return f"cannot reach {hub_endpoint()}"
        return _describe_hub_error(cause, hub, offline)
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} from {hub_endpoint()} for {where}/{hub.filename}"
    name = type(e).__name__
    if "Connect" in name or "Timeout" in name:
        return f"cannot reach {hub_endpoint()} ({_first_line(e)})"
    return f"{name}: {_first_line(e)}"


def hub_cached_file(hub: HubSource) -> Path | None:
    """The hub file in the hub cache if it is already there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    p = try_to_load_from_cache(hub.repo_id, hub.filename, cache_dir=str(hub_cache_dir()), revision=hub.revision)
    return Path(p) if isinstance(p, str) else None


def _discard_hub_file(path: Path) -> None:
    """Delete a bad hub download: the snapshot entry and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


def hub_download(hub: HubSource, *, offline: bool = False, progress: ProgressFn | None = None) -> Path:
    """Fetch (or find in the hub cache) our safetensors file and verify its sha256.

    Raises ``SourceUnavailable`` when the hub cannot deliver it, ``ChecksumError`` (after deleting the
    file) when what it delivered is not the manifest's file.
    """
    from huggingface_hub import hf_hub_download

    if not offline and (why := _unresolvable(hub_endpoint())):
        raise SourceUnavailable(why)  # huggingface_hub would retry for ~20 s; a machine without DNS will not heal
    extra = {}
    if "tqdm_class" in inspect.signature(hf_hub_download).parameters:  # huggingface_hub >= 1.0
        extra["tqdm_class"] = _progress_class(progress, hub.filename)
    hf_logger = logging.getLogger("huggingface_hub")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)  # its retry warnings would bury our one-line error
    try:
        path = Path(
            hf_hub_download(
                hub.repo_id,
                hub.filename,
                revision=hub.revision,
                library_name=LIBRARY_NAME,
                library_version=__version__,
                cache_dir=str(hub_cache_dir()),
                endpoint=hub_endpoint(),
                local_files_only=offline,
                **extra,
            )
        )
    except _hub_errors() as e:
        raise SourceUnavailable(_describe_hub_error(e, hub, offline)) from None
    finally:
        hf_logger.setLevel(level)
    actual = sha256_file(path)
    if actual != hub.sha256:
        _discard_hub_file(path)
        raise ChecksumError(
            f"{hub.repo_id}@{hub.revision or 'main'}/{hub.filename}: the downloaded file's sha256 {actual[:16]}... "
            f"does not match the manifest's {hub.sha256[:16]}...; the download was deleted. The hub copy is not the "
            "file this lle version expects: upgrade lle, or import the authors' file with `lle models import`"
        )
    return path


def _unresolvable(url: str) -> str | None:
    """Why ``url``'s host cannot be reached at all (its name does not resolve), or None.

    Behind a proxy the proxy resolves names, so nothing is checked there.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None
    parts = urlsplit(url)
    try:
        socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror:
        return f"cannot resolve {parts.hostname} (no network?)"
    except (OSError, UnicodeError, ValueError):
        return None  # let the real request report it
    return None


def _describe_url_error(e: BaseException, url: str) -> str:
    host = urlsplit(url).netloc
    reason = getattr(e, "reason", e)
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {host.split(':')[0]} (no network?)"
    if isinstance(reason, ConnectionRefusedError):
        return f"connection refused by {host}"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"{host} timed out after {TIMEOUT_S:.0f} s"
    if isinstance(e, http.client.IncompleteRead):
        return f"connection to {host} closed mid-file"
    return f"{host}: {_first_line(reason) if isinstance(reason, BaseException) else reason}"


class _PageParser(HTMLParser):
    """The title, GET forms (action + named inputs, in order) and links of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.forms: list[tuple[str, list[tuple[str, str]]]] = []
        self.links: list[tuple[str, str]] = []  # (id, href)
        self._in_title = False
        self._form: tuple[str, list[tuple[str, str]]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "title":
            self._in_title = True
        elif tag == "form" and a.get("method", "get").lower() == "get":
            self._form = (a.get("action", ""), [])
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name") and a.get("type", "text").lower() != "submit":
            self._form[1].append((a["name"], a.get("value", "")))
        elif tag == "a" and a.get("href"):
            self.links.append((a.get("id", ""), a["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "form":
            self._form = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def _drive_next(page: _Page) -> str | None:
    """Where Google Drive's "can't scan this file for viruses" page sends a person who clicks "Download
    anyway": its form (action ``.../download`` with hidden ``id``, ``export``, ``confirm``, ``uuid``) or,
    on older pages, its ``uc-download-link``. None when the page has neither."""
    for action, inputs in page.forms:
        if action and any(name == "id" for name, _ in inputs):
            target = action + ("&" if "?" in action else "?") + urlencode(inputs)
            break
    else:
        target = next((href for ident, href in page.links if ident == "uc-download-link"), "")
        if not target:
            return None
    if urlsplit(target).scheme in ("http", "https"):
        return upstream_url(target)  # an absolute address on Google's hosts: through the mirror, if any
    return urljoin(page.url, target)  # relative to the page, which came from the mirror already


def _refusal(page: _Page) -> str | None:
    """Google Drive's known ways of saying no, as a reason; None for any other page."""
    host = urlsplit(page.url).netloc
    text = html.unescape(page.text).lower()
    if "too many users have viewed or downloaded this file" in text or "quota exceeded" in text:
        return ("Google Drive refuses the download for now: too many users have viewed or downloaded this file "
                "recently (its download quota, which resets within 24 hours)")
    if host.startswith("accounts.google.") or "servicelogin" in text:
        return "Google asks to sign in: the file is not shared publicly (any more)"
    return None


def _describe_page(page: _Page, followed: int = 0) -> str:
    """Why an HTML answer is not the file, in one line; ``followed``: how often a form led here."""
    host = urlsplit(page.url).netloc
    if why := _refusal(page):
        return why
    if _drive_next(page) is not None:
        if followed:
            return f"{host} kept answering with Google Drive's virus-scan page after its form was followed"
        return f"{host} answered with Google Drive's virus-scan page (a form to confirm the download) instead of the file"
    title = f" ({page.title[:80]!r})" if page.title else ""
    return f"{host} answered HTTP {page.status} with an HTML page{title} instead of the file"


def _read_page(resp, first: bytes = b"") -> bytes:
    return first + resp.read(max(PAGE_MAX - len(first), 0))


def _content_type(headers) -> str:
    return (headers.get("Content-Type") or "").split(";")[0].strip().lower()


def _looks_like_html(first: bytes) -> bool:
    head = first[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _full_length(resp, have: int) -> int | None:
    """The size of the whole file as this response states it; ``have``: bytes before the response's first."""
    if have and (m := re.fullmatch(r"bytes \d+-\d+/(\d+)", (resp.headers.get("Content-Range") or "").strip())):
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _get(
    url: str, part: Path, *, size: int | None, label: str, progress: ProgressFn | None, opener: urllib.request.OpenerDirector
) -> None:
    """One attempt: append the rest of ``url`` to ``part`` (a Range request when ``part`` has bytes).

    Raises ``_Page`` (nothing written) when the server answers with HTML instead of the file.
    """
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return  # a previous attempt got everything; the checksum decides
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    host = urlsplit(url).netloc
    try:
        resp = opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        with e:  # a quota page may come with 403 or 429: not worth a retry, and worth saying
            page = _Page(e.geturl() or url, e.code, _read_page(e)) if _content_type(e.headers) in _HTML_TYPES else None
        if page is not None and (why := _refusal(page)):
            raise SourceUnavailable(why) from None
        if e.code == 416 and have:  # our partial file is not a prefix of this file: start over
            part.unlink(missing_ok=True)
            raise _Transient(f"HTTP 416 from {host} for a resumed download") from None
        if e.code in _RETRY_STATUS:
            raise _Transient(f"HTTP {e.code} {e.reason} from {host}") from None
        raise SourceUnavailable(f"HTTP {e.code} {e.reason} for {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        if isinstance(getattr(e, "reason", None), socket.gaierror):
            raise SourceUnavailable(_describe_url_error(e, url)) from None  # no DNS: retrying will not help
        raise _Transient(_describe_url_error(e, url)) from None
    with resp:
        final = resp.geturl() or url
        resumed = have > 0 and resp.status == 206 and (resp.headers.get("Content-Range") or "").startswith(f"bytes {have}-")
        try:
            if _content_type(resp.headers) in _HTML_TYPES:
                raise _Page(final, resp.status, _read_page(resp))
            first = b"" if resumed else resp.read(CHUNK)  # a file's first bytes say what it is
            if _looks_like_html(first):
                raise _Page(final, resp.status, _read_page(resp, first))
        except (OSError, http.client.HTTPException) as e:
            raise _Transient(_describe_url_error(e, url)) from None
        if first.startswith(_LFS_POINTER):
            raise SourceUnavailable(f"{urlsplit(final).netloc} serves a Git LFS pointer, not the file it points to")
        if not resumed:
            have = 0  # the server sent the whole file (it ignored our Range, or there was none)
        full = _full_length(resp, have)
        if size is not None and full is not None and full != size:
            raise SourceUnavailable(f"{urlsplit(final).netloc} serves {full:,} bytes, not the manifest's {size:,}: not the expected file")
        total = size if size is not None else full
        if progress:
            progress(label, have, total)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                block = first
                while block or (block := resp.read(CHUNK)):
                    f.write(block)
                    have += len(block)
                    block = b""
                    if size is not None and have > size:
                        part.unlink(missing_ok=True)
                        raise SourceUnavailable(f"{url} is larger than the manifest's {size} bytes; not the expected file")
                    if progress:
                        progress(label, have, total)
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, OSError) and not isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):
                raise  # a local disk error, not the network's
            raise _Transient(_describe_url_error(e, url)) from None
    if total is not None and have < total:
        raise _Transient(f"connection to {host} closed after {have} of {total} bytes")


def _fetch(url: str, part: Path, *, size: int | None, label: str, progress: ProgressFn | None, forms: bool) -> None:
    """``_get`` until the file is complete: transient failures retried with backoff, Drive's form followed."""
    # one cookie jar per location, as a browser keeps one: Google's pages may set cookies their form expects
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    attempt = follows = 0
    while True:
        try:
            _get(url, part, size=size, label=label, progress=progress, opener=opener)
            return
        except _Transient as e:
            if attempt == RETRIES:
                raise SourceUnavailable(f"{e} (gave up after {RETRIES + 1} attempt{'s' if RETRIES else ''})") from None
            time.sleep(BACKOFF_S * 2**attempt)
            attempt += 1
        except _Page as page:
            target = _drive_next(page) if forms and follows < FORM_FOLLOWS else None
            if target is None:
                raise SourceUnavailable(_describe_page(page, follows)) from None
            url, follows = target, follows + 1


def url_download(
    url: str,
    part: Path,
    *,
    sha256: str | None,
    size: int | None = None,
    label: str = "",
    progress: ProgressFn | None = None,
    forms: bool = False,
) -> Path:
    """Download ``url`` into ``part``, resuming what an earlier attempt left there, and verify its sha256.

    Transient failures are retried ``RETRIES`` times with exponential backoff, each retry resuming where
    the last stopped; the partial file is kept when all fail so the next call resumes too. ``forms``:
    follow the download form of an HTML answer (Google Drive's virus-scan page) instead of failing.
    A wrong file is deleted (``WrongFileError``); when it was completed from bytes an earlier download
    left in ``part``, it is fetched once more from the start before this location is blamed.
    ``sha256=None`` (a file whose checksum is pinned only after this download, see
    ``UpstreamSource.pins_on_download``): never resumed from earlier bytes, which nothing could vouch for.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    label = label or Path(urlsplit(url).path).name
    if sha256 is None:
        part.unlink(missing_ok=True)
    resumed = part.exists() and part.stat().st_size > 0
    while True:
        _fetch(url, part, size=size, label=label, progress=progress, forms=forms)
        actual = sha256_file(part)
        if sha256 is None or actual == sha256:
            return part
        part.unlink(missing_ok=True)
        if not resumed:
            raise WrongFileError(url, actual, sha256)
        resumed = False  # the earlier bytes may have been the wrong ones: once more, whole


def location_download(
    loc: UpstreamLocation,
    part: Path,
    *,
    sha256: str | None,
    size: int | None = None,
    label: str = "",
    progress: ProgressFn | None = None,
) -> Path:
    """``url_download`` of one public location of an authors' file, the way its ``kind`` needs."""
    return url_download(
        location_url(loc), part, sha256=sha256, size=size, label=label, progress=progress, forms=loc.kind == "drive"
    )
