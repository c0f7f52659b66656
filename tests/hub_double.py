"""A loopback HTTP server answering the Hugging Face hub endpoints `snapshot_download` calls.

Serves one or more repositories from local directories (each at a fixed commit):
GET /api/models/{repo}[/revision/{rev}] (model_info, with LFS sha256 for large files),
GET /api/models/{repo}/tree/{rev} (list_repo_tree), HEAD/GET /{repo}/resolve/{rev}/{path}
(with Range). `stall_file` makes a download of that file send half its bytes and then wait
for `release` (a test can kill the downloader meanwhile).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.loopback import LoopbackDouble

LFS_THRESHOLD = 1 << 20


@dataclass
class Repo:
    commit: str
    root: Path
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, root: Path, commit: str) -> Repo:
        files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        return cls(commit, root, files)


class HubDouble(LoopbackDouble):
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.stall_file: str | None = None
        self.stalled = threading.Event()  # set when a stalled download is waiting
        self.release = threading.Event()
        super().__init__()

    def add(self, repo: str, root: Path, commit: str) -> None:
        self.repos[repo] = Repo.from_dir(root, commit)

    def downloads(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def stop(self) -> None:
        self.release.set()
        super().stop()

    # -----------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.requests.append(("HEAD", self.path))
                self._route(body=False)

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
                self._route(body=True)

            def _route(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(/revision/[^/]+)?", path):
                    self._info(m.group(1))
                elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
                    self._tree(m.group(1))
                elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    self._file(m.group(1), m.group(3), body)
                else:
                    self._json({"error": "not found"}, 404)

            def _repo(self, name: str) -> Repo | None:
                repo = hub.repos.get(name)
                if repo is None:
                    self._json({"error": "Repository not found"}, 404,
                               {"X-Error-Code": "RepoNotFound"})  # fmt: skip
                return repo

            def _info(self, name: str) -> None:
                if (repo := self._repo(name)) is None:
                    return
                siblings = []
                for rel, p in repo.files.items():
                    entry: dict[str, Any] = {"rfilename": rel, "size": p.stat().st_size,
                                             "blobId": _git_oid(p)}  # fmt: skip
                    if p.stat().st_size >= LFS_THRESHOLD:
                        entry["lfs"] = {"sha256": _sha256(p), "size": p.stat().st_size,
                                        "pointerSize": 134}  # fmt: skip
                    siblings.append(entry)
                self._json({"id": name, "modelId": name, "sha": repo.commit, "private": False,
                            "siblings": siblings, "tags": [], "downloads": 0})  # fmt: skip

            def _tree(self, name: str) -> None:
                if (repo := self._repo(name)) is None:
                    return
                entries = []
                for rel, p in repo.files.items():
                    entry: dict[str, Any] = {"type": "file", "path": rel, "size": p.stat().st_size,
                                             "oid": _git_oid(p)}  # fmt: skip
                    if p.stat().st_size >= LFS_THRESHOLD:
                        entry["lfs"] = {"oid": _sha256(p), "size": p.stat().st_size,
                                        "pointerSize": 134}  # fmt: skip
                    entries.append(entry)
                self._json(entries)

            def _file(self, name: str, rel: str, body: bool) -> None:
                if (repo := self._repo(name)) is None:
                    return
                if rel not in repo.files:
                    self._json({"error": "Entry not found"}, 404,
                               {"X-Error-Code": "EntryNotFound"})  # fmt: skip
                    return
                data = repo.files[rel].read_bytes()
                start = 0
                if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                    start = int(m.group(1))
                lfs = len(data) >= LFS_THRESHOLD
                etag = hashlib.sha256(data).hexdigest() if lfs else _git_oid_bytes(data)
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", repo.commit)
                self.send_header("ETag", f'"{etag}"')
                if lfs:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if body:
                    self._send_body(rel, data[start:])

            def _send_body(self, rel: str, data: bytes) -> None:
                if rel != hub.stall_file:
                    self.wfile.write(data)
                    return
                half = len(data) // 2
                self.wfile.write(data[:half])
                self.wfile.flush()
                hub.stalled.set()
                hub.release.wait()
                try:
                    self.wfile.write(data[half:])
                except OSError:
                    pass  # the downloader is gone

            def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None,
                      ) -> None:  # fmt: skip
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        return Handler


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git_oid(path: Path) -> str:
    return _git_oid_bytes(path.read_bytes())


def _git_oid_bytes(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
