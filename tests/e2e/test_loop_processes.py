"""The prediction loop as separate processes: scheduler/backfill → database queue → executors.

Every task is done exactly once and every prediction row is stored once, whatever the
number of executors, including when one is killed with SIGKILL while holding leases."""

import signal
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import Prediction, QueuedTask, TaskRecord
from tests.support.processes import latigo, latigo_ok, static_models_config
from tests.support.providers import expected_rows
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def config_for(tmp_path, url, models, sleep=0.0, concurrency=8, lease="60s"):
    queue = {"type": "database", "lease": lease, "poll_interval": "200ms"}
    return static_models_config(tmp_path / "latigo.yaml", url, queue, models, sleep, concurrency)


def summary(url):
    engine = create_engine_for(DatabaseSettings(url=url))
    with engine.connect() as c:
        states = dict(c.execute(sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all())
        rows = c.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar()
        distinct = c.execute(sa.select(sa.func.count()).select_from(
            sa.select(Prediction.model, Prediction.output, Prediction.tag, Prediction.ts).distinct().subquery()
        )).scalar()
        queued = c.execute(sa.select(sa.func.count()).select_from(QueuedTask)).scalar()
        executors = c.execute(sa.select(sa.func.count(sa.distinct(TaskRecord.executor)))).scalar()
    engine.dispose()
    return states, rows, distinct, queued, executors


def backfill(config, hours):
    end = START + timedelta(hours=hours)
    latigo_ok(config, "db", "upgrade")
    latigo_ok(config, "backfill", "--from", START.isoformat(), "--to", end.isoformat(), "--no-progress")
    return expected_rows(START, START + timedelta(minutes=10))


def test_two_executor_processes_drain_500_tasks_on_postgresql(tmp_path, pg_url, pg_engine):
    config = config_for(tmp_path, pg_url, [f"m{i}" for i in range(5)])
    per_task = backfill(config, hours=100 / 6)  # 100 windows x 5 models = 500 tasks
    executors = [latigo(config, "executor", "--exit-when-idle", "2") for _ in range(2)]
    for process in executors:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    states, rows, distinct, queued, executor_count = summary(pg_url)
    assert states == {"done": 500}
    assert rows == distinct == 500 * per_task
    assert queued == 0
    assert executor_count == 2  # both processes took work


def test_one_sqlite_executor_with_four_workers_drains_the_backlog(tmp_path):
    url = f"sqlite:///{tmp_path / 'latigo.db'}"
    config = config_for(tmp_path, url, ["a", "b"], concurrency=4)
    per_task = backfill(config, hours=10)  # 60 windows x 2 models
    latigo_ok(config, "executor", "--exit-when-idle", "1.5", timeout=300)
    states, rows, distinct, queued, _ = summary(url)
    assert states == {"done": 120}
    assert rows == distinct == 120 * per_task
    assert queued == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_executor_leases_expire_and_another_finishes_its_tasks(tmp_path, backend, request):
    if backend == "postgresql":
        request.getfixturevalue("pg_engine")  # empties the session database
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'latigo.db'}"
    config = config_for(tmp_path, url, ["slow-a", "slow-b"], sleep=1.0, concurrency=4, lease="3s")
    per_task = backfill(config, hours=2)  # 24 tasks
    engine = create_engine_for(DatabaseSettings(url=url))

    def leased():
        with engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(QueuedTask)
                             .where(QueuedTask.lease_owner.is_not(None))).scalar()

    def running():
        with engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(TaskRecord)
                             .where(TaskRecord.state == "running")).scalar()

    victim = latigo(config, "executor")
    assert wait_for(lambda: running() >= 2), "the first executor never started tasks"
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert leased() >= 1  # it died holding leases
    survivor = latigo(config, "executor", "--exit-when-idle", "5")
    output, _ = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, output[-3000:]
    states, rows, distinct, queued, _ = summary(url)
    assert states == {"done": 24}
    assert rows == distinct == 24 * per_task
    assert queued == 0
    with engine.connect() as c:
        lost, attempts = c.execute(sa.select(sa.func.sum(TaskRecord.lost), sa.func.sum(TaskRecord.attempts))).one()
    assert lost >= 1  # the victim's in-flight tasks were redelivered and run again, counted as lost runs
    assert attempts == 0  # ... not as failed attempts
    engine.dispose()


def test_sigterm_finishes_in_flight_tasks_and_leaves_nothing_leased(tmp_path):
    url = f"sqlite:///{tmp_path / 'latigo.db'}"
    config = config_for(tmp_path, url, ["slow"], sleep=1.0, concurrency=2)
    backfill(config, hours=3)
    engine = create_engine_for(DatabaseSettings(url=url))
    process = latigo(config, "executor")

    def started():
        with engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(TaskRecord)
                             .where(TaskRecord.state == "running")).scalar() > 0

    assert wait_for(started)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output[-3000:]
    with engine.connect() as c:
        leased = c.execute(sa.select(sa.func.count()).select_from(QueuedTask)
                           .where(QueuedTask.lease_owner.is_not(None))).scalar()
        running = c.execute(sa.select(sa.func.count()).select_from(TaskRecord)
                            .where(TaskRecord.state == "running")).scalar()
        done = c.execute(sa.select(sa.func.count()).select_from(TaskRecord).where(TaskRecord.state == "done")).scalar()
    assert (leased, running) == (0, 0)
    assert done >= 1  # the in-flight ones were finished, not abandoned
    engine.dispose()
