"""model_summary, kept by triggers on the ledger (alembic 0008), through latigo's own write paths: the
newest window, the newest outcome, the last done window and the latest total-anomaly-confidence."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.lifecycle import TaskFilter, TaskLifecycle
from latigo.storage.tables import ModelSummary
from latigo.types import ModelRef, PredictionFrame, PredictionRow, Task, TimeRange

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEP = timedelta(minutes=30)
TOTAL = "total-anomaly-confidence"


def window(i):
    return TimeRange(T0 + i * STEP, T0 + (i + 1) * STEP)


def task(i, model="m", project="p"):
    return Task(model, window(i), project)


def frame(t, value):
    rows = [PredictionRow(TOTAL, TOTAL, t.window.start + timedelta(minutes=m), value + m) for m in (0, 10, 20)]
    rows.append(PredictionRow("anomaly-confidence", "tag-1", t.window.start, 99.0))
    return PredictionFrame(t.model, rows, project=t.project)


@pytest.fixture
def lifecycle(engine):
    lifecycle = TaskLifecycle(engine)
    lifecycle.predictions.partitions.ensure(T0 - timedelta(days=1), T0 + timedelta(days=2))
    return lifecycle


def summary(engine, model="m", project="p"):
    with engine.connect() as c:
        return c.execute(sa.select(ModelSummary).where(ModelSummary.project == project,
                                                       ModelSummary.model == model)).one_or_none()


def run(lifecycle, t, value=None, fail=False):
    with lifecycle.transaction() as c:
        lifecycle.start(c, t, "executor-1")
        if fail:
            lifecycle.fail(c, t, "permanent: bad input")
        else:
            lifecycle.finish(c, t, frame(t, value), 5)


def test_enqueue_then_outcomes_keep_each_models_row(engine, lifecycle):
    tasks = [task(i) for i in range(4)] + [task(0, model="other")]
    with lifecycle.transaction() as c:
        lifecycle.enqueue(c, tasks)
    row = summary(engine)
    assert (row.newest_window_end, row.outcome, row.last_done_end, row.confidence) == (window(3).end, None, None,
                                                                                        None)
    run(lifecycle, tasks[1], value=0.5)
    row = summary(engine)
    assert (row.outcome, row.outcome_window_end, row.last_done_end) == ("done", window(1).end, window(1).end)
    assert (row.confidence, row.confidence_at) == (20.5, window(1).start + timedelta(minutes=20))
    run(lifecycle, tasks[0], value=7.0)  # an older window done later: nothing newer is undone
    row = summary(engine)
    assert (row.outcome_window_end, row.last_done_end, row.confidence) == (window(1).end, window(1).end, 20.5)
    run(lifecycle, tasks[2], fail=True)
    row = summary(engine)
    assert (row.outcome, row.outcome_window_end, row.last_done_end) == ("failed", window(2).end, window(1).end)
    assert summary(engine, model="other").outcome is None


def test_a_failed_window_retried_by_hand_is_read_again_from_the_ledger(engine, lifecycle):
    tasks = [task(i) for i in range(3)]
    with lifecycle.transaction() as c:
        lifecycle.enqueue(c, tasks)
    run(lifecycle, tasks[0], value=0.1)
    run(lifecycle, tasks[1], fail=True)
    assert summary(engine).outcome == "failed"
    with lifecycle.transaction() as c:
        assert len(lifecycle.requeue(c, TaskFilter(states=("failed",)))) == 1
    row = summary(engine)
    assert (row.outcome, row.outcome_window_end, row.last_done_end) == ("done", window(0).end, window(0).end)
    run(lifecycle, tasks[1], value=3.0)
    row = summary(engine)
    assert (row.outcome, row.outcome_window_end, row.confidence) == ("done", window(1).end, 23.0)


def test_two_writers_of_one_model_merge_whichever_commits_last(engine, lifecycle):
    """The newer window finishes first; the older one's transaction, begun before that commit, commits
    after it: the row keeps the newer window (on PostgreSQL the second upsert waits for the first's lock)."""
    tasks = [task(i) for i in range(2)]
    with lifecycle.transaction() as c:
        lifecycle.enqueue(c, tasks)
    if engine.dialect.name == "sqlite":  # one writer at a time: the order of commits is the order of writes
        run(lifecycle, tasks[1], value=1.0)
        run(lifecycle, tasks[0], value=2.0)
    else:
        older = engine.connect()
        transaction = older.begin()
        lifecycle.start(older, tasks[0], "executor-1")
        lifecycle.finish(older, tasks[0], frame(tasks[0], 2.0), 5)  # holds model_summary's row lock
        newer = threading.Thread(target=run, args=(lifecycle, tasks[1], 1.0))
        newer.start()
        newer.join(1.0)
        assert newer.is_alive(), "the second writer did not wait for the first's row"
        transaction.commit()
        older.close()
        newer.join(30)
    row = summary(engine)
    assert (row.outcome_window_end, row.last_done_end, row.confidence) == (window(1).end, window(1).end, 21.0)


def test_the_overview_models_match_the_ledger_read(engine, lifecycle):
    """The summary and the ledger's own probes agree model by model (what the overview read before)."""
    from latigo.web import queries

    refs = [ModelRef("p", f"m{i}") for i in range(5)]
    tasks = [Task(ref.name, window(i), ref.project) for ref in refs for i in range(3)]
    with lifecycle.transaction() as c:
        lifecycle.enqueue(c, tasks)
    for n, t in enumerate(tasks):
        if n % 4 == 0:
            run(lifecycle, t, fail=True)
        elif n % 3:
            run(lifecycle, t, value=n / 10)
    now = T0 + timedelta(hours=3)
    with engine.connect() as c:
        summarised = {r.ref: r for r in queries.model_rows(c, now)}
        probed = {r.ref: r for r in queries.model_rows(c, now, refs=refs)}
    assert set(summarised) == set(refs)
    for ref in refs:
        a, b = summarised[ref], probed[ref]
        assert (a.last_done_end, a.confidence, a.confidence_at) == (b.last_done_end, b.confidence, b.confidence_at)


def test_a_model_whose_every_task_was_pruned_leaves_the_summary(engine, lifecycle):
    from latigo.retention import Retention, prune

    old, kept = task(0, model="gone"), task(0, model="kept")
    with lifecycle.transaction() as c:
        lifecycle.enqueue(c, [old, kept])
    run(lifecycle, old, value=0.1)
    assert summary(engine, model="kept") is not None  # still queued: never pruned
    deleted = prune(lifecycle.predictions, Retention(tasks=timedelta(seconds=0)), now=datetime.now(timezone.utc)
                    + timedelta(minutes=1))
    assert (deleted["tasks"], deleted["model_summary"]) == (1, 1)
    assert summary(engine, model="gone") is None
    assert summary(engine, model="kept").newest_window_end == window(0).end
