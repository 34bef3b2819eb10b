"""Several REAL Gordo 6.0.4 servers, one per project, behind one base URL, as Gordo is deployed.

Gordo serves each project from a model server of its own; one ingress routes
`https://HOST/gordo/v0/<project>/...` to that project's server. Here:

- `IngressProxy`: a small threaded HTTP reverse proxy on a free loopback port playing the ingress. It
  routes `/gordo/v0/<project>/...` to the project's upstream base URL (a table changeable at run time:
  `set_upstream`, `remove_upstream`) and passes the method, the request target (path and query string),
  the headers (`revision` included, hop-by-hop ones excepted, as any proxy does) and both bodies
  byte-for-byte, streamed. What it answers itself, with an HTML body as ingress-nginx does:
  404 for a path outside `/gordo/v0/<project>/` or a project it has no route for;
  503 for a known project without an upstream (`set_upstream(project, None)`: ingress-nginx's answer
  for a service without endpoints, e.g. while its pods restart);
  502 when the upstream refuses the connection or breaks it before answering (a server that is down);
  504 when the upstream does not answer within the proxy's timeout.
  A real Gordo server answers any project name in its URLs (`PROJECT` only labels its metrics), so the
  proxy is what keeps one project's models from another's, as the ingress does.
- Models: `PROJECT_MODELS` gives projects `plant-a` and `plant-b` a model of the same name, `pump-1`,
  built differently (so metadata and predictions differ); `build_project(project)` builds one at
  `REVISION`, `build_project(project, NEXT_REVISION)` builds its second revision (plant-a's pump-1 changed)
  in a collection of its own: a server restarted over it reports the new revision and answers
  `?revision=<REVISION>` with 410.
- `GordoIngress`: the servers (started with `acquire_server`, so shared with other fixtures of the same
  models and project) and the proxy; `restart_project(project, collection)` replaces a project's server.
- `gordo_ingress_fixture`: the session fixture `gordo_ingress`. Use in a test module:
  `from tests.support.gordo_ingress import gordo_ingress_fixture  # noqa: F401`, then ask for `gordo_ingress`.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.gordo_real import (
    PCA_PIPELINE,
    REVISION,
    TAGS,
    GordoRealServer,
    ModelSpec,
    _anomaly,
    acquire_server,
    build_models,
    release_server,
    require_gordo_real,
)

# --------------------------------------------------------------------------- the proxy

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
"""Headers about one connection (RFC 9110 7.6.1): a proxy does not forward them, in either direction."""
ROUTE = re.compile(r"^/gordo/v0/(?P<project>[^/?#]+)(?:[/?#]|$)")
CHUNK = 64 * 1024


def _html(status: int, reason: str) -> bytes:
    """The page ingress-nginx answers with when it has nothing to forward to."""
    return (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            ).encode()


class _ProxyHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    proxy: IngressProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is not news
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every exchange is in IngressProxy.exchanges instead of on stderr

    def do_GET(self) -> None:
        self._forward()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # -- the request

    def _forward(self) -> None:
        proxy = self.server.proxy
        match = ROUTE.match(self.path)
        project = urllib.parse.unquote(match["project"]) if match else None
        known, upstream = proxy._route(project) if project is not None else (False, None)
        if not known:
            self._drain_request_body()
            return self._answer(404, "Not Found", project, None)
        if upstream is None:
            self._drain_request_body()
            return self._answer(503, "Service Temporarily Unavailable", project, None)
        target = urllib.parse.urlsplit(upstream)
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80,
                                                timeout=proxy.timeout)
        try:
            try:
                self._send_request(connection, target.path.rstrip("/") + self.path)
                response = connection.getresponse()
            except TimeoutError:
                return self._answer(504, "Gateway Time-out", project, upstream)
            except (ConnectionError, http.client.HTTPException, OSError):
                return self._answer(502, "Bad Gateway", project, upstream)
            self._relay(response, project, upstream)
        finally:
            connection.close()

    def _connection_tokens(self, headers: Any) -> set[str]:
        tokens = set(HOP_BY_HOP)
        for value in headers.get_all("Connection") or ():
            tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
        return tokens

    def _send_request(self, connection: http.client.HTTPConnection, path: str) -> None:
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        skip = self._connection_tokens(self.headers) | {"expect"}  # 100-continue was answered here already
        connection.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in skip:
                connection.putheader(name, value)
        client = self.client_address[0]
        forwarded_for = self.headers.get("X-Forwarded-For")
        connection.putheader("X-Forwarded-For", f"{forwarded_for}, {client}" if forwarded_for else client)
        connection.putheader("X-Forwarded-Proto", "http")
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        if chunked:
            for piece in self._chunked_body():
                connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            connection.send(b"0\r\n\r\n")
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                piece = self.rfile.read(min(CHUNK, remaining))
                if not piece:
                    raise ConnectionError("the client closed the connection inside its request body")
                connection.send(piece)
                remaining -= len(piece)

    def _chunked_body(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers, dropped
                    pass
                return
            yield self.rfile.read(size)
            self.rfile.readline(1024)  # the CRLF after the chunk

    def _drain_request_body(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            for _ in self._chunked_body():
                pass
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                piece = self.rfile.read(min(CHUNK, remaining))
                if not piece:
                    break
                remaining -= len(piece)

    # -- the answer

    def _answer(self, status: int, reason: str, project: str | None, upstream: str | None) -> None:
        body = _html(status, reason)
        # Recorded before the answer goes out: a client that has its answer finds the exchange recorded.
        self.server.proxy._record(self.command, self.path, project, upstream, status)
        self.send_response(status, reason)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _relay(self, response: http.client.HTTPResponse, project: str | None, upstream: str) -> None:
        self.server.proxy._record(self.command, self.path, project, upstream, response.status)  # as _answer
        self.send_response_only(response.status, response.reason)
        skip = self._connection_tokens(response.msg)
        for name, value in response.getheaders():
            if name.lower() not in skip:
                self.send_header(name, value)
        bodiless = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        chunked = not bodiless and response.getheader("Content-Length") is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if not bodiless:
            while True:
                piece = response.read1(CHUNK)
                if not piece:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@dataclass(frozen=True)
class Exchange:
    """One request the proxy handled: what was asked, where it went (None: answered by the proxy)."""

    method: str
    path: str
    project: str | None
    upstream: str | None
    status: int


class IngressProxy:
    """A path-routing reverse proxy on `127.0.0.1:<free port>`: `/gordo/v0/<project>/...` goes to
    `upstreams[project] + /gordo/v0/<project>/...`. Start with start() or as a context manager."""

    def __init__(self, upstreams: Mapping[str, str | None] | None = None, host: str = "127.0.0.1",
                 timeout: float = 300.0) -> None:
        self.host = host
        self.timeout = timeout
        self._lock = threading.Lock()
        self._upstreams: dict[str, str | None] = dict(upstreams or {})
        self.exchanges: list[Exchange] = []
        self._httpd: _ProxyHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the routing table

    @property
    def upstreams(self) -> dict[str, str | None]:
        with self._lock:
            return dict(self._upstreams)

    def set_upstream(self, project: str, base_url: str | None) -> None:
        """Route `project` to `base_url` (`http://host:port`, maybe with a path prefix); None keeps the
        project known but without a server (503), as an ingress for a service without endpoints."""
        with self._lock:
            self._upstreams[project] = base_url.rstrip("/") if base_url else None

    def remove_upstream(self, project: str) -> None:
        """Forget `project`: it then answers 404."""
        with self._lock:
            self._upstreams.pop(project, None)

    def _route(self, project: str) -> tuple[bool, str | None]:
        with self._lock:
            return project in self._upstreams, self._upstreams.get(project)

    def _record(self, method: str, path: str, project: str | None, upstream: str | None, status: int) -> None:
        with self._lock:
            self.exchanges.append(Exchange(method, path, project, upstream, status))
            del self.exchanges[:-1000]

    # -- the lifecycle

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the proxy is not started")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def project_url(self, project: str) -> str:
        return f"{self.base_url}/gordo/v0/{project}"

    def start(self) -> IngressProxy:
        httpd = _ProxyHTTPServer((self.host, 0), _Handler)  # port 0: the kernel's choice, no race
        httpd.proxy = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="gordo-ingress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> IngressProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- the projects' models

PLANT_A = "plant-a"
PLANT_B = "plant-b"
NEXT_REVISION = "1700000100000"
"""The second revision's collection directory: all digits and larger than REVISION (1700000000000)."""

