"""A local stand-in for the Hugging Face hub and the authors' hosts, for download tests (127.0.0.1 only).

Two HTTP/1.1 servers share one state:

* ``hub`` answers the route huggingface_hub's ``hf_hub_download`` uses, ``HEAD/GET
  /{repo_id}/resolve/{revision}/{filename}``. As the real hub does for LFS files, it answers with a 302
  to a storage host (the ``files`` server: another origin, so huggingface_hub does not forward the
  token there) carrying the headers huggingface_hub reads from that redirect: ``X-Repo-Commit``,
  ``X-Linked-Etag`` (the file's sha256), ``X-Linked-Size``. Errors carry ``X-Error-Code``
  (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), which huggingface_hub maps to its exceptions.
  Files of Spaces answer the same way at ``/spaces/{repo_id}/resolve/{revision}/{filename}``.
* ``files`` serves plain files with ``Range`` support: hub blobs at ``/blobs/<sha256>`` and the authors'
  files at ``/<host>/<path>``, the layout ``LLE_UPSTREAM_MIRROR`` expects. It also plays the hosts' own
  behaviour there: redirects (GitHub's ``/raw/`` -> its LFS host ``media.githubusercontent.com``) and
  Google Drive's ``/drive.usercontent.google.com/download?id=...``, which answers with the file, with its
  "can't scan this file for viruses" page (a form to follow, with a one-time ``uuid``) or with its
  download-quota page, as Drive does.

Faults, per path: ``fail[path]`` = statuses to answer with, one per request; ``cut[path]`` = byte counts
after which a response is cut (connection closed mid-body), one per request; ``delay`` seconds per
16 KiB chunk (to make downloads overlap); ``ignore_range``.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 16 * 1024
DRIVE_PATH = "/drive.usercontent.google.com/download"

# the pages Google Drive answers with instead of a file (abridged; the parts a client can rely on kept)
VIRUS_SCAN_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>
<meta http-equiv="content-type" content="text/html; charset=utf-8"/></head><body>
<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can&#39;t scan this file for viruses.</p>
<p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={id}">{name}</a> ({size})</span> is too large
for Google to scan for viruses. Would you still like to download this file?</p>
<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">
<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}"></form></div></div>
</body></html>"""
QUOTA_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>
<div class="uc-main"><div id="uc-text"><p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this time.</p>
<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try accessing the file
again later. If the file you are trying to access is particularly large or is shared with many people, it may take up to
24 hours to be able to view or download the file.</p></div></div></body></html>"""
SIGN_IN_PAGE = """<!DOCTYPE html><html><head><title>Google Drive: Sign-in</title></head><body>
<a href="https://accounts.google.com/ServiceLogin?service=wise&amp;passive=1209600">Sign in</a></body></html>"""
NOT_FOUND_PAGE = """<!DOCTYPE html><html lang="en"><head><title>Error 404 (Not Found)!!1</title></head>
<body><p><b>404.</b> <ins>That\u2019s an error.</ins></p></body></html>"""


@dataclass(frozen=True)
class Seen:
    server: str  # "hub" or "files"
    method: str
    path: str
    headers: dict[str, str]
    query: str = ""


@dataclass
class DriveFile:
    data: bytes
    name: str
    page: str | None = None  # None: the file; "virus-scan": the page, then the file for its form; "quota"; "sign-in"
    page_status: int = 200  # what a page is served with (Drive has used 200, 403 and 429 for its quota page)
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    stale_form: bool = False  # the page's form carries a uuid Drive never accepts (the page comes back)


@dataclass
class FakeHub:
    repos: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)  # repo -> revision -> file -> bytes
    spaces: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)  # the same for Spaces
    files: dict[str, bytes] = field(default_factory=dict)  # path on the files server -> bytes
    redirects: dict[str, str] = field(default_factory=dict)  # path on the files server -> public URL it redirects to
    drive: dict[str, DriveFile] = field(default_factory=dict)  # Google Drive file id -> what Drive answers
    fail: dict[str, list[int]] = field(default_factory=dict)
    cut: dict[str, list[int]] = field(default_factory=dict)
    delay: float = 0.0
    ignore_range: bool = False
    requests: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, ThreadingHTTPServer] = {}

    # -- content ---------------------------------------------------------------------------------
    def add_hub_file(self, repo_id: str, revision: str, filename: str, data: bytes) -> None:
        self.repos.setdefault(repo_id, {}).setdefault(revision, {})[filename] = data
        self.files[f"/blobs/{hashlib.sha256(data).hexdigest()}"] = data

    def add_space_file(self, repo_id: str, revision: str, filename: str, data: bytes) -> None:
        self.spaces.setdefault(repo_id, {}).setdefault(revision, {})[filename] = data
        self.files[f"/blobs/{hashlib.sha256(data).hexdigest()}"] = data

    def add_upstream(self, url: str, data: bytes) -> str:
        """Serve ``data`` where the mirror layout puts ``url``; returns that path."""
        path = self.mirror_path(url)
        self.files[path] = data
        return path

    def add_redirect(self, url: str, to: str) -> str:
        """Answer ``url`` (mirror layout) with a 302 to ``to`` (mirror layout, on this server); returns the path."""
        path = self.mirror_path(url)
        self.redirects[path] = to
        return path

    def add_drive_file(self, file_id: str, data: bytes, *, name: str = "file.pth", page: str | None = None,
                       page_status: int = 200) -> DriveFile:
        self.drive[file_id] = DriveFile(data, name, page, page_status)
        return self.drive[file_id]

    @staticmethod
    def mirror_path(url: str) -> str:
        parts = urlsplit(url)
        return f"/{parts.netloc}{parts.path}"

    @staticmethod
    def commit(repo_id: str, revision: str) -> str:
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            return revision
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    # -- inspection ------------------------------------------------------------------------------
    def seen(self, server: str | None = None, method: str | None = None, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                r for r in self.requests
                if (server is None or r.server == server) and (method is None or r.method == method)
                and (path is None or path in r.path)
            ]

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self._servers['hub'].server_address[1]}"

    @property
    def files_url(self) -> str:
        return f"http://127.0.0.1:{self._servers['files'].server_address[1]}"

    def start(self) -> FakeHub:
        for role in ("hub", "files"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, role))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers[role] = server
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    def _record(self, seen: Seen) -> tuple[int | None, int | None]:
        """Log a request; return the (status, cut) faults it must suffer."""
        with self._lock:
            self.requests.append(seen)
            status = self.fail[seen.path].pop(0) if self.fail.get(seen.path) else None
            cut = self.cut[seen.path].pop(0) if self.cut.get(seen.path) and seen.method == "GET" else None
        return status, cut


def _handler(state: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _reply(self, status: int, headers: dict[str, str], data: bytes = b"", body: bool = True, cut: int | None = None) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not body:
                return
            limit = len(data) if cut is None else min(cut, len(data))
            for i in range(0, limit, CHUNK):
                if state.delay:
                    time.sleep(state.delay)
                self.wfile.write(data[i : min(i + CHUNK, limit)])
            self.wfile.flush()
            if cut is not None:
                self.close_connection = True

        def _serve(self, body: bool) -> None:
            path, query = urlsplit(self.path).path, urlsplit(self.path).query
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, cut = state._record(Seen(role, self.command, path, headers, query))
            if status is not None:
                self._reply(status, {"Content-Type": "text/plain"}, f"injected {status}\n".encode(), body)
                return
            if role == "hub":
                self._resolve(path, body)
            elif path in state.redirects:
                self._reply(302, {"Location": state.files_url + FakeHub.mirror_path(state.redirects[path])}, b"", body)
            elif path == DRIVE_PATH:
                self._drive(parse_qs(query), body, cut)
            else:
                self._file(path, body, cut)

        def _drive(self, query: dict[str, list[str]], body: bool, cut: int | None) -> None:
            file_id = (query.get("id") or [""])[0]
            f = state.drive.get(file_id)
            html_type = {"Content-Type": "text/html; charset=utf-8"}
            if f is None:
                self._reply(404, html_type, NOT_FOUND_PAGE.encode(), body)
            elif f.page in ("quota", "sign-in"):
                self._reply(f.page_status, html_type, (QUOTA_PAGE if f.page == "quota" else SIGN_IN_PAGE).encode(), body)
            elif f.page == "virus-scan" and (query.get("uuid") or [""])[0] != f.uuid:
                token = str(uuid.uuid4()) if f.stale_form else f.uuid
                page = VIRUS_SCAN_PAGE.format(id=html.escape(file_id), name=html.escape(f.name), size=f"{len(f.data) >> 20}M", uuid=token)
                self._reply(f.page_status, html_type, page.encode(), body)
            else:
                extra = {"Content-Disposition": f'attachment; filename="{f.name}"'}
                self._data(f.data, body, cut, extra)

        def _resolve(self, path: str, body: bool) -> None:
            repos = state.repos
            if path.startswith("/spaces/"):
                path, repos = path[len("/spaces"):], state.spaces
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m is None:
                self._reply(404, {"X-Error-Code": "RepoNotFound"}, b"not found\n", body)
                return
            repo_id, revision, filename = m.group(1), unquote(m.group(2)), unquote(m.group(3))
            if repo_id not in repos:
                self._reply(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found\n", body)
                return
            by_rev = repos[repo_id]
            commit_of = {FakeHub.commit(repo_id, r): r for r in by_rev}
            rev = revision if revision in by_rev else commit_of.get(revision)
            if rev is None:
                self._reply(404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id\n", body)
                return
            commit = FakeHub.commit(repo_id, rev)
            data = by_rev[rev].get(filename)
            if data is None:
                self._reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"Entry not found\n", body)
                return
            sha = hashlib.sha256(data).hexdigest()
            self._reply(302, {
                "Location": f"{state.files_url}/blobs/{sha}",
                "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
            }, b"", body)

        def _file(self, path: str, body: bool, cut: int | None) -> None:
            data = state.files.get(path)
            if data is None:
                self._reply(404, {"Content-Type": "text/plain"}, b"Not Found\n", body)
                return
            self._data(data, body, cut)

        def _data(self, data: bytes, body: bool, cut: int | None, extra: dict[str, str] | None = None) -> None:
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            headers.update(extra or {})
            rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if rng and not state.ignore_range:
                start = int(rng.group(1))
                if start >= len(data):
                    self._reply(416, {"Content-Range": f"bytes */{len(data)}"}, b"", body)
                    return
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._reply(206, headers, data[start:], body, cut)
                return
            self._reply(200, headers, data, body, cut)

    return Handler
