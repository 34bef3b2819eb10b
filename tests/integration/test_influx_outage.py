"""A real influxd stopped mid-drain for longer than the retry budget, then started again over its data.

The executor (default concurrency, 5 attempts, retries from 2 s: a budget of about 30 s) reads the sensors
from it and predicts through the Gordo provider (the fixture-replay server). While influxd is away the
sensor source's breaker opens: every window ends done once it is back, none failed, no task spends more
than the one attempt that showed the outage, and the queries made meanwhile are few (probes).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.executor import Executor
from latigo.lifecycle import TaskLifecycle
from latigo.models.gordo_projects import GordoProjects, GordoSettings
from latigo.peers import PEERS
from latigo.queues.database import DatabaseTaskQueue
from latigo.sensors.influx import InfluxSensors
from latigo.settings import ExecutorSettings
from latigo.storage.tables import TaskRecord
from latigo.types import Task, TimeRange
from tests.support.gordo_server import GordoServer, ModelSpec
from tests.support.influxd import InfluxServer, start_influxd, write_lines
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2026, 2, 3, tzinfo=timezone.utc)
TAGS = ["TAG-1", "TAG-2", "TAG-3", "TAG-4"]
MODELS = ["model-a", "model-b", "model-c"]
WINDOWS = [TimeRange(T0 + i * timedelta(minutes=30), T0 + (i + 1) * timedelta(minutes=30)) for i in range(16)]
OUTAGE = 45.0


@pytest.fixture
def influx() -> InfluxServer:
    server = start_influxd()
    yield server
    server.stop()


def fill(influx: InfluxServer) -> str:
    database = f"outage_{uuid.uuid4().hex[:8]}"
    stamps = range(int((T0 - timedelta(hours=1)).timestamp()), int((T0 + timedelta(hours=9)).timestamp()), 60)
    lines = [f"sensors,tag={tag} Value={(i % 97) / 97 + t:.4f} {stamp * 1000}"
             for stamp in stamps for t, tag in enumerate(TAGS) for i in [stamp // 60]]
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{influx.url}/query", data=f"q=CREATE DATABASE {database}"
                                                  .encode(), method="POST"), timeout=30).read()
    write_lines(influx.url, database, lines)
    return database


def test_influxd_away_past_the_retry_budget_mid_drain_fails_no_window(pg_engine, influx):
    database = fill(influx)
    settings = ExecutorSettings(poll_timeout=timedelta(seconds=0.2), shutdown_timeout=timedelta(seconds=10))
    lifecycle = TaskLifecycle(pg_engine)
    queue = DatabaseTaskQueue(pg_engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.1)),
                              lifecycle=lifecycle)
    with GordoServer(models=[ModelSpec(name) for name in MODELS]) as gordo:
        sensors = InfluxSensors(InfluxSensors.Settings(host=influx.host, port=influx.port, database=database,
                                                       measurement="sensors", tag_key="tag", value_field="Value"))
        models = GordoProjects(GordoSettings(base_url=gordo.url, project=gordo.project), sensors=sensors)
        executor = Executor(settings, queue, models, lifecycle, ["model-output"], name="outage-exec")
        tasks = [Task(model, window, gordo.project) for window in WINDOWS for model in MODELS]
        with lifecycle.transaction() as connection:
            queue.put_many(lifecycle.enqueue(connection, tasks).to_send, connection)
        gordo.latency = 0.2  # a drain that lasts long enough to be interrupted
        runner = threading.Thread(target=executor.run, kwargs={"exit_when_idle": 15.0}, daemon=True)
        runner.start()
        try:
            assert wait_for(lambda: executor.stats.done >= 6, timeout=120), "the first tasks were not done"
            influx.halt()
            queried_before = gordo_queries(gordo)
            time.sleep(OUTAGE)
            breaker = PEERS.breaker(f"influx {influx.host}:{influx.port}")
            refused_while_away = breaker.refused
            states = counts(pg_engine)
            assert breaker.is_open, "the sensor source's breaker did not open"
            assert states.get("failed", 0) == 0, states
            influx.resume()
            back = time.monotonic()
            assert wait_for(lambda: counts(pg_engine).get("done", 0) == len(tasks), timeout=300), counts(pg_engine)
            drained = time.monotonic() - back
        finally:
            executor.stop()
            runner.join(30)
        predicted_while_away = gordo_queries(gordo) - queried_before
    with pg_engine.connect() as connection:
        attempts = Counter(connection.execute(sa.select(TaskRecord.attempts)).scalars())
    print(f"influxd away {OUTAGE:.0f}s: {refused_while_away} sensor reads refused by the breaker (not sent), "
          f"{predicted_while_away} Gordo predictions meanwhile; drained {drained:.1f}s after it came back; "
          f"attempts {dict(attempts)}; stats {executor.stats}")
    assert counts(pg_engine) == {"done": len(tasks)}
    assert max(attempts) <= 1 and attempts[0] >= len(tasks) // 2, attempts
    assert executor.stats.waiting > 0 and refused_while_away > 0
    with pg_engine.connect() as connection:  # nothing left leased or queued, nothing looped
        assert connection.execute(sa.text("SELECT count(*) FROM task_queue")).scalar_one() == 0
        assert connection.execute(sa.text("SELECT max(runs) FROM tasks")).scalar_one() <= 2 + executor.stats.waiting
    assert not PEERS.breaker(f"influx {influx.host}:{influx.port}").is_open


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all())


def gordo_queries(gordo: GordoServer) -> int:
    return len(gordo.recorded("/prediction", method="POST"))
