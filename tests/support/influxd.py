"""A throwaway InfluxDB 1.x server (the Debian `influxd`) on free loopback ports.

Everything it stores lives in a temporary directory; it is stopped by its PID.
Used by the integration tests (as a session fixture) and by benchmarks/sensors.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

INFLUXD = os.environ.get("LATIGO_TEST_INFLUXD", "/usr/bin/influxd")


def free_port() -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def influxd_available() -> bool:
    return os.path.exists(INFLUXD) and os.access(INFLUXD, os.X_OK)


@dataclass
class InfluxServer:
    """A running influxd; `url` is its HTTP API."""

    host: str
    port: int
    directory: Path
    process: subprocess.Popen
    log_path: Path
    pid: int = field(init=False)

    def __post_init__(self) -> None:
        self.pid = self.process.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def halt(self, timeout: float = 15.0) -> None:
        """Stop the process (SIGTERM), keeping its data: `resume()` starts it again on the same ports."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout)

    def resume(self, timeout: float = 30.0) -> None:
        """Start influxd again over the same data and ports (after `halt()`) and wait until it answers."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [INFLUXD, "run", "-config", str(self.directory / "influxdb.conf"), "-pidfile",
                 str(self.directory / "influxd.pid")], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.process.pid
        error = _wait_ready(self, timeout)
        if error is not None:
            raise RuntimeError(f"influxd did not come back: {error}\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by PID, wait; SIGKILL only if it does not stop in time. Removes the data directory."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)


CONFIG_TEMPLATE = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{dir}/meta"

[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
  trace-logging-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false

[monitor]
  store-enabled = false

[logging]
  level = "warn"
"""


def start_influxd(startup_timeout: float = 30.0, attempts: int = 3) -> InfluxServer:
    """Start influxd and wait until /ping answers 204; a port race is retried with new ports."""
    last_error = ""
    for _ in range(attempts):
        server = _launch()
        error = _wait_ready(server, startup_timeout)
        if error is None:
            return server
        last_error = f"{error}\n{server.log_tail()}"
        server.stop()
    raise RuntimeError(f"influxd did not start: {last_error}")


def _launch() -> InfluxServer:
    directory = Path(tempfile.mkdtemp(prefix="latigo-influxd-"))
    http_port, rpc_port = free_port(), free_port()
    while rpc_port == http_port:
        rpc_port = free_port()
    config = directory / "influxdb.conf"
    config.write_text(CONFIG_TEMPLATE.format(dir=directory, http_port=http_port, rpc_port=rpc_port))
    log_path = directory / "influxd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [INFLUXD, "run", "-config", str(config), "-pidfile", str(directory / "influxd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return InfluxServer("127.0.0.1", http_port, directory, process, log_path)


def _wait_ready(server: InfluxServer, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"influxd exited with status {server.process.returncode}"
        try:
            with urllib.request.urlopen(f"{server.url}/ping", timeout=1) as response:
                if response.status == 204:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    return f"no 204 from {server.url}/ping within {timeout:.0f}s"


def serve_for_tests() -> Iterator[InfluxServer]:
    """Body of the session fixture: skip (or fail under CI) when influxd is not installed."""
    import pytest

    if not influxd_available():
        reason = f"{INFLUXD} is not installed (Debian package influxdb)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the InfluxDB tests")
        pytest.skip(reason)
    server = start_influxd()
    try:
        yield server
    finally:
        server.stop()


def write_lines(url: str, database: str, lines: list[str], batch: int = 10_000, precision: str = "ms") -> None:
    """POST pre-formatted line protocol in batches (independent of latigo's own writer)."""
    import requests

    with requests.Session() as session:
        for offset in range(0, len(lines), batch):
            body = "\n".join(lines[offset : offset + batch]).encode()
            response = session.post(f"{url}/write", params={"db": database, "precision": precision}, data=body)
            if response.status_code != 204:
                raise RuntimeError(f"write to {database} failed ({response.status_code}): {response.text[:300]}")


def influxql(url: str, query: str, database: str | None = None, method: str = "POST") -> dict:
    """Run one InfluxQL statement directly (test set-up and read-back); raises on any error."""
    import requests

    params = {"epoch": "ns"} | ({"db": database} if database else {})
    if method == "GET":
        response = requests.get(f"{url}/query", params=params | {"q": query}, timeout=30)
    else:
        response = requests.post(f"{url}/query", params=params, data={"q": query}, timeout=30)
    response.raise_for_status()
    result = response.json()["results"][0]
    if "error" in result:
        raise RuntimeError(f"{query!r}: {result['error']}")
    return result


class StatusServer:
    """An HTTP endpoint that answers every request with one status, as a failing proxy in front of
    InfluxDB does (502/503 pages); a context manager on a free loopback port."""

    def __init__(self, status: int, body: bytes = b'{"error":"unavailable"}') -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815 - the stdlib's names

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def __enter__(self) -> StatusServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
