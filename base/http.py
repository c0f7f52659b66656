"""HTTP for both programs: /healthz (alive), /readyz (ready, with component state), /metrics.

A few plain GET endpoints do not justify a web framework; asyncio's streams serve them on the
worker's own event loop, so the answers reflect the loop's real health. `tabular-sync listen`,
which has no event loop of its own, runs the same server in a thread (`HttpThread`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from base import logs

log = logs.get(__name__)

# () -> (ready?, body): readiness is computed at request time from live component state.
ReadinessProbe = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    def __init__(
        self,
        port: int,
        readiness: ReadinessProbe,
        registry: CollectorRegistry = REGISTRY,
        host: str = "0.0.0.0",
        on_scrape: Callable[[], None] | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self._readiness = readiness
        self._registry = registry
        # Refreshes gauges just before /metrics is rendered (in a thread: it may read files).
        self._on_scrape = on_scrape
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("HTTP server listening", extra={"port": self.port})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if path == "/metrics" and self._on_scrape is not None:
                await self._refresh()
            status, ctype, body = self._route(method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _refresh(self) -> None:
        assert self._on_scrape is not None
        try:
            await asyncio.to_thread(self._on_scrape)
        except Exception as exc:  # stale gauges are better than no /metrics
            log.warning("Refreshing metrics failed", extra={"error": repr(exc)})

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return "200 OK", "application/json", b'{"status":"alive"}'
        if path == "/readyz":
            ready, body = self._readiness()
            status = "200 OK" if ready else "503 Service Unavailable"
            return status, "application/json", orjson.dumps({"ready": ready, **body})
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return "404 Not Found", "text/plain", b"not found\n"


class HttpThread:
    """`HealthServer` on an event loop of its own, in a daemon thread."""

    def __init__(self, port: int, readiness: ReadinessProbe) -> None:
        self.server = HealthServer(port, readiness)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http", daemon=True)

    def start(self) -> None:
        """Bind the port (raises OSError when it cannot), then serve in the thread."""
        self._loop.run_until_complete(self.server.start())
        self._thread.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
