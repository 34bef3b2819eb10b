"""Bulk prediction upserts: exact rows, idempotent rewrites, awkward tag names survive COPY."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.lifecycle import TaskLifecycle
from latigo.retention import Retention, prune
from latigo.storage.db import write_transaction
from latigo.storage.partitions import Partitions
from latigo.storage.predictions import COPY_FROM_ROWS, MissingPartition, write_predictions
from latigo.storage.tables import Prediction, TaskRecord
from latigo.types import PredictionFrame, PredictionRow, Task, TimeRange

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
AWKWARD = ["plain", "tab\there", "new\nline", "back\\slash", "quote'\"", "ünïcødé", "\\N", "comma,semi;",
           "{braces}", "NULL", " spaced "]


def frame(value_offset=0.0, tags=AWKWARD, steps=6):
    rows = [PredictionRow("model-output", tag, T0 + i * timedelta(minutes=10), i + value_offset)
            for tag in tags for i in range(steps)]
    return PredictionFrame("model-ä", rows)


@pytest.fixture(autouse=True)
def partitions(engine):
    """PostgreSQL stores predictions in time partitions, created before a task writes (TaskLifecycle.ready_for)."""
    Partitions(engine).ensure(T0 - timedelta(days=1), T0 + timedelta(days=30))


def stored(engine):
    with engine.connect() as c:
        return {(r.model, r.output, r.tag, r.ts): r.value for r in c.execute(sa.select(Prediction))}


@pytest.mark.parametrize("steps", [6, COPY_FROM_ROWS // len(AWKWARD) + 1], ids=["values", "copy"])
def test_rows_land_exactly_with_their_names_and_timestamps(engine, steps):
    with write_transaction(engine) as c:
        assert write_predictions(c, frame(steps=steps)) == len(AWKWARD) * steps
    rows = stored(engine)
    assert len(rows) == len(AWKWARD) * steps
    assert {tag for (_, _, tag, _) in rows} == set(AWKWARD)
    assert rows[("model-ä", "model-output", "tab\there", T0 + timedelta(minutes=20))] == 2.0
    assert all(ts.tzinfo is not None for (_, _, _, ts) in rows)


@pytest.mark.parametrize("steps", [6, COPY_FROM_ROWS // len(AWKWARD) + 1], ids=["values", "copy"])
def test_rewriting_a_window_overwrites_and_never_duplicates(engine, steps):
    for offset in (0.0, 100.0):
        with write_transaction(engine) as c:
            write_predictions(c, frame(offset, steps=steps))
    rows = stored(engine)
    assert len(rows) == len(AWKWARD) * steps
    assert rows[("model-ä", "model-output", "plain", T0)] == 100.0


def test_a_failed_transaction_writes_nothing(engine):
    with pytest.raises(RuntimeError), write_transaction(engine) as c:
        write_predictions(c, frame())
        raise RuntimeError("crash before commit")
    assert stored(engine) == {}


def test_extreme_values_survive(engine):
    values = [0.0, -1.5e-300, 1.7976931348623157e308, float("inf"), float("-inf")]
    rows = [PredictionRow("o", "t", T0 + timedelta(seconds=i), v) for i, v in enumerate(values)]
    with write_transaction(engine) as c:
        write_predictions(c, PredictionFrame("m", rows))
    assert sorted(stored(engine).values()) == sorted(values)


def test_a_row_outside_every_partition_is_reported_as_such_not_lost(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no partitions")
    far = PredictionFrame("m", [PredictionRow("o", "t", T0 + timedelta(days=400), 1.0)])
    with pytest.raises(MissingPartition), write_transaction(engine) as c:
        write_predictions(c, far)
    lifecycle = TaskLifecycle(engine)
    lifecycle.predictions.ready_for(far)
    with write_transaction(engine) as c:
        assert write_predictions(c, far) == 1
    assert len(stored(engine)) == 1


def test_retention_drops_whole_partitions_on_postgresql_and_deletes_rows_on_sqlite(engine):
    lifecycle = TaskLifecycle(engine)
    old = PredictionFrame("m", [PredictionRow("o", "t", T0 + timedelta(hours=h), 1.0) for h in range(48)])
    lifecycle.predictions.ready_for(old)
    with write_transaction(engine) as c:
        write_predictions(c, old)
    deleted = prune(lifecycle.predictions, Retention(predictions=timedelta(days=1), tasks=None, dead_letters=None,
                                                     schedule_state=None), now=T0 + timedelta(days=2, hours=1))
    kept = sorted(ts for (_, _, _, ts) in stored(engine))
    if engine.dialect.name == "postgresql":
        assert deleted["predictions"] == 2  # the partitions of 2025-12-31 and 2026-01-01, whole
        assert kept[0] == T0 + timedelta(days=1)  # the partition holding the cutoff stays whole
    else:
        assert deleted["predictions"] == 25  # rows before the cutoff, T0 + 25 h
        assert kept[0] == T0 + timedelta(days=1, hours=1)
    assert kept[-1] == T0 + timedelta(hours=47)


def test_finish_marks_done_with_the_rows_in_one_transaction_new_series_or_missing_partition(engine):
    """lifecycle.finish: the rows and `done` together (one statement on PostgreSQL): with series that do
    not exist yet, and, on PostgreSQL, with a row outside every partition (nothing of it stays)."""
    lifecycle = TaskLifecycle(engine)
    task = Task("model-ä", TimeRange(T0, T0 + timedelta(hours=1)))
    with write_transaction(engine) as c:
        lifecycle.enqueue(c, [task])
        lifecycle.start(c, task, "test")
    first = frame()  # every series is new
    with write_transaction(engine) as c:
        assert lifecycle.finish(c, task, first, 12) == len(AWKWARD) * 6
    assert len(stored(engine)) == len(AWKWARD) * 6
    with engine.connect() as c:
        record = c.execute(sa.select(TaskRecord).where(TaskRecord.task_id == task.task_id)).one()
    assert (record.state, record.rows, record.duration_ms) == ("done", len(AWKWARD) * 6, 12)
    if engine.dialect.name != "postgresql":
        return
    late = Task("m-late", TimeRange(T0 + timedelta(days=900), T0 + timedelta(days=900, hours=1)))  # no partition
    far = PredictionFrame("m-late", [PredictionRow("o", "t", late.window.start, 1.0)])
    with write_transaction(engine) as c:
        lifecycle.enqueue(c, [late])
    with pytest.raises(MissingPartition), write_transaction(engine) as c:
        lifecycle.finish(c, late, far, 5)
    with engine.connect() as c:
        assert c.execute(sa.select(TaskRecord.state).where(TaskRecord.task_id == late.task_id)).scalar() == "queued"
