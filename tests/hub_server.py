"""A stand-in for the Hugging Face Hub on 127.0.0.1, in a thread of the test process: it answers the requests
huggingface_hub 2.x makes, as the Hub answers them (read from huggingface_hub's file_download.py, hf_api.py
and utils/_http.py):

- GET /api/models/{repo}[/revision/{rev}]: the repository's info as JSON: `sha` (the commit) and `siblings`,
  with `size`, `blobId` (git's object id) and, for large files (LFS), `lfs.sha256`;
- HEAD and GET /{repo}/resolve/{rev}/{path}: for a small file `X-Repo-Commit`, `ETag` (its git object id),
  `Content-Length` and the bytes; for a large (LFS) file a 302 to the CDN, another host (here `localhost`
  instead of 127.0.0.1, so that huggingface_hub neither follows it for metadata nor sends the token there),
  with `X-Linked-Etag` (its sha256) and `X-Linked-Size`; the CDN (/cdn/...) serves the bytes, a `Range:
  bytes=N-` request getting 206 and the rest;
- errors with the headers huggingface_hub turns into its exceptions: 404 + `X-Error-Code: RepoNotFound` or
  `EntryNotFound`, 401 + `X-Error-Code: GatedRepo` for a gated repository's files without a valid token.

Faults on request, one transfer each: `interrupt` sends half a file and drops the connection, `corrupt`
sends a file with one byte changed, `truncate` sends a file short (with a Content-Length that says so).
Every request is recorded (method, path, Range header, Authorization header).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")  # the Hub stores these with LFS (as .gitattributes says)
TOKEN = "hf_test_token"  # the one token a gated repository accepts


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str  # a git commit id, one per repository (the cache API finds revisions by it)
    gated: bool = False

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else git_blob_id(data)

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        entry = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        if path.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    interrupt: set[str] = field(default_factory=set)  # "repo/path": the next GET sends half and hangs up
    corrupt: set[str] = field(default_factory=set)  # the next GET sends the file with a byte changed
    truncate: set[str] = field(default_factory=set)  # the next GET sends the file short

    def add(self, repo: str, files: dict[str, bytes | Path], gated: bool = False) -> Repo:
        data = {name: f.read_bytes() if isinstance(f, Path) else f for name, f in files.items()}
        self.repos[repo] = Repo(data, hashlib.sha1(repo.encode()).hexdigest(), gated)
        return self.repos[repo]

    def downloads(self, path_end: str) -> list[Request]:
        """The GET requests of a file's bytes (from the Hub or its CDN) whose path ends with `path_end`."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(path_end)
                and ("/resolve/" in r.path or r.path.startswith("/cdn/"))]


def serve(hub: FakeHub) -> tuple[ThreadingHTTPServer, str]:
    """Starts the server on a free port of 127.0.0.1; returns it and its URL (stop it with shutdown())."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet: pytest shows failures, not traffic
            pass

        def do_HEAD(self) -> None:
            self.answer(body=False)

        def do_GET(self) -> None:
            self.answer(body=True)

        def answer(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(Request(self.command, path, self.headers.get("Range"),
                                        self.headers.get("Authorization")))
            if path.startswith("/api/models/"):
                return self.model_info(path[len("/api/models/"):])
            if "/resolve/" in path:
                repo_id, _, rest = path[1:].partition("/resolve/")
                _, _, name = rest.partition("/")  # the revision: main or the commit, both mean the one commit
                return self.resolve(repo_id, name, body)
            if path.startswith("/cdn/"):
                owner, repo_name, name = path[len("/cdn/"):].split("/", 2)
                return self.content(f"{owner}/{repo_name}", name)
            self.send(404, b"not found")

        def model_info(self, rest: str) -> None:
            repo_id = rest.split("/revision/")[0]
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self.send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            info = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                    "gated": "manual" if repo.gated else False, "tags": ["gguf"],
                    "siblings": [repo.sibling(p) for p in sorted(repo.files)]}
            self.send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

        def resolve(self, repo_id: str, name: str, body: bool) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self.send(404, b"Repository not found", {"X-Error-Code": "RepoNotFound"}, body)
            if repo.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.send(401, b"Access to this model is restricted",
                                 {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"}, body)
            if name not in repo.files:
                return self.send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound",
                                                          "X-Repo-Commit": repo.commit}, body)
            data = repo.files[name]
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.etag(name)}"'}
            if name.endswith(LFS_SUFFIXES):
                cdn = f"http://localhost:{self.server.server_address[1]}/cdn/{repo_id}/{name}"
                return self.send(302, b"", {**headers, "Location": cdn, "X-Linked-Etag": f'"{repo.etag(name)}"',
                                            "X-Linked-Size": str(len(data))}, body)
            if not body:
                return self.send(200, data, headers, body=False)
            self.content(repo_id, name, headers)

        def content(self, repo_id: str, name: str, headers: dict[str, str] | None = None) -> None:
            """A file's bytes (from the Hub or the CDN), whole or from a Range on, with the faults asked for."""
            data = hub.repos[repo_id].files[name]
            headers = {**(headers or {}), "Accept-Ranges": "bytes"}
            key = f"{repo_id}/{name}"
            start = 0
            if self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][len("bytes="):].split("-")[0])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if key in hub.corrupt:
                hub.corrupt.discard(key)
                data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
            if key in hub.truncate:
                hub.truncate.discard(key)
                data = data[:len(data) - 100]
            if key in hub.interrupt:  # the whole length announced, half of it sent, then the line goes dead
                hub.interrupt.discard(key)
                self.send_response(200)
                for k, v in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.send(206 if start else 200, data[start:], headers)

        def send(self, status: int, data: bytes, headers: dict[str, str] | None = None, body: bool = True) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