PLANT_B_PIPELINE = _anomaly({"sklearn.pipeline.Pipeline": {"steps": [
    "sklearn.preprocessing.StandardScaler",
    {"sklearn.decomposition.PCA": {"n_components": 1}},
    {"sklearn.multioutput.MultiOutputRegressor": {"estimator": "sklearn.linear_model.LinearRegression"}},
]}})

PLANT_A_PUMP = ModelSpec("pump-1", PCA_PIPELINE)
"""plant-a's pump-1: MinMaxScaler, PCA(2), linear regression, trained on 2026-01-01..03."""
PLANT_B_PUMP = ModelSpec("pump-1", PLANT_B_PIPELINE, train_start="2026-01-05T00:00:00+00:00",
                         train_end="2026-01-07T00:00:00+00:00")
"""plant-b's pump-1: StandardScaler, PCA(1), linear regression, trained on 2026-01-05..07."""
PLANT_B_PUMP_2 = ModelSpec("pump-2", PCA_PIPELINE, tags=TAGS[:3])
"""plant-b only: the PCA pipeline on tag-1..tag-3."""
PLANT_A_NEXT_PIPELINE = _anomaly({"sklearn.pipeline.Pipeline": {"steps": [
    "sklearn.preprocessing.MinMaxScaler",
    {"sklearn.decomposition.PCA": {"n_components": 3}},
    {"sklearn.multioutput.MultiOutputRegressor": {"estimator": "sklearn.linear_model.LinearRegression"}},
]}})
PLANT_A_PUMP_NEXT = ModelSpec("pump-1", PLANT_A_NEXT_PIPELINE, train_start="2026-01-03T00:00:00+00:00",
                              train_end="2026-01-05T00:00:00+00:00")
