"""The skeleton the loopback API doubles share: a threaded HTTP server on 127.0.0.1:0."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietServer(ThreadingHTTPServer):
    """A client hanging up mid-response (a cancelled pull, a closed test) is not an error.

    socketserver would print a traceback from the handler thread instead; besides the noise,
    that lazily imports modules off the main thread while pytest rewrites imports on it.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LoopbackDouble:
    """Subclasses build their request handler in `_handler()`; this owns the server's life."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._server = QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError
