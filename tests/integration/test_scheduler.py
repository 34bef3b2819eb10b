"""The scheduler loop against the real database queue and schedule_state, with a controlled clock."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.errors import ConfigError
from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.scheduler import Scheduler
from latigo.settings import SchedulerSettings
from latigo.storage.tables import QueuedTask, ScheduleState
from latigo.types import Task
from tests.support.providers import StaticModels

pytestmark = pytest.mark.integration
UTC = timezone.utc
NOW = datetime(2026, 3, 1, 8, 1, tzinfo=UTC)


def make(engine, models=("a", "b"), batch_size=1000, **settings):
    queue = DatabaseTaskQueue(engine)
    provider = StaticModels(list(models))
    config = SchedulerSettings(interval=timedelta(minutes=30), delay=timedelta(minutes=5),
                               batch_size=batch_size, **settings)
    return Scheduler(config, provider, queue, TaskLifecycle(engine)), provider, queue


def queued(engine):
    with engine.connect() as c:
        return sorted((Task.from_json(body).model, Task.from_json(body).window.start.strftime("%H:%M"))
                      for body in c.execute(sa.select(QueuedTask.body)).scalars())


def test_first_cycle_schedules_the_current_window_of_every_model(engine):
    scheduler, _, _ = make(engine)
    assert scheduler.run_cycle(NOW) == 2
    assert queued(engine) == [("a", "07:25"), ("b", "07:25")]


def test_a_second_cycle_in_the_same_interval_enqueues_nothing(engine):
    scheduler, _, _ = make(engine)
    scheduler.run_cycle(NOW)
    assert scheduler.run_cycle(NOW + timedelta(minutes=10)) == 0


def test_restart_after_an_outage_catches_up_oldest_first_within_the_limit(engine):
    scheduler, _, queue = make(engine, catch_up_limit=timedelta(hours=2))
    scheduler.run_cycle(NOW)
    restarted, _, _ = make(engine, catch_up_limit=timedelta(hours=2))  # fresh process, state from the db
    assert restarted.run_cycle(NOW + timedelta(hours=5)) == 8
    starts = [s for m, s in queued(engine) if m == "a"]
    assert starts == ["07:25", "10:55", "11:25", "11:55", "12:25"]
    order = [queue.get(timeout=1).task for _ in range(10)]
    assert [t.window.start for t in order] == sorted(t.window.start for t in order)


def test_new_models_start_at_the_current_window_and_vanished_ones_stop(engine):
    scheduler, provider, _ = make(engine)
    scheduler.run_cycle(NOW)
    provider.models[:] = ["b", "c"]
    scheduler.run_cycle(NOW + timedelta(minutes=30))
    assert queued(engine) == [("a", "07:25"), ("b", "07:25"), ("b", "07:55"), ("c", "07:55")]


def test_batches_commit_state_and_enqueue_together(engine):
    class FailingQueue(DatabaseTaskQueue):
        def put_many(self, tasks, connection=None):
            super().put_many(tasks, connection)
            raise RuntimeError("broker fell over mid-batch")

    scheduler, _, _ = make(engine)
    scheduler.queue = FailingQueue(engine)
    with pytest.raises(RuntimeError):
        scheduler.run_cycle(NOW)
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(ScheduleState)).scalar() == 0
    assert queued(engine) == []


def test_many_models_are_enqueued_in_batches(engine):
    scheduler, _, queue = make(engine, models=[f"m{i:03d}" for i in range(250)], batch_size=100)
    assert scheduler.run_cycle(NOW) == 250
    assert queue.size() == 250


def test_backfill_enqueues_every_window_of_the_range_and_leaves_the_schedule_alone(engine):
    scheduler, _, _ = make(engine)
    ticks = []
    count = scheduler.backfill(datetime(2026, 2, 1, 0, 0, tzinfo=UTC), datetime(2026, 2, 1, 3, 0, tzinfo=UTC),
                               ["a"], progress=ticks.append)
    assert count == 5 and sum(ticks) == 5  # whole grid windows only: they end at :25 and :55
    assert [s for _, s in queued(engine)] == ["00:25", "00:55", "01:25", "01:55", "02:25"]
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(ScheduleState)).scalar() == 0


def test_backfill_of_an_unknown_model_is_refused_by_name(engine):
    scheduler, _, _ = make(engine)
    with pytest.raises(ConfigError, match="unknown model.*ghost"):
        scheduler.backfill(NOW - timedelta(hours=3), NOW, ["a", "ghost"])


def test_run_at_once_schedules_on_start_then_waits_for_the_tick(engine):
    scheduler, _, _ = make(engine, run_at_once=True, check_interval=timedelta(seconds=0.05))
    scheduler.clock = lambda: NOW
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,))
    thread.start()
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while not queued(engine) and datetime.now(UTC) < deadline:
        stop.wait(0.05)
    stop.set()
    thread.join(5)
    assert queued(engine) == [("a", "07:25"), ("b", "07:25")]


def test_the_same_name_in_two_projects_is_two_models_everywhere(engine):
    """Schedule, ledger, queue, predictions and backfill keep (project, name) apart."""
    from latigo.executor import Executor
    from latigo.settings import ExecutorSettings
    from latigo.types import ModelRef

    scheduler, provider, queue = make(engine, models=("plant-a/pump", "plant-b/pump", "pump"))
    assert scheduler.run_cycle(NOW) == 3
    with engine.connect() as c:
        assert set(c.execute(sa.select(ScheduleState.project, ScheduleState.model)).all()) == \
            {("plant-a", "pump"), ("plant-b", "pump"), ("default", "pump")}
        bodies = [Task.from_json(b) for b in c.execute(sa.select(QueuedTask.body)).scalars()]
    assert sorted(t.project for t in bodies) == ["default", "plant-a", "plant-b"]
    assert len({t.task_id for t in bodies}) == 3
    executor = Executor(ExecutorSettings(), queue, provider, scheduler.lifecycle, ["model-output"])
    for _ in range(3):
        executor.handle(queue.get(timeout=1))
    with engine.connect() as c:
        stored = c.execute(sa.text("SELECT project, model, count(*) FROM predictions GROUP BY project, model "
                                   "ORDER BY project")).all()
        states = c.execute(sa.text("SELECT project, state FROM tasks ORDER BY project")).all()
    assert [tuple(r) for r in stored] == [("default", "pump", 6), ("plant-a", "pump", 6), ("plant-b", "pump", 6)]
    assert [tuple(r) for r in states] == [("default", "done"), ("plant-a", "done"), ("plant-b", "done")]
    assert scheduler.backfill_models(["pump"], ["plant-b"]) == [ModelRef("plant-b", "pump")]
    assert scheduler.backfill_models(["plant-a/pump"]) == [ModelRef("plant-a", "pump")]
    with pytest.raises(ConfigError, match="plant-c"):
        scheduler.backfill_models(None, ["plant-c"])
