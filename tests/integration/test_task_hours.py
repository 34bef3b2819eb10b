"""The settled hours' counts: the scheduler's chore stores them once, the overview's chart reads them and
counts only the open hours from the ledger."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.lifecycle import TaskLifecycle
from latigo.storage import task_hours
from latigo.storage.tables import TASK_HOURS, TaskRecord
from latigo.types import PredictionFrame, PredictionRow, Task, TimeRange
from latigo.web import queries

pytestmark = pytest.mark.integration
NOW = datetime(2026, 3, 2, 12, 20, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
W0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def finish_at(engine, lifecycle, finished, fail=False, model="m"):
    """A task run through the lifecycle, its finished_at then set to `finished` (the clock of the test)."""
    index = finish_at.count = getattr(finish_at, "count", 0) + 1
    task = Task(model, TimeRange(W0 + index * timedelta(minutes=10), W0 + (index + 1) * timedelta(minutes=10)))
    with lifecycle.transaction() as c:
        lifecycle.enqueue(c, [task])
        lifecycle.start(c, task, "executor-1")
        if fail:
            lifecycle.fail(c, task, "permanent: bad input")
        else:
            lifecycle.finish(c, task, PredictionFrame(model, [PredictionRow("o", "t", task.window.start, 1.0)]), 3)
    with engine.begin() as c:
        c.execute(sa.update(TaskRecord).where(TaskRecord.task_id == task.task_id).values(finished_at=finished))
    return task


@pytest.fixture
def lifecycle(engine):
    lifecycle = TaskLifecycle(engine)
    lifecycle.predictions.partitions.ensure(W0 - timedelta(days=1), W0 + timedelta(days=2))
    return lifecycle


def chart(engine, kept=None):
    with engine.connect() as c:
        return {at: (done, failed) for at, done, failed in queries._hourly(c, NOW, kept)}


def test_settled_hours_are_counted_once_and_the_chart_reads_them(engine, lifecycle):
    three_ago, two_ago, this_hour = (task_hours.hour_of(NOW) - 3 * HOUR, task_hours.hour_of(NOW) - 2 * HOUR,
                                     task_hours.hour_of(NOW))
    early = [finish_at(engine, lifecycle, three_ago + timedelta(minutes=m)) for m in (1, 59)]
    finish_at(engine, lifecycle, two_ago + timedelta(minutes=5))
    finish_at(engine, lifecycle, two_ago + timedelta(minutes=6), fail=True)
    assert task_hours.keep_settled_hours(engine, NOW) == f"{task_hours.KEPT_HOURS} hours counted"
    with engine.connect() as c:
        stored = task_hours.stored(c, NOW - 30 * HOUR)
    assert len(stored) == task_hours.KEPT_HOURS and this_hour - HOUR in stored  # 11:00 settled at 12:05
    assert (stored[three_ago], stored[two_ago]) == ((2, 0), (1, 1))
    assert task_hours.keep_settled_hours(engine, NOW) == ""  # nothing new to count

    with engine.begin() as c:  # the ledger changes under a stored hour: the chart keeps what was counted
        c.execute(sa.delete(TaskRecord).where(TaskRecord.task_id.in_([t.task_id for t in early])))
    finish_at(engine, lifecycle, this_hour + timedelta(minutes=10))  # the open hour: read from the ledger
    counts = chart(engine)
    assert (counts[three_ago], counts[two_ago], counts[this_hour]) == ((2, 0), (1, 1), (1, 0))
    assert len(counts) == queries.MAX_HOURS


def test_without_a_scheduler_the_chart_counts_the_ledger(engine, lifecycle):
    two_ago = task_hours.hour_of(NOW) - 2 * HOUR
    finish_at(engine, lifecycle, two_ago + timedelta(minutes=1))
    kept = queries.HourlyCounts()
    assert chart(engine, kept)[two_ago] == (1, 0)
    assert kept.settled[two_ago] == (1, 0)
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(TASK_HOURS)).scalar_one() == 0


def test_hours_older_than_kept_are_dropped(engine, lifecycle):
    task_hours.keep_settled_hours(engine, NOW - 48 * HOUR)
    task_hours.keep_settled_hours(engine, NOW)
    with engine.connect() as c:
        oldest = c.execute(sa.select(sa.func.min(TASK_HOURS.c.hour))).scalar_one()
    assert task_hours.hour_of(NOW) - HOUR - task_hours.KEPT_HOURS * HOUR <= queries.utc_from_db(oldest)
