"""The /healthz, /readyz and /metrics endpoints, served for real on a loopback port."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa

from latigo import observability as obs
from latigo.settings import MetricsSettings


class FakeClock:
    """A clock the test moves by hand, so "silent for 60 s" needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def closed_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> obs.Health:
    return obs.Health(clock=clock)


@pytest.fixture
def server(health: obs.Health):
    srv = obs.start_http_server(MetricsSettings(host="127.0.0.1", port=0), health, max_silence=60)
    yield srv
    srv.close()


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def test_port_zero_binds_a_real_port_and_close_releases_it(health):
    srv = obs.start_http_server(MetricsSettings(host="127.0.0.1", port=0), health, max_silence=60)
    port = srv.port
    assert port > 0
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    srv.close()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_disabled_metrics_start_no_server(health):
    assert obs.start_http_server(MetricsSettings(enabled=False), health, max_silence=60) is None


def test_healthz_is_ok_while_loops_beat_and_503_naming_the_silent_one(server, health, clock):
    assert get(url(server, "/healthz")) == (200, "ok\n")  # nothing registered yet: alive
    health.beat("scheduler")
    health.beat("heartbeat")
    clock.now += 30
    health.beat("heartbeat")
    assert get(url(server, "/healthz"))[0] == 200
    clock.now += 45  # scheduler silent 75 s > 60 s; heartbeat 45 s
    status, body = get(url(server, "/healthz"))
    assert status == 503
    assert "'scheduler'" in body and "75s" in body
    assert "heartbeat" not in body
    assert not health.alive(60) and health.alive(100)
    health.beat("scheduler")
    assert get(url(server, "/healthz"))[0] == 200


def test_readyz_follows_the_ready_check(server, health):
    assert get(url(server, "/readyz"))[0] == 200  # no check set: ready
    problems: list[str] = ["queue not connected"]
    health.set_ready_check(lambda: list(problems))
    assert get(url(server, "/readyz")) == (503, "queue not connected\n")
    problems.clear()
    assert get(url(server, "/readyz"))[0] == 200


def test_a_ready_check_that_raises_reports_not_ready(server, health):
    def broken() -> list[str]:
        raise RuntimeError("boom")

    health.set_ready_check(broken)
    assert get(url(server, "/readyz")) == (503, "ready check failed: RuntimeError\n")


def test_unknown_path_is_404(server):
    assert get(url(server, "/nope"))[0] == 404


@pytest.mark.integration
def test_readyz_is_ready_when_the_database_answers(server, health, engine):
    health.set_ready_check(obs.database_ready_check(engine))
    assert get(url(server, "/readyz")) == (200, "ready\n")


@pytest.mark.integration
def test_readyz_is_down_while_the_database_is_down(server, health, tmp_path):
    down_url = f"postgresql://postgres@127.0.0.1:{closed_port()}/latigo"
    down = sa.create_engine(down_url, connect_args={"connect_timeout": 2})
    health.set_ready_check(obs.database_ready_check(down))
    status, body = get(url(server, "/readyz"))
    assert status == 503
    assert body == "database unreachable: OperationalError\n"
    down.dispose()

    up = sa.create_engine(f"sqlite:///{tmp_path / 'ready.db'}")
    health.set_ready_check(obs.database_ready_check(up))
    assert get(url(server, "/readyz")) == (200, "ready\n")
    up.dispose()