"""plant-a's pump-1 at NEXT_REVISION: PCA(3) instead of PCA(2), trained on 2026-01-03..05.
(Other dates alone would not change the model: RandomDataProvider seeds numpy with 0, so the
training data would be the same values at shifted times.)"""

PROJECT_MODELS: dict[str, tuple[ModelSpec, ...]] = {
    PLANT_A: (PLANT_A_PUMP,),
    PLANT_B: (PLANT_B_PUMP, PLANT_B_PUMP_2),
}
"""Each project's models at REVISION."""
NEXT_REVISION_MODELS: dict[str, tuple[ModelSpec, ...]] = {
    PLANT_A: (PLANT_A_PUMP_NEXT,),
    PLANT_B: (PLANT_B_PUMP, PLANT_B_PUMP_2),
}
"""Each project's models at NEXT_REVISION (plant-b's are unchanged, only its revision moves)."""


def build_project(project: str, revision: str = REVISION) -> Path:
    """The collection directory of `project`'s models (PROJECT_MODELS at REVISION, NEXT_REVISION_MODELS
    at NEXT_REVISION), built once and cached like every `build_models` collection."""
    models = {REVISION: PROJECT_MODELS, NEXT_REVISION: NEXT_REVISION_MODELS}.get(revision)
    if models is None or project not in models:
        raise ValueError(f"no models for project {project!r} at revision {revision!r}")
    return build_models(models[project], project, revision=revision)


