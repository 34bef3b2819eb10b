"""`latigo status` over a database holding done, failed and queued tasks (text and JSON)."""

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.status import collect_status
from latigo.types import PredictionFrame, PredictionRow, Task, TimeRange
from tests.support.processes import REPO, child_env, latigo_ok, write_config

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
        lifecycle.predictions.ready_for(frame)
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


@pytest.fixture
def many(engine):
    """120 models with a done window at `now`, 30 of them also failing at the newest window, 25 late (their
    only done window three hours back), through the lifecycle as the scheduler and executors write them."""
    lifecycle = TaskLifecycle(engine)
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    recent, old = TimeRange(now - timedelta(minutes=10), now), TimeRange(now - timedelta(hours=3, minutes=10),
                                                                         now - timedelta(hours=3))
    newest = TimeRange(now, now + timedelta(minutes=10))
    with lifecycle.transaction() as c:
        for i in range(120):
            name = f"compressor-{i:03d}"
            task = Task(name, old if 90 <= i < 115 else recent)
            lifecycle.enqueue(c, [task])
            lifecycle.start(c, task, "exec")
            frame = PredictionFrame(name, [PredictionRow("model-output", "A", task.window.start, 1.0)])
            lifecycle.predictions.ready_for(frame)
            lifecycle.finish(c, task, frame, 5)
            if i < 30:
                failing = Task(name, newest)
                lifecycle.enqueue(c, [failing])
                lifecycle.start(c, failing, "exec")
                lifecycle.fail(c, failing, "permanent: Gordo said 400")
    return now


def test_text_fits_the_screen_and_says_how_many_more(engine, many):
    report = collect_status(engine, now=many + timedelta(minutes=1))
    assert len(report.models) == 120
    assert sum(m.late for m in report.models) == 25 and sum(m.failing for m in report.models) == 30
    for height in (12, 24, 50):
        text = report.to_text(lines=height)
        assert len(text.splitlines()) < height, (height, text)
        assert "more (--json lists them all)" in text
    text = report.to_text(lines=24)
    assert "models:           120 (25 late, 30 failing)" in text
    assert "late or failing models (55 of 120" in text
    assert "compressor-000" in text and "compressor-050" not in text  # up to date: not listed
    tall = report.to_text(lines=200)
    assert "more (--json" not in tall
    listed = [line.split()[0] for line in tall.splitlines()[tall.splitlines().index(
        next(line for line in tall.splitlines() if line.startswith("late or failing"))) + 1:]]
    assert listed == [f"compressor-{i:03d}" for i in list(range(30)) + list(range(90, 115))]


def test_one_model_or_project_and_every_value_in_json(engine, many, tmp_path, db_url):
    config = write_config(tmp_path / "c.yaml", database={"url": db_url})
    one = latigo_ok(config, "status", "--model", "compressor-050", stderr=subprocess.DEVNULL)
    assert "compressor-050" in one and "compressor-051" not in one and "[late" not in one
    assert "models:           1 (0 late, 0 failing)" in one
    failing = latigo_ok(config, "status", "--model", "default/compressor-003", stderr=subprocess.DEVNULL)
    assert "[failing]" in failing and "compressor-003" in failing
    data = json.loads(latigo_ok(config, "status", "--json", stderr=subprocess.DEVNULL))
    assert len(data["models"]) == 120
    assert {m["model"] for m in data["models"] if m["late"]} == {f"compressor-{i:03d}" for i in range(90, 115)}
    assert all(set(m) == {"project", "model", "last_done_end", "newest_state", "newest_window_end", "late",
                          "failing"} for m in data["models"])
    assert len(data["last_predicted_window"]) == 120
    process = subprocess.run([sys.executable, "-m", "latigo", "--config", str(config), "status", "--model", "nope"],
                             cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert process.returncode == 1 and "latigo status: no model nope in the ledger" in process.stderr
