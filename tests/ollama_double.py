"""A loopback HTTP server speaking the subset of the Ollama API the project calls.

Endpoints: GET /api/version, GET /api/tags (also lists manifests found under `models_dir`),
GET /api/ps, POST /api/pull (streamed NDJSON progress; writes real blob and manifest files
under `models_dir` when given), POST /api/chat.
Behaviour is steered per test: `not_ready_until` (connection-level 503s before then),
`chat_reply` (a function of the request body), `chat_raw` (a whole response body, sent with
200 instead of an Ollama answer), `chat_delay`, `fail_pull`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.loopback import LoopbackDouble

ChatReply = Callable[[dict[str, Any]], str]


def first_label(body: dict[str, Any]) -> str:
    """A well-behaved model: answers the first label of the schema's enum."""
    enum = body["format"]["properties"]["label"]["enum"]
    return json.dumps({"label": enum[0], "confidence": 0.9})


def keyword_label(body: dict[str, Any]) -> str:
    """Answers the label whose name appears in the row text, else the first label."""
    enum = body["format"]["properties"]["label"]["enum"]
    text = body["messages"][-1]["content"].lower()
    label = next((name for name in enum if name.lower() in text), enum[0])
    return json.dumps({"label": label, "confidence": 0.8})


class OllamaDouble(LoopbackDouble):
    def __init__(self, models_dir: Path | None = None) -> None:
        self.models_dir = models_dir
        self.models: set[str] = set()
        self.not_ready_until = 0.0
        self.chat_reply: ChatReply = first_label
        self.chat_delay = 0.0
        self.chat_raw: bytes | None = None
        self.chat_started = 0  # /api/chat requests that got past the model check
        self.fail_pull = False
        self.pull_delay = 0.0
        super().__init__()

    # -----------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                double.requests.append(("GET", self.path))
                if not double._ready(self):
                    return
                if self.path == "/api/version":
                    self._json({"version": "0.12.0"})
                elif self.path == "/api/tags":
                    self._json({"models": [_model_entry(m) for m in double.listed()]})
                elif self.path == "/api/ps":
                    self._json({"models": [_model_entry(m) for m in sorted(double.models)]})
                else:
                    self._json({"error": "not found"}, 404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                double.requests.append(("POST", self.path))
                if not double._ready(self):
                    return
                if self.path == "/api/chat":
                    self._chat(body)
                elif self.path == "/api/pull":
                    self._pull(body)
                else:
                    self._json({"error": "not found"}, 404)

            def _chat(self, body: dict[str, Any]) -> None:
                model = body.get("model", "")
                if model not in double.listed():
                    self._json({"error": f"model '{model}' not found"}, 404)
                    return
                double.chat_started += 1
                if double.chat_delay:
                    time.sleep(double.chat_delay)
                if double.chat_raw is not None:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(double.chat_raw)))
                    self.end_headers()
                    self.wfile.write(double.chat_raw)
                    return
                content = double.chat_reply(body)
                self._json(
                    {
                        "model": model,
                        "created_at": "2026-11-26T00:00:00Z",
                        "message": {"role": "assistant", "content": content},
                        "done": True,
                        "done_reason": "stop",
                    }
                )

            def _pull(self, body: dict[str, Any]) -> None:
                name = body.get("model") or body.get("name") or ""
                if double.fail_pull:
                    self._json({"error": f"pull model manifest: file does not exist: {name}"}, 500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                blob = f"weights of {name}".encode() * 1000
                digest = "sha256:" + hashlib.sha256(blob).hexdigest()
                steps: list[dict[str, Any]] = [{"status": "pulling manifest"}]
                steps += [
                    {"status": f"pulling {digest[7:19]}", "digest": digest,
                     "total": len(blob), "completed": done}
                    for done in (0, len(blob) // 2, len(blob))
                ]  # fmt: skip
                steps += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                          {"status": "success"}]  # fmt: skip
                for step in steps:
                    if double.pull_delay:
                        time.sleep(double.pull_delay)
                    if step["status"] == "success":  # like Ollama: files first, then success
                        double._store(name, blob, digest)
                    self._chunk(json.dumps(step).encode() + b"\n")
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _json(self, obj: dict[str, Any], status: int = 200) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def listed(self) -> list[str]:
        """Models pulled into this double plus those whose manifests lie in `models_dir`, as
        Ollama lists whatever its store holds (how a copy into OLLAMA_MODELS becomes visible)."""
        names = set(self.models)
        root = self.models_dir / "manifests" if self.models_dir else None
        if root is not None and root.is_dir():
            for path in root.glob("*/*/*/*"):
                registry, namespace, model, tag = path.relative_to(root).parts
                if path.is_file() and registry == "registry.ollama.ai":
                    prefix = "" if namespace == "library" else f"{namespace}/"
                    names.add(f"{prefix}{model}:{tag}")
        return sorted(names)

    def _ready(self, handler: BaseHTTPRequestHandler) -> bool:
        if time.monotonic() >= self.not_ready_until:
            return True
        handler.send_response(503)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return False

    def _store(self, name: str, blob: bytes, digest: str) -> None:
        """Lay the model out as Ollama does: blobs/sha256-* and manifests/registry.../tag."""
        self.models.add(name)
        if self.models_dir is None:
            return
        model, _, tag = name.partition(":")
        blobs = self.models_dir / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        (blobs / digest.replace(":", "-")).write_bytes(blob)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "layers": [
                {"mediaType": "application/vnd.ollama.image.model", "digest": digest,
                 "size": len(blob)}
            ],
        }  # fmt: skip
        path = self.models_dir / "manifests" / "registry.ollama.ai" / "library" / model
        path.mkdir(parents=True, exist_ok=True)
        (path / (tag or "latest")).write_text(json.dumps(manifest))


def _model_entry(name: str) -> dict[str, Any]:
    return {"name": name, "model": name, "size": 1000, "digest": "0" * 64}
