"""latigo keeps the planner statistics its reads need on PostgreSQL (autovacuum off, behind, or never
analysing a partitioned parent): what it bulk-loaded is analysed, and nothing twice."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.lifecycle import TaskLifecycle
from latigo.storage.statistics import StatisticsKeeper, refresh_statistics, stale_tables
from latigo.types import PredictionFrame, PredictionRow, Task, TimeRange

pytestmark = pytest.mark.integration
STEP = timedelta(minutes=10)


def fill(engine: sa.Engine, models: int = 60, windows: int = 30) -> None:
    lifecycle = TaskLifecycle(engine)
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0) - windows * STEP
    with lifecycle.transaction() as c:
        for w in range(windows):
            for m in range(models):
                task = Task(f"model-{m}", TimeRange(start + w * STEP, start + (w + 1) * STEP))
                lifecycle.enqueue(c, [task])
                lifecycle.start(c, task, "exec")
                frame = PredictionFrame(task.model, [PredictionRow("total-anomaly-confidence",
                                                                   "total-anomaly-confidence", task.window.start, 0.5)])
                lifecycle.predictions.ready_for(frame)
                lifecycle.finish(c, task, frame, 1)


def statistics_rows(engine: sa.Engine, table: str) -> int:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT count(*) FROM pg_statistic WHERE starelid = CAST(:t AS regclass)"),
                         {"t": table}).scalar_one()


def test_what_latigo_loaded_is_analysed_once(engine):
    if engine.dialect.name != "postgresql":
        assert refresh_statistics(engine) == []  # SQLite: nothing to keep
        return
    fill(engine)
    assert "tasks" in stale_tables(engine)
    assert statistics_rows(engine, "prediction_values") == 0  # autovacuum never analyses the parent
    analysed = refresh_statistics(engine)
    assert {"tasks", "series", "prediction_values"} <= set(analysed)
    assert statistics_rows(engine, "prediction_values") > 0 and statistics_rows(engine, "tasks") > 0
    assert refresh_statistics(engine) == []  # nothing changed since: nothing analysed again
    keeper = StatisticsKeeper(engine)
    assert keeper() == ""
    with engine.begin() as c:  # the whole ledger changes (a re-run by hand, say)
        c.execute(sa.text("UPDATE tasks SET runs = runs + 1"))
    said = ""
    for _ in range(50):  # the server's activity counters are flushed within a second
        said = keeper()
        if said:
            break
        time.sleep(0.1)
    assert said == "analysed tasks"
