"""The Time Series API answering 503 to every read for longer than the retry budget (a maintenance
window), mid-drain: its breaker opens, the tasks that need it wait without spending attempts, and every
window is done once it answers again."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.executor import Executor
from latigo.lifecycle import TaskLifecycle
from latigo.models.gordo_projects import GordoProjects, GordoSettings
from latigo.peers import PEERS
from latigo.queues.database import DatabaseTaskQueue
from latigo.sensors.data_api import DataApiSensors
from latigo.settings import ExecutorSettings
from latigo.storage.tables import TaskRecord
from latigo.types import Task, TimeRange
from tests.support.data_api_server import DataApiServer, Series, rfc3339
from tests.support.gordo_server import GordoServer, ModelSpec
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2026, 2, 5, tzinfo=timezone.utc)
TAGS = ["TAG-1", "TAG-2", "TAG-3", "TAG-4"]
MODELS = ["model-a", "model-b"]
WINDOWS = [TimeRange(T0 + i * timedelta(minutes=30), T0 + (i + 1) * timedelta(minutes=30)) for i in range(12)]
MAINTENANCE = 35.0
FACILITY = "JSV"


def series(tag: str, level: float) -> Series:
    start = T0 - timedelta(hours=1)
    points = [{"time": rfc3339(start + timedelta(minutes=m)), "value": level + (m % 13) / 13, "status": 192}
              for m in range(8 * 60)]
    return Series(name=tag, facility=FACILITY, points=points)


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all())


def test_a_maintenance_window_of_503s_fails_no_window(pg_engine):
    settings = ExecutorSettings(poll_timeout=timedelta(seconds=0.2), shutdown_timeout=timedelta(seconds=10))
    lifecycle = TaskLifecycle(pg_engine)
    queue = DatabaseTaskQueue(pg_engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.1)),
                              lifecycle=lifecycle)
    with DataApiServer([series(tag, i) for i, tag in enumerate(TAGS)]) as api, \
            GordoServer(models=[ModelSpec(name) for name in MODELS]) as gordo:
        sensors = DataApiSensors(DataApiSensors.Settings(base_url=api.url, facility=FACILITY))
        models = GordoProjects(GordoSettings(base_url=gordo.url, project=gordo.project), sensors=sensors)
        executor = Executor(settings, queue, models, lifecycle, ["model-output"], name="maintenance-exec")
        tasks = [Task(model, window, gordo.project) for window in WINDOWS for model in MODELS]
        with lifecycle.transaction() as connection:
            queue.put_many(lifecycle.enqueue(connection, tasks).to_send, connection)
        gordo.latency = 0.2
        runner = threading.Thread(target=executor.run, kwargs={"exit_when_idle": 15.0}, daemon=True)
        runner.start()
        try:
            assert wait_for(lambda: executor.stats.done >= 4, timeout=120), "the first tasks were not done"
            api.inject("POST", "/query/data", 503, times=1_000_000)
            began = time.monotonic()
            reads_before = len(api.calls("POST", "/query/data"))
            time.sleep(MAINTENANCE)
            reads = len(api.calls("POST", "/query/data")) - reads_before
            breaker = PEERS.breaker(f"data api {api.url.split('/')[2]}")
            assert breaker.is_open and counts(pg_engine).get("failed", 0) == 0
            with api._lock:
                api.faults.clear()  # the maintenance is over
            assert wait_for(lambda: counts(pg_engine).get("done", 0) == len(tasks), timeout=300), counts(pg_engine)
            drained = time.monotonic() - began - MAINTENANCE
        finally:
            executor.stop()
            runner.join(30)
    with pg_engine.connect() as connection:
        attempts = Counter(connection.execute(sa.select(TaskRecord.attempts)).scalars())
    print(f"503 for {MAINTENANCE:.0f}s: {reads} reads reached the API ({reads / MAINTENANCE * 60:.1f} a minute); "
          f"drained {drained:.1f}s after; attempts {dict(attempts)}; stats {executor.stats}")
    assert counts(pg_engine) == {"done": len(tasks)}
    assert max(attempts) <= 1 and attempts[0] >= len(tasks) // 2, attempts
    assert executor.stats.waiting > 0
    with pg_engine.connect() as connection:  # nothing left leased or queued, nothing looped
        assert connection.execute(sa.text("SELECT count(*) FROM task_queue")).scalar_one() == 0
        assert connection.execute(sa.text("SELECT max(runs) FROM tasks")).scalar_one() <= 2 + executor.stats.waiting
    assert reads <= 40, reads  # opening (calls in flight, their retries) and then one probe at a time