# --------------------------------------------------------------------------- servers behind the proxy


@dataclass(frozen=True)
class IngressProject:
    """One project as gordo-client sees it through the ingress (`Client(project, host, port,
    scheme="http")`): an `OracleTarget` for `gordo_client_predict`."""

    ingress: GordoIngress
    project: str

    @property
    def host(self) -> str:
        return self.ingress.proxy.host

    @property
    def port(self) -> int:
        return self.ingress.proxy.port

    def log_tail(self, lines: int = 40) -> str:
        return self.ingress.servers[self.project].log_tail(lines)


class GordoIngress:
    """One real Gordo server per project (`acquire_server(models, project)`) behind an IngressProxy."""

    def __init__(self, project_models: Mapping[str, Sequence[ModelSpec]] | None = None) -> None:
        self.project_models = {project: tuple(models) for project, models in (project_models or PROJECT_MODELS).items()}
        self.proxy = IngressProxy()
        self.servers: dict[str, GordoRealServer] = {}
        self.startup_seconds: dict[str, float] = {}
        """How long each project's build (or cache look-up) and server start took, in seconds."""
        self._lock = threading.Lock()

    @property
    def projects(self) -> tuple[str, ...]:
        return tuple(self.project_models)

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`: the ingress's base; `/gordo/v0/<project>/...` under it."""
        return self.proxy.base_url

    def project_url(self, project: str) -> str:
        return self.proxy.project_url(project)

    def model_url(self, project: str, model: str, path: str = "") -> str:
        return f"{self.project_url(project)}/{model}" + (f"/{path.lstrip('/')}" if path else "")

    def client_target(self, project: str) -> IngressProject:
        """What to give `gordo_client_predict` to reach `project` through the ingress."""
        if project not in self.servers:
            raise KeyError(project)
        return IngressProject(self, project)

    def revision(self, project: str) -> str:
        return self.servers[project].revision

    def start(self) -> GordoIngress:
        self.proxy.start()
        try:
            # One after the other: each server imports TensorFlow, and the machine has 2 cores.
            for project, models in self.project_models.items():
                started = time.monotonic()
                server = acquire_server(models, project)
                self.servers[project] = server
                self.proxy.set_upstream(project, server.base_url)
                self.startup_seconds[project] = round(time.monotonic() - started, 1)
        except BaseException:
            self.stop()
            raise
        return self

    def restart_project(self, project: str, collection: Path) -> GordoRealServer:
        """Serve `project` from a new server over `collection` (e.g. `build_project(project, NEXT_REVISION)`)
        on a new port, as a rolling update does: the new server is started and ready first, then the route
        moves to it, then the old server is released (stopped unless another fixture shares it).
        Requests in flight on the old server finish there; every later one reaches the new server."""
        with self._lock:
            old = self.servers[project]
            new = GordoRealServer(collection, project).start()
            self.servers[project] = new
            self.proxy.set_upstream(project, new.base_url)
            release_server(old)
            return new

    def stop(self) -> None:
        self.proxy.stop()
        servers, self.servers = self.servers, {}
        for server in servers.values():
            with contextlib.suppress(Exception):
                release_server(server)

    def __enter__(self) -> GordoIngress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session", name="gordo_ingress")
def gordo_ingress_fixture() -> Iterator[GordoIngress]:
    """Real Gordo 6.0.4 servers for `plant-a` (pump-1) and `plant-b` (pump-1, pump-2), each on its own
    port with 1 worker, behind one IngressProxy; `gordo_ingress.base_url` is the ingress. A test that
    calls `restart_project` changes the session's state: it restarts the project over its original
    collection (`build_project(project)`) before it ends."""
    require_gordo_real()
    with GordoIngress() as ingress:
        yield ingress

