"""`latigo web`: HTTP (the standard library's threading server), the token check and the routes.

Safe by default: it binds loopback unless told otherwise and refuses to bind anything else without a token;
a token, when there is one, is required on every request (`?token=`, `Authorization: Bearer`, or the cookie
a `?token=` request sets so that links work) and compared in constant time; without a token, requests must
name a loopback host (a page of another site cannot reach it by DNS rebinding). The token is never logged:
request lines are logged without their query, and the token is registered as a secret for the log filter.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from sqlalchemy.engine import Engine

from latigo.errors import ConfigError, LatigoError
from latigo.secrets import mask_text, register_secret
from latigo.settings import Config
from latigo.storage.db import database_location
from latigo.types import DEFAULT_PROJECT, ModelRef
from latigo.web import queries, render

log = logging.getLogger(__name__)

COOKIE = "latigo_web_token"
OVERVIEW_CACHE_SECONDS = 10.0
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"web: --token-file {path}: {exc.strerror or type(exc).__name__}") from None
    if not token:
        raise ConfigError(f"web: --token-file {path} is empty")
    if len(token) < 16:
        raise ConfigError(f"web: the token in {path} is shorter than 16 characters")
    return token


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class WebApp:
    """Routes, authorization and rendering, independent of the socket."""

    def __init__(self, engine: Engine, *, token: str | None = None, database: str = "",
                 late_after: timedelta = timedelta(minutes=65), bound_host: str = "127.0.0.1",
                 page_size: int = queries.MAX_MODELS) -> None:
        self.engine = engine
        self.page_size = page_size
        self.token = token
        self.database = database
        self.late_after = late_after
        self.bound_host = bound_host.strip("[]").lower()
        self._snapshot_lock = threading.Lock()
        self._snapshot: tuple[float, queries.Snapshot] | None = None
        self._hourly = queries.HourlyCounts()

    def snapshot(self) -> queries.Snapshot:
        """Every model's row and the health, read at most once per OVERVIEW_CACHE_SECONDS: every open page
        refreshes every 30 s, and ten viewers (each with its own search, filter and page) should not cost the
        database ten times what one does."""
        with self._snapshot_lock:
            if self._snapshot is None or time.monotonic() >= self._snapshot[0]:
                taken = queries.snapshot(self.engine, hourly=self._hourly)
                self._snapshot = (time.monotonic() + OVERVIEW_CACHE_SECONDS, taken)
            return self._snapshot[1]

    def overview(self, which: queries.ModelFilter | None = None) -> queries.Overview:
        """One page of the models `which` selects (its sparklines are the only reads of its own)."""
        return queries.view(self.engine, self.snapshot(), which or queries.ModelFilter(), self.page_size,
                            self.late_after)

    # ---------------------------------------------------------------- authorization

    def _matches(self, candidate: str | None) -> bool:
        if not candidate or self.token is None:
            return False
        return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), self.token.encode("utf-8"))

    def authorize(self, query: dict[str, list[str]], headers: Any) -> tuple[bool, bool]:
        """(allowed, whether to set the cookie: the token came in the query)."""
        if self.token is None:
            return True, False
        authorization = headers.get("Authorization") or ""
        scheme, _, credentials = authorization.partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else None
        from_query = (query.get("token") or [""])[0] or None
        from_cookie = None
        try:
            cookie = SimpleCookie(headers.get("Cookie") or "")
            if COOKIE in cookie:
                from_cookie = unquote(cookie[COOKIE].value)
        except CookieError:
            pass
        results = [self._matches(bearer), self._matches(from_query), self._matches(from_cookie)]
        return any(results), results[1]

    def host_allowed(self, host_header: str | None) -> bool:
        """Without a token, only requests addressed to a loopback name or the bound address."""
        if self.token is not None:
            return True
        if not host_header:
            return False
        host = host_header.strip().lower()
        host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        return is_loopback(host) or host == self.bound_host

    # ---------------------------------------------------------------- routes

    def respond(self, method: str, target: str, headers: Any) -> Response:
        if method not in ("GET", "HEAD"):
            return self._html(405, render.error_page(405, "method not allowed", "This page only reads."),
                              {"Allow": "GET, HEAD"})
        if not self.host_allowed(headers.get("Host")):
            return self._html(403, render.error_page(403, "forbidden", "Address this server by a loopback name "
                                                     "(127.0.0.1, localhost), or start it with --token-file."))
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        allowed, set_cookie = self.authorize(query, headers)
        if not allowed:
            return self._html(401, render.error_page(401, "token required", "Give the token as ?token=… or as an "
                                                     "Authorization: Bearer header."),
                              {"WWW-Authenticate": 'Bearer realm="latigo"'})
        extra = {}
        if set_cookie and self.token is not None:
            extra["Set-Cookie"] = f"{COOKIE}={quote(self.token, safe='')}; HttpOnly; SameSite=Strict; Path=/"
        path = parts.path
        try:
            if path == "/":
                view = self.overview(_model_filter(query))
                return self._html(200, render.overview_page(view, self.database, self.late_after), extra)
            ref = _model_ref(path)
            if ref is not None:
                return self._model(ref, query, extra)
        except Exception as exc:  # the database went away, a statement timed out: say so, keep serving
            log.warning("latigo web: %s %s failed: %s", method, path, mask_text(_first_line(exc)))
            return self._html(503, render.error_page(503, "database unavailable", mask_text(_first_line(exc))))
        return self._html(404, render.error_page(404, "not found", "Nothing here: see the overview."))

    def _model(self, ref: ModelRef, query: dict[str, list[str]], extra: dict[str, str]) -> Response:
        output = (query.get("output") or [""])[0] or None
        try:
            hours: int | None = min(max(int((query.get("hours") or [""])[0]), 1), queries.MAX_HOURS)
        except ValueError:
            hours = None  # the shortest range that holds the last 24 hours' values
        detail = queries.model_detail(self.engine, ref, output if output in queries.TAG_OUTPUTS else None, hours)
        status = 200 if detail.known else 404
        return self._html(status, render.model_page(detail, self.database, self.late_after), extra)

    @staticmethod
    def _html(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
        return Response(status, text.encode("utf-8"),
                        {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS, **(headers or {})})


def _model_ref(path: str) -> ModelRef | None:
    """/models/NAME (the default project) or /models/PROJECT/NAME, each part quoted; None for any other path."""
    if not path.startswith("/models/"):
        return None
    parts = [unquote(part) for part in path[len("/models/"):].split("/")]
    if len(parts) == 1 and parts[0]:
        return ModelRef(DEFAULT_PROJECT, parts[0])
    if len(parts) == 2 and all(parts):
        return ModelRef(parts[0], parts[1])
    return None


def _model_filter(query: dict[str, list[str]]) -> queries.ModelFilter:
    """The overview's filter from its address; an unknown state or a page that is not a number is ignored
    (the page shows what it can), never an error page."""
    def first(key: str) -> str:
        return (query.get(key) or [""])[0]

    try:
        page = int(first("page") or 1)
    except ValueError:
        page = 1
    return queries.ModelFilter(q=first("q"), state=first("state"), project=first("project"), page=min(page, 10**6))


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


class _Handler(BaseHTTPRequestHandler):
    server_version = "latigo-web"
    sys_version = ""
    server: WebServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._serve("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST  # noqa: N815

    def _serve(self, method: str) -> None:
        began = time.monotonic()
        response = self.server.app.respond(method, self.path, self.headers)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)
        log.debug("latigo web: %s %s %d %.0f ms", method, urlsplit(self.path).path, response.status,
                  (time.monotonic() - began) * 1000)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # _serve logs the path without its query (where a token may be)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("latigo web: %s", mask_text(format % args))


class WebServer(ThreadingHTTPServer):
    daemon_threads = True
    app: WebApp

    def __init__(self, address: tuple[str, int], app: WebApp) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.app = app

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a browser that went away is not news
            super().handle_error(request, client_address)


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                database: str = "", late_after: timedelta = timedelta(minutes=65)) -> WebServer:
    """A bound server (port 0: a free one); refuses a non-loopback host without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"web: --host {host} is not a loopback address: give --token-file FILE "
                          "(a token every request must carry)")
    if token:
        register_secret(token)
    app = WebApp(engine, token=token, database=database, late_after=late_after, bound_host=host)
    try:
        return WebServer((host.strip("[]"), port), app)
    except OSError as exc:
        raise LatigoError(f"web: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_web(config: Config, host: str, port: int, token_file: Path | None) -> int:
    """Serve until SIGTERM or Ctrl-C; 0 then."""
    from latigo.storage.schema import ensure_schema_current

    token = read_token(token_file) if token_file else None
    if not is_loopback(host) and not token:  # before touching the database
        raise ConfigError(f"web: --host {host} is not a loopback address: give --token-file FILE "
                          "(a token every request must carry)")
    engine = queries.read_only_engine(config.database)
    try:
        ensure_schema_current(engine)
        schedule = config.scheduler
        server = make_server(engine, host, port, token, database_location(config.database.url),
                             late_after=2 * schedule.interval + schedule.delay)
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        thread = threading.Thread(target=server.serve_forever, args=(0.5,), name="latigo-web", daemon=True)
        thread.start()
        print(f"latigo web: serving {server.url} (read-only{', token required' if token else ''}); "
              "Ctrl-C stops", flush=True)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            server.shutdown()
            server.server_close()
    finally:
        engine.dispose()
    return 0
