"""A local stand-in for the Hugging Face hub and the authors' hosts, for download tests (127.0.0.1 only).

Two HTTP/1.1 servers share one state:

* ``hub`` answers the route huggingface_hub's ``hf_hub_download`` uses, ``HEAD/GET
  /{repo_id}/resolve/{revision}/{filename}``. As the real hub does for LFS files, it answers with a 302
  to a storage host (the ``files`` server: another origin, so huggingface_hub does not forward the
  token there) carrying the headers huggingface_hub reads from that redirect: ``X-Repo-Commit``,
  ``X-Linked-Etag`` (the file's sha256), ``X-Linked-Size``. Errors carry ``X-Error-Code``
  (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), which huggingface_hub maps to its exceptions.
* ``files`` serves plain files with ``Range`` support: hub blobs at ``/blobs/<sha256>`` and the authors'
  files at ``/<host>/<path>``, the layout ``LLE_UPSTREAM_MIRROR`` expects.

Faults, per path: ``fail[path]`` = statuses to answer with, one per request; ``cut[path]`` = byte counts
after which a response is cut (connection closed mid-body), one per request; ``delay`` seconds per
16 KiB chunk (to make downloads overlap); ``ignore_range``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

CHUNK = 16 * 1024


@dataclass(frozen=True)
class Seen:
    server: str  # "hub" or "files"
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    repos: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)  # repo -> revision -> file -> bytes
    files: dict[str, bytes] = field(default_factory=dict)  # path on the files server -> bytes
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

    def add_upstream(self, url: str, data: bytes) -> str:
        """Serve ``data`` where the mirror layout puts ``url``; returns that path."""
        parts = urlsplit(url)
        path = f"/{parts.netloc}{parts.path}"
        self.files[path] = data
        return path

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
            path = urlsplit(self.path).path
            status, cut = state._record(Seen(role, self.command, path, {k.lower(): v for k, v in self.headers.items()}))
            if status is not None:
                self._reply(status, {"Content-Type": "text/plain"}, f"injected {status}\n".encode(), body)
                return
            if role == "hub":
                self._resolve(path, body)
            else:
                self._file(path, body, cut)

        def _resolve(self, path: str, body: bool) -> None:
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m is None:
                self._reply(404, {"X-Error-Code": "RepoNotFound"}, b"not found\n", body)
                return
            repo_id, revision, filename = m.group(1), unquote(m.group(2)), unquote(m.group(3))
            if repo_id not in state.repos:
                self._reply(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found\n", body)
                return
            by_rev = state.repos[repo_id]
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
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
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
