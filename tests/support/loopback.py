"""The lifecycle shared by the protocol test servers: a threaded HTTP server on a free loopback port."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many executor workers connect at once
    app: Any = None
    """The LoopbackServer this socket serves; handlers reach their state through `self.server.app`."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up (a timeout test) is not news
            super().handle_error(request, client_address)


class LoopbackServer:
    """Subclasses name their request `handler`; use as a context manager or start()/stop()."""

    handler: ClassVar[type[BaseHTTPRequestHandler]]
    thread_name: ClassVar[str] = "test-server"
    _httpd: QuietServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Any:
        self._httpd = QuietServer(("127.0.0.1", 0), self.handler)
        self._httpd.app = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """http://127.0.0.1:<port>"""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"
