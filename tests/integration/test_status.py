"""`latigo status` over a database holding done, failed and queued tasks (text and JSON)."""

import json
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.status import collect_status
from latigo.types import PredictionFrame, PredictionRow, Task, TimeRange
from tests.support.processes import latigo_ok, write_config

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def window(i):
    return TimeRange(T0 + i * timedelta(minutes=10), T0 + (i + 1) * timedelta(minutes=10))


@pytest.fixture
def populated(engine):
    lifecycle = TaskLifecycle(engine)
    queue = DatabaseTaskQueue(engine, lifecycle=lifecycle)
    tasks = [Task("pump-1", window(i)) for i in range(3)] + [Task("pump-2", window(0)), Task("pump-3", window(5))]
    with lifecycle.transaction() as c:
        queue.put_many(lifecycle.enqueue(c, tasks).to_send, c)
    for _ in range(2):  # pump-1 windows 0 and 1 done
        delivery = queue.get(timeout=1)
        frame = PredictionFrame(delivery.task.model, [PredictionRow("model-output", "A", delivery.task.window.start,
                                                                    1.0)])
        lifecycle.ready_for(frame)
        with lifecycle.transaction() as c:
            lifecycle.finish(c, delivery.task, frame, 5)
            delivery.ack(c)
    failed = queue.get(timeout=1)  # pump-1 window 2
    with lifecycle.transaction() as c:
        lifecycle.fail(c, failed.task, "permanent: Gordo said\nUnexpected features")
        failed.ack(c)
    queue.close()
    return engine


def test_report_counts_states_backlog_failures_and_last_windows(populated):
    report = collect_status(populated)
    assert report.tasks == {"done": 2, "failed": 1, "queued": 2}
    assert (report.queue_size, report.queue_available) == (2, 2)
    assert report.oldest_queued_age_seconds >= 0
    later = collect_status(populated, now=datetime.now(timezone.utc) + timedelta(hours=2))
    assert later.oldest_queued_age_seconds >= 7200
    assert report.prediction_rows == 2
    assert [f.error for f in report.last_failures] == ["permanent: Gordo said Unexpected features"]
    assert report.last_predicted_window == {"pump-1": window(1).end.isoformat()}


def test_text_and_json_through_the_command(populated, tmp_path, db_url):
    config = write_config(tmp_path / "c.yaml", database={"url": db_url})
    text = latigo_ok(config, "status")
    assert "done 2, failed 1, queued 2" in text
    failure = "pump-1 2026-01-01T00:20:00+00:00 (runs 1, failed attempts 0): permanent: Gordo said Unexpected features"
    assert failure in text
    assert "alembic" not in text  # its plugin INFO lines are silenced
    data = json.loads(latigo_ok(config, "status", "--json", stderr=subprocess.DEVNULL))
    assert data["tasks"] == {"done": 2, "failed": 1, "queued": 2}
    assert data["last_predicted_window"] == {"pump-1": "2026-01-01T00:20:00+00:00"}