@pytest.mark.integration
def test_readyz_gives_up_on_a_database_that_never_answers(server, health):
    # A listener that accepts and then says nothing: the PostgreSQL driver waits for the handshake.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    engine = sa.create_engine(f"postgresql://postgres@127.0.0.1:{port}/latigo", connect_args={"connect_timeout": 30})
    health.set_ready_check(obs.database_ready_check(engine, timeout=0.5))
    try:
        status, body = get(url(server, "/readyz"))
        assert status == 503
        assert body == "database unreachable: no answer within 0.5s\n"
        # The stuck attempt is not duplicated: the next probe reports it at once.
        assert get(url(server, "/readyz")) == (503, body)
    finally:
        silent.close()
        engine.dispose()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text output (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if metric == name and found == wanted:
            return float(value)
    return 0.0


@pytest.mark.integration
def test_metrics_count_what_a_real_executor_does(server, engine):
    """The executor's own work moves the counters: done, failed by reason, rows, duration, backlog."""
    from datetime import datetime, timedelta, timezone

    from latigo.executor import Executor
    from latigo.lifecycle import TaskLifecycle
    from latigo.queues.database import DatabaseTaskQueue
    from latigo.settings import ExecutorSettings
    from latigo.types import Task, TimeRange
    from tests.support.providers import StaticModels, expected_rows

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    window = TimeRange(start, start + timedelta(minutes=30))
    lifecycle = TaskLifecycle(engine)
    queue = DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.05)),
                              lifecycle=lifecycle)
    tasks = [Task("m", window), Task("broken-m", window)]
    with lifecycle.transaction() as connection:
        queue.put_many(lifecycle.enqueue(connection, tasks).to_send, connection)
    _, before = get(url(server, "/metrics"))
    executor = Executor(ExecutorSettings(concurrency=2, poll_timeout=timedelta(seconds=0.1)), queue,
                        StaticModels(["m", "broken-m"]), lifecycle, ["model-output", "total-anomaly-scaled"])
    obs.QUEUE_BACKLOG.set(-1)  # no value an earlier test left: what is read below is this executor's report
    executor._report_backlog()  # what the renewer thread does every 5 s: the tasks enqueued, none done yet
    _, waiting = get(url(server, "/metrics"))
    executor.run(exit_when_idle=0.3)
    obs.QUEUE_BACKLOG.set(-1)
    executor._report_backlog()
    _, after = get(url(server, "/metrics"))

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert sample(waiting, "latigo_queue_backlog") == len(tasks) and sample(after, "latigo_queue_backlog") == 0
    assert delta("latigo_tasks_done_total") == 1
    assert delta("latigo_tasks_failed_total", reason="permanent") == 1
    assert delta("latigo_prediction_rows_total") == expected_rows(window.start, window.end)
    assert delta("latigo_task_duration_seconds_count") == 1
    assert delta("latigo_provider_latency_seconds_count", provider="StaticModels", call="execute_model") == 2
    assert sample(after, "latigo_database_ready") == 1


def test_the_scheduler_alone_exports_when_it_last_scheduled(server):
    obs.scheduler_metrics(1800.0)
    obs.LAST_SCHEDULE_TIME.set(1_700_000_000)
    _, text = get(url(server, "/metrics"))
    assert sample(text, "latigo_last_schedule_time_seconds") == 1_700_000_000
    assert sample(text, "latigo_schedule_interval_seconds") == 1800


def test_metrics_hold_only_latigo_series():
    names = {metric.name for metric in obs.REGISTRY.collect()}
    assert names and all(name.startswith("latigo_") for name in names)


def test_task_duration_buckets_reach_five_minutes():
    text = obs.metrics_text().decode()
    assert 'latigo_task_duration_seconds_bucket{le="300.0"}' in text


class _HealthServer:
    """A stand-in program answering /healthz with a fixed status, to drive the container check."""

    def __init__(self, status: int) -> None:
        code = status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"loop 'executor' silent")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_supervised_ports_follow_role_and_executor_count():
    env = {"LATIGO_METRICS_BASE_PORT": "9200", "LATIGO_EXECUTORS": "3"}
    assert obs.supervised_ports({**env, "LATIGO_ROLE": "all"}) == [9200, 9201, 9202, 9203]
    assert obs.supervised_ports({**env, "LATIGO_ROLE": "scheduler"}) == [9200]
    assert obs.supervised_ports({**env, "LATIGO_ROLE": "executor"}) == [9201, 9202, 9203]
    assert obs.supervised_ports({}) == [obs.DEFAULT_METRICS_PORT + n for n in range(3)]
    assert MetricsSettings().port == obs.DEFAULT_METRICS_PORT


def test_container_health_check_fails_when_any_program_is_unhealthy_or_missing():
    good = _HealthServer(200)
    bad = _HealthServer(503)
    try:
        assert obs.check_health([good.port]) == []
        problems = obs.check_health([good.port, bad.port, closed_port()])
        assert len(problems) == 2
        assert problems[0].startswith(f"port {bad.port}: 503")
        assert "Connection refused" in problems[1]
        assert obs.main({"LATIGO_ROLE": "scheduler", "LATIGO_METRICS_BASE_PORT": str(good.port)}) == 0
        assert obs.main({"LATIGO_ROLE": "scheduler", "LATIGO_METRICS_BASE_PORT": str(bad.port)}) == 1
    finally:
        good.close()
        bad.close()
