"""One Gordo project's server gone behind the ingress (503 for every request to it, as ingress-nginx
answers for a service without endpoints) holds only that project's tasks: the other project's are done
meanwhile, the first's wait without spending attempts and are done when its server is back."""

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
from latigo.settings import ExecutorSettings
from latigo.storage.tables import TaskRecord
from latigo.types import Task, TimeRange
from tests.support.gordo_ingress import IngressProxy
from tests.support.gordo_server import GordoServer, ModelSpec, RampSensors
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 2, 6, tzinfo=timezone.utc)
WINDOWS = [TimeRange(T0 + i * timedelta(minutes=30), T0 + (i + 1) * timedelta(minutes=30)) for i in range(6)]


def states(engine: sa.Engine) -> Counter:
    with engine.connect() as connection:
        return Counter({(project, state): n for project, state, n in connection.execute(
            sa.select(TaskRecord.project, TaskRecord.state, sa.func.count())
            .group_by(TaskRecord.project, TaskRecord.state)).all()})


def test_one_projects_outage_never_holds_another_projects_tasks(pg_engine):
    settings = ExecutorSettings(concurrency=4, poll_timeout=timedelta(seconds=0.2), peer_failures=3,
                                peer_probe_max_delay=timedelta(seconds=2), shutdown_timeout=timedelta(seconds=10))
    lifecycle = TaskLifecycle(pg_engine)
    queue = DatabaseTaskQueue(pg_engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.1)),
                              lifecycle=lifecycle)
    PEERS.configure(settings.peer_failures, 0.5, settings.peer_probe_max_delay.total_seconds())
    with GordoServer("plant-a", [ModelSpec("pump-1")]) as a, GordoServer("plant-b", [ModelSpec("pump-1")]) as b, \
            IngressProxy({"plant-a": a.url, "plant-b": b.url}) as ingress:
        models = GordoProjects(GordoSettings(base_url=ingress.base_url, projects=["plant-a", "plant-b"]),
                               sensors=RampSensors())
        executor = Executor(settings, queue, models, lifecycle, ["model-output"], name="projects-exec")
        ingress.set_upstream("plant-a", None)  # plant-a's pods are gone: the ingress answers 503
        tasks = [Task("pump-1", window, project) for window in WINDOWS for project in ("plant-a", "plant-b")]
        with lifecycle.transaction() as connection:
            queue.put_many(lifecycle.enqueue(connection, tasks).to_send, connection)
        runner = threading.Thread(target=executor.run, kwargs={"exit_when_idle": 10.0}, daemon=True)
        runner.start()
        try:
            assert wait_for(lambda: states(pg_engine)[("plant-b", "done")] == len(WINDOWS), timeout=60), \
                states(pg_engine)
            time.sleep(3)
            during = states(pg_engine)
            assert during[("plant-a", "done")] == 0 and during[("plant-a", "failed")] == 0, during
            assert PEERS.breaker(f"gordo plant-a at {ingress.base_url.split('//')[1]}").is_open
            ingress.set_upstream("plant-a", a.url)
            assert wait_for(lambda: states(pg_engine)[("plant-a", "done")] == len(WINDOWS), timeout=60), \
                states(pg_engine)
        finally:
            executor.stop()
            runner.join(30)
    with pg_engine.connect() as connection:
        attempts = Counter(connection.execute(sa.select(TaskRecord.project, TaskRecord.attempts)).all())
    assert states(pg_engine) == Counter({("plant-a", "done"): len(WINDOWS), ("plant-b", "done"): len(WINDOWS)})
    assert max(n for _, n in attempts) <= 1, attempts
    assert not any(project == "plant-b" and n for project, n in attempts), attempts
    assert executor.stats.waiting > 0
