"""Prometheus metrics and the /healthz, /readyz, /metrics endpoints of every latigo process.

Liveness and readiness answer different questions, so they are separate: /healthz says
"this process's loops are still turning" (restart it when they are not); /readyz says
"it can do useful work now" (the database answers) and only takes it out of rotation.
Metrics live in one module-level registry, not prometheus_client's global default, so a
process exposes exactly latigo's series and tests can read them without interference.

`python -m latigo.observability` is the container health check: it asks /healthz of every
program supervisord runs in the container (see supervisord.conf for the port layout).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from latigo.settings import MetricsSettings

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
DEFAULT_METRICS_PORT = 9100
"""The same as MetricsSettings.port: the scheduler's port under supervisord, executors follow it."""
READY_CHECK_TIMEOUT = 3.0

# ---------------------------------------------------------------- metrics

REGISTRY = CollectorRegistry(auto_describe=True)

TASKS_SCHEDULED = Counter("latigo_tasks_scheduled", "Tasks enqueued by the scheduler.", registry=REGISTRY)
TASKS_DONE = Counter("latigo_tasks_done", "Tasks whose predictions were committed.", registry=REGISTRY)
TASKS_FAILED = Counter(
    "latigo_tasks_failed",
    "Tasks given up on, by reason (transient, permanent, unknown_model, no_data, dead_letter).",
    ["reason"],
    registry=REGISTRY,
)
TASK_DURATION = Histogram(
    "latigo_task_duration_seconds",
    "Wall time of one task, from claim to commit.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300),
    registry=REGISTRY,
)
PROVIDER_LATENCY = Histogram(
    "latigo_provider_latency_seconds",
    "Latency of calls to external systems, by provider and call.",
    ["provider", "call"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
PEER_UP = Gauge("latigo_peer_up", "1 while this process reaches the peer, 0 while its circuit breaker is open "
                "(latigo.peers)", ["peer"], registry=REGISTRY)
PEER_OUTAGE = Counter("latigo_peer_outage_seconds", "Seconds this process saw the peer down (its breaker open)",
                      ["peer"], registry=REGISTRY)
QUEUE_BACKLOG = Gauge("latigo_queue_backlog", "Tasks waiting in the task queue.", registry=REGISTRY)
CHECKPOINT_LAG = Gauge(
    "latigo_checkpoint_lag",
    "Events received on a partition but not yet checkpointed.",
    ["partition"],
    registry=REGISTRY,
)
QUEUE_LAG = Gauge(
    "latigo_queue_lag",
    "Kafka: messages in a partition this executor owns past its consumer group's committed offset.",
    ["partition"],
    registry=REGISTRY,
)
LAST_SCHEDULE_TIME = Gauge(
    "latigo_last_schedule_time_seconds", "When the scheduler last finished a cycle (Unix time).", registry=None
)
SCHEDULE_INTERVAL = Gauge("latigo_schedule_interval_seconds", "The scheduler's interval (scheduler.interval).",
                          registry=None)
"""Registered by the scheduler process only (`scheduler_metrics`): an executor exporting 0 would look like a
scheduler that never ran to an alert on max() or absent()."""


def scheduler_metrics(interval_seconds: float | None = None) -> None:
    """Export the scheduler's own series from this process."""
    for gauge in (LAST_SCHEDULE_TIME, SCHEDULE_INTERVAL):
        try:
            REGISTRY.register(gauge)
        except ValueError:
            pass  # registered already
    if interval_seconds is not None:
        SCHEDULE_INTERVAL.set(interval_seconds)
DATABASE_READY = Gauge("latigo_database_ready", "1 while this process's database work succeeds, 0 during a run "
                       "of database faults (tasks are being released meanwhile).", registry=REGISTRY)
DATABASE_FAULTS = Counter("latigo_database_faults", "Database faults seen (lost connection, lock timeout, server "
                          "restarting); the work that hit them was released and redone.", registry=REGISTRY)
QUEUE_OLDEST_AGE = Gauge("latigo_queue_oldest_age_seconds", "Age of the oldest task in the queue (database queue).",
                         registry=REGISTRY)
TASKS_RETRIED = Counter("latigo_tasks_retried", "Tasks handed back for a retry after a transient failure.",
                        registry=REGISTRY)
SINK_FAILURES = Counter("latigo_sink_failures", "Prediction sink writes that failed for good.", ["sink"],
                        registry=REGISTRY)
PREDICTION_ROWS = Counter("latigo_prediction_rows", "Prediction rows written to the database.", registry=REGISTRY)
METADATA_POSTS = Counter("latigo_prediction_metadata_posts", "Models (one per revision and set of series) the "
                         "Metadata API was told about.", registry=REGISTRY)
METADATA_FAILURES = Counter("latigo_prediction_metadata_failures", "Attempts to tell the Metadata API about a "
                            "model's series that failed (retried later; predictions are not held).",
                            registry=REGISTRY)


def metrics_text() -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(REGISTRY)


# ---------------------------------------------------------------- health


class Health:
    """Heartbeats of a process's loops and the check that says whether it can work.

    A loop that stops beating (stuck on a lock, a hung socket) makes /healthz fail so the
    orchestrator restarts the process; a loop is watched from its first beat on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, float] = {}
        self._lock = threading.Lock()
        self._ready_check: Callable[[], list[str]] = lambda: []

    def beat(self, loop: str) -> None:
        """Record that `loop` ticked now."""
        now = self._clock()
        with self._lock:
            self._beats[loop] = now

    def set_ready_check(self, fn: Callable[[], list[str]]) -> None:
        """`fn` returns the problems that keep the process from working; an empty list means ready."""
        self._ready_check = fn

    def silent_loops(self, max_silence: float) -> dict[str, float]:
        """Loops whose last beat is older than `max_silence` seconds, with their silence."""
        now = self._clock()
        with self._lock:
            beats = dict(self._beats)
        return {loop: now - at for loop, at in beats.items() if now - at > max_silence}

    def alive(self, max_silence: float) -> bool:
        return not self.silent_loops(max_silence)

    def problems(self) -> list[str]:
        """What the ready check reports; a check that raises is itself a problem."""
        try:
            return list(self._ready_check())
        except Exception as exc:  # the endpoint must answer whatever the check does
            return [f"ready check failed: {type(exc).__name__}"]


def database_ready_check(engine: Engine, timeout: float = READY_CHECK_TIMEOUT) -> Callable[[], list[str]]:
    """A ready check that runs `SELECT 1`, giving up after `timeout` seconds.

    The query runs in a helper thread so a database that hangs (half-open connection,
    a firewall dropping packets) cannot hang the probe; while one attempt is still
    stuck, later probes report it instead of piling up more threads."""
    state: dict[str, threading.Thread | None] = {"pending": None}
    lock = threading.Lock()

    def check() -> list[str]:
        with lock:
            pending = state["pending"]
            if pending is not None and pending.is_alive():
                return [f"database unreachable: no answer within {timeout:g}s"]
            result: list[str] = []
            worker = threading.Thread(target=_select_one, args=(engine, result), name="readyz-db", daemon=True)
            state["pending"] = worker
            worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return [f"database unreachable: no answer within {timeout:g}s"]
        return result

    return check


def _select_one(engine: Engine, problems: list[str]) -> None:
    from sqlalchemy import text

    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"; the class name says which kind
        problems.append(f"database unreachable: {type(exc).__name__}")


# ---------------------------------------------------------------- HTTP server


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        path = self.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            silent = self.server.health.silent_loops(self.server.max_silence)
            if silent:
                body = "".join(
                    f"loop {loop!r} silent for {age:.0f}s (limit {self.server.max_silence:g}s)\n"
                    for loop, age in sorted(silent.items())
                )
                self._send(503, body)
            else:
                self._send(200, "ok\n")
        elif path == READY_PATH:
            problems = self.server.health.problems()
            if problems:
                self._send(503, "".join(f"{problem}\n" for problem in problems))
            else:
                self._send(200, "ready\n")
        elif path == METRICS_PATH:
            self._send(200, metrics_text(), CONTENT_TYPE_LATEST)
        else:
            self._send(404, f"not found; try {HEALTH_PATH}, {READY_PATH} or {METRICS_PATH}\n")

    def _send(self, status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the http.server signature
        log.debug("metrics endpoint: " + format, *args)


class MetricsServer(ThreadingHTTPServer):
    """The endpoints' server; `port` is the port actually bound (settings may ask for 0)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], health: Health, max_silence: float) -> None:
        super().__init__(address, _Handler)
        self.health = health
        self.max_silence = max_silence
        self.port: int = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join()
        self.server_close()


def start_http_server(settings: MetricsSettings, health: Health, max_silence: float) -> MetricsServer | None:
    """Serve /healthz, /readyz and /metrics in a daemon thread; None when metrics are disabled."""
    if not settings.enabled:
        return None
    try:
        server = MetricsServer((settings.host, settings.port), health, max_silence).start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or settings.port == 0:
            raise
        # Another process on this host has the port (two executors started by hand): keep running, on a
        # free port, and say which; under supervisord each process gets its own port (METRICS_BASE_PORT + N).
        server = MetricsServer((settings.host, 0), health, max_silence).start()
        log.warning("metrics port %d is in use by another process; serving %s %s %s on port %d instead (set "
                    "metrics.port to choose)", settings.port, HEALTH_PATH, READY_PATH, METRICS_PATH, server.port)
        return server
    log.info("serving %s %s %s on %s:%d", HEALTH_PATH, READY_PATH, METRICS_PATH, settings.host, server.port)
    return server


# ---------------------------------------------------------------- container health check


def supervised_ports(env: Mapping[str, str]) -> list[int]:
    """The metrics ports of the programs supervisord.conf starts for LATIGO_ROLE:
    the scheduler on the base port, executor N on base + N."""
    base = int(env.get("LATIGO_METRICS_BASE_PORT") or DEFAULT_METRICS_PORT)
    role = env.get("LATIGO_ROLE") or "all"
    executors = int(env.get("LATIGO_EXECUTORS") or 2)
    ports = [base] if role in ("all", "scheduler") else []
    if role in ("all", "executor"):
        ports += [base + n for n in range(1, executors + 1)]
    return ports


def check_health(ports: list[int], host: str = "127.0.0.1", timeout: float = 5.0) -> list[str]:
    """Ask /healthz on every port; returns what is wrong (empty when all are healthy)."""
    problems = []
    for port in ports:
        url = f"http://{host}:{port}{HEALTH_PATH}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            problems.append(f"port {port}: {exc.code} {exc.read().decode(errors='replace').strip()}")
        except (OSError, ValueError) as exc:
            problems.append(f"port {port}: {getattr(exc, 'reason', exc)}")
    return problems


def main(env: Mapping[str, str] | None = None) -> int:
    """Exit 0 when every supervised program answers /healthz with 200, else 1 naming the failures."""
    problems = check_health(supervised_ports(os.environ if env is None else env))
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
