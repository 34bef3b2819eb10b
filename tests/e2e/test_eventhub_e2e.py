"""The prediction loop over Event Hubs as separate processes: backfill (the scheduler's enqueue path) → the test
broker (real AMQP 1.0, unmodified SDK) → executor processes → predictions, with partition ownership and
checkpoints in PostgreSQL. Every task ends `done` once, no prediction row is duplicated, nothing is lost, also
when an executor is killed with SIGKILL in the middle of its tasks; a poison event is dead-lettered once."""

import signal
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from azure.eventhub import EventData, EventHubProducerClient

from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import DeadLetter, EventHubCheckpoint, EventHubOwnership, Prediction, TaskRecord
from tests.support.processes import latigo, latigo_ok, static_models_config
from tests.support.providers import expected_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def database(pg_engine):
    yield pg_engine


def config_for(tmp_path, url, broker, models, sleep, concurrency=4, expiry="4s"):
    queue = {"type": "eventhub", "connection_string": broker.connection_string(key="e2eSecretKey42"),
             "load_balancing_interval": "1s", "ownership_expiry": expiry, "prefetch": 10, "handoff_size": 8}
    return static_models_config(tmp_path / "latigo.yaml", url, queue, models, sleep, concurrency)


def backfill(config, hours):
    latigo_ok(config, "db", "upgrade")
    latigo_ok(config, "backfill", "--from", START.isoformat(), "--to", (START + timedelta(hours=hours)).isoformat(),
              "--no-progress")
    return expected_rows(START, START + timedelta(minutes=10))


def summary(engine):
    with engine.connect() as c:
        states = dict(c.execute(sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all())
        rows = c.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar()
        distinct = c.execute(sa.select(sa.func.count()).select_from(
            sa.select(Prediction.model, Prediction.output, Prediction.tag, Prediction.ts).distinct().subquery()
        )).scalar()
        executors = c.execute(sa.select(sa.func.count(sa.distinct(TaskRecord.executor)))).scalar()
        rerun = c.execute(sa.select(sa.func.count()).select_from(TaskRecord).where(TaskRecord.runs > 1)).scalar()
        checkpoints = dict(c.execute(sa.select(EventHubCheckpoint.partition_id, EventHubCheckpoint.sequence_number))
                           .all())
    return states, rows, distinct, executors, rerun, checkpoints


def fully_checkpointed(broker, checkpoints):
    """Every event of every partition is below its partition's checkpoint."""
    return {p: n - 1 for p, n in broker.event_counts().items() if n} == checkpoints


def test_two_executor_processes_share_the_partitions_and_do_every_task_once(tmp_path, broker, database, pg_url):
    config = config_for(tmp_path, pg_url, broker, [f"model-{i}" for i in range(8)], sleep=0.2)
    per_task = backfill(config, hours=5)  # 30 windows x 8 models = 240 tasks
    poison = EventHubProducerClient.from_connection_string(broker.connection_string())
    batch = poison.create_batch(partition_key="model-3")
    batch.add(EventData(b"\x00 not a task"))
    poison.send_batch(batch)
    poison.close()
    assert sum(broker.event_counts().values()) == 241
    executors = [latigo(config, "executor", "--exit-when-idle", "5") for _ in range(2)]
    outputs = []
    for process in executors:
        output, _ = process.communicate(timeout=300)
        outputs.append(output)
        assert process.returncode == 0, output[-3000:]
    states, rows, distinct, executor_count, rerun, checkpoints = summary(database)
    assert states == {"done": 240}
    assert rows == distinct == 240 * per_task
    assert executor_count == 2  # both processes took work
    assert all("claimed partition" in output for output in outputs)  # both got partitions
    assert fully_checkpointed(broker, checkpoints)
    with database.connect() as c:
        dead = c.execute(sa.select(DeadLetter.body, DeadLetter.error)).all()
    assert [body for body, _ in dead] == [b"\x00 not a task"]  # dead-lettered once, did not loop
    assert all("e2eSecretKey42" not in output for output in outputs)
    print(f"tasks run twice during rebalancing: {rerun}")


def test_a_killed_executors_partitions_are_claimed_and_replayed_by_another(tmp_path, broker, database, pg_url):
    config = config_for(tmp_path, pg_url, broker, ["slow-a", "slow-b", "slow-c"], sleep=1.0)
    per_task = backfill(config, hours=2)  # 12 windows x 3 models = 36 tasks

    def count(state):
        with database.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(TaskRecord)
                             .where(TaskRecord.state == state)).scalar()

    victim = latigo(config, "executor")
    deadline = time.monotonic() + 60
    while (count("done") < 2 or count("running") < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count("running") >= 2, "the first executor never got going"
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    with database.connect() as c:
        owned = c.execute(sa.select(sa.func.count()).select_from(EventHubOwnership)
                          .where(EventHubOwnership.owner_id != "")).scalar()
    assert owned >= 1  # it died owning partitions (no release)
    survivor = latigo(config, "executor", "--exit-when-idle", "10")
    output, _ = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, output[-3000:]
    assert "claimed partition" in output
    states, rows, distinct, _, rerun, checkpoints = summary(database)
    assert states == {"done": 36}  # nothing lost
    assert rows == distinct == 36 * per_task  # nothing duplicated
    assert rerun >= 1  # the victim's in-flight tasks were replayed from the checkpoint and run again
    assert fully_checkpointed(broker, checkpoints)


def test_sigterm_releases_the_partitions_and_the_next_executor_finishes_on_sqlite(tmp_path, broker):
    url = f"sqlite:///{tmp_path / 'latigo.db'}"
    # The SDK closes partitions one by one (about a second each) and releases only unexpired ownerships,
    # so the expiry must outlast the shutdown for the release to be seen here.
    config = config_for(tmp_path, url, broker, ["slow-a", "slow-b", "slow-c"], sleep=0.5, expiry="60s")
    per_task = backfill(config, hours=2)  # 36 tasks
    engine = create_engine_for(DatabaseSettings(url=url))

    def done():
        with engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(TaskRecord).where(TaskRecord.state == "done")
                             ).scalar()

    first = latigo(config, "executor")
    deadline = time.monotonic() + 60
    while done() < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 0, output[-3000:]
    with engine.connect() as c:
        owners = c.execute(sa.select(EventHubOwnership.owner_id)).scalars().all()
        running = c.execute(sa.select(sa.func.count()).select_from(TaskRecord)
                            .where(TaskRecord.state == "running")).scalar()
    assert owners and set(owners) == {""}  # released on the way out, not left to expire
    assert running == 0  # in-flight tasks were finished or handed back
    latigo_ok(config, "executor", "--exit-when-idle", "5", timeout=300)
    states, rows, distinct, _, _, checkpoints = summary(engine)
    assert states == {"done": 36}
    assert rows == distinct == 36 * per_task
    assert fully_checkpointed(broker, checkpoints)
    engine.dispose()
