"""Anomaly episodes from stored predictions, and the webhook that announces them, against a real database
and a local HTTP receiver."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler

import pytest

from latigo.alerts import AnomalyAlerts
from latigo.anomalies import find_episodes, runs_above
from latigo.config import load_config
from latigo.errors import ConfigError
from latigo.lifecycle import TaskLifecycle
from latigo.settings import AlertSettings
from latigo.storage.db import write_transaction
from latigo.types import PredictionFrame, PredictionRow
from tests.support.loopback import LoopbackServer
from tests.support.processes import latigo, write_config

pytestmark = pytest.mark.integration
NOW = datetime.now(timezone.utc).replace(second=0, microsecond=0)
STEP = timedelta(minutes=10)
T0 = NOW - 40 * STEP


def store(engine, model, totals, tags=None):
    """total-anomaly-confidence per bucket from T0, and anomaly-confidence per tag."""
    rows = [PredictionRow("total-anomaly-confidence", "total-anomaly-confidence", T0 + i * STEP, v)
            for i, v in enumerate(totals)]
    for tag, values in (tags or {}).items():
        rows += [PredictionRow("anomaly-confidence", tag, T0 + i * STEP, v) for i, v in enumerate(values)]
    frame = PredictionFrame(model, rows)
    lifecycle = TaskLifecycle(engine)
    lifecycle.predictions.ready_for(frame)
    with write_transaction(engine) as connection:
        from latigo.storage.predictions import write_predictions

        write_predictions(connection, frame)


def test_runs_above_one_are_episodes_and_a_hole_or_a_dip_ends_them():
    rows = [(T0 + i * STEP, v) for i, v in enumerate([0.5, 1.2, 3.0, 1.1, 0.9, 2.0, 2.5])]
    rows.insert(7, (T0 + 10 * STEP, 4.0))  # three buckets missing: a new episode
    episodes = runs_above("m", rows)
    assert [(e.start, e.end, e.peak, e.buckets) for e in episodes] == [
        (T0 + STEP, T0 + 3 * STEP, 3.0, 3), (T0 + 5 * STEP, T0 + 6 * STEP, 2.5, 2), (T0 + 10 * STEP, None, 4.0, 1)]


def test_episodes_come_from_the_stored_predictions_with_their_top_tags(engine):
    store(engine, "pump-a", [0.2] * 5 + [1.5, 2.5, 1.8] + [0.3] * 5,
          {"T1": [0.1] * 5 + [0.5, 0.9, 0.4] + [0.1] * 5, "T2": [0.1] * 5 + [2.0, 3.5, 2.2] + [0.1] * 5,
           "T3": [0.1] * 13})
    store(engine, "pump-b", [0.5] * 10 + [1.3, 1.4])  # still above at the newest prediction
    store(engine, "<script>", [0.1] * 12)
    with engine.connect() as connection:
        episodes = find_episodes(connection, NOW - timedelta(days=1))
    by_model = {e.model: e for e in episodes}
    assert set(by_model) == {"pump-a", "pump-b"}
    a = by_model["pump-a"]
    assert (a.start, a.end, a.peak, a.peak_at) == (T0 + 5 * STEP, T0 + 7 * STEP, 2.5, T0 + 6 * STEP)
    assert [tag for tag, _ in a.top_tags] == ["T2", "T1", "T3"] and a.top_tags[0][1] == 3.5
    assert by_model["pump-b"].end is None
    with engine.connect() as connection:
        assert [e.model for e in find_episodes(connection, NOW - timedelta(days=1), ["pump-b"])] == ["pump-b"]


class Receiver(LoopbackServer):
    """An HTTP endpoint that records what it is sent; it can fail the next N posts."""

    def __init__(self) -> None:
        self.received: list[tuple[dict, str]] = []
        self.fail_next = 0
        self.lock = threading.Lock()

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    if receiver.fail_next:
                        receiver.fail_next -= 1
                        status = 503
                    else:
                        receiver.received.append((body, self.headers["Idempotency-Key"]))
                        status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.handler = Handler


def test_the_webhook_hears_start_and_end_once_each_even_when_posts_fail_or_checks_repeat(engine):
    store(engine, "pump-a", [0.2] * 5 + [1.5, 2.5] + [0.3] * 3)  # ended
    store(engine, "pump-b", [0.2] * 8 + [1.2, 1.3])  # ongoing
    with Receiver() as receiver:
        settings = AlertSettings(webhook_url=f"{receiver.origin}/hook", retries=0, min_buckets=1, min_peak=1.0)
        alerts = AnomalyAlerts(settings, engine)  # every episode announced: the claims are what is tested here
        receiver.fail_next = 1  # the first post fails (no retry here): tried again at the next check
        first = alerts.check(NOW)
        second = alerts.check(NOW)
        third = AnomalyAlerts(settings, engine).check(NOW)  # another process, or a restart
        assert first + second + third == 3 and third == 0
        events = sorted((body["model"], body["event"]) for body, _ in receiver.received)
        assert events == [("pump-a", "anomaly_ended"), ("pump-a", "anomaly_started"), ("pump-b", "anomaly_started")]
        keys = [key for _, key in receiver.received]
        assert len(set(keys)) == 3
        body = next(body for body, _ in receiver.received if body["event"] == "anomaly_ended")
        assert body["peak"] == 2.5 and body["end"] == (T0 + 6 * STEP).isoformat()
        store(engine, "pump-b", [0.2] * 8 + [1.2, 1.3, 0.4])  # pump-b's episode ends
        assert alerts.check(NOW) == 1
        assert sorted((body["model"], body["event"]) for body, _ in receiver.received)[-1] == ("pump-b",
                                                                                              "anomaly_started")
        assert ("pump-b", "anomaly_ended") in {(body["model"], body["event"]) for body, _ in receiver.received}


def test_latigo_anomalies_lists_episodes(db_url, engine, tmp_path):
    store(engine, "pump-a", [0.2] * 5 + [1.5, 2.5] + [0.3] * 3)
    config = write_config(tmp_path / "c.yaml", database={"url": db_url})
    process = latigo(config, "anomalies", "--since", "1d", "--json")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    (episode,) = json.loads(output)
    assert (episode["model"], episode["peak"], episode["buckets"]) == ("pump-a", 2.5, 2)
    process = latigo(config, "anomalies", "--since", "1d")
    text, _ = process.communicate(timeout=60)
    assert text.startswith("pump-a  ") and "peak 2.50" in text


def test_the_database_finds_the_same_episodes_as_the_rows_read_one_by_one(engine):
    """On PostgreSQL find_episodes reads only the rows around episodes (window functions); whatever the
    values, dips, holes and newest buckets, the episodes are runs_above's over every stored row."""
    import random

    rng = random.Random(7)
    expected = []
    for index in range(12):
        values = [rng.choice([0.3, 0.9, 1.0, 1.04, 1.6, 3.2]) for _ in range(40)]
        kept = [(T0 + i * STEP, v) for i, v in enumerate(values) if rng.random() > 0.12]  # holes of 1-3 buckets
        name = f"m-{index}"
        frame = PredictionFrame(name, [PredictionRow("total-anomaly-confidence", "total-anomaly-confidence", ts, v)
                                       for ts, v in kept])
        TaskLifecycle(engine).predictions.ready_for(frame)
        with write_transaction(engine) as connection:
            from latigo.storage.predictions import write_predictions

            write_predictions(connection, frame)
        expected += runs_above(name, kept)
    assert any(e.end is None for e in expected) and len(expected) > 30
    with engine.connect() as connection:
        found = find_episodes(connection, T0)
    key = lambda e: (e.model, e.start, e.end, e.peak, e.peak_at, e.buckets)  # noqa: E731
    assert sorted(map(key, found)) == sorted(map(key, expected))


def test_by_default_a_blip_pages_nobody_and_a_dip_does_not_end_an_episode(engine, tmp_path):
    """The demo's webhook heard single buckets at 1.04, 1.11 and 1.26: those stay in `latigo anomalies` but
    are not announced; a long episode with a one-bucket dip is announced once, started and ended."""
    store(engine, "blip-a", [0.3] * 5 + [1.04] + [0.3] * 5)
    store(engine, "blip-b", [0.3] * 8 + [1.11, 0.5, 0.3])
    store(engine, "blip-c", [0.3] * 2 + [1.26] + [0.3] * 8)
    store(engine, "spike", [0.3] * 3 + [6.5] + [0.3] * 8)  # one bucket, but high: announced
    store(engine, "long", [0.3] * 4 + [1.5, 1.6, 1.4, 0.8, 1.7, 1.5] + [0.3] * 6)  # a dip at 0.8
    store(engine, "still-on", [0.3] * 30 + [1.2, 1.3, 1.2, 1.4])  # 4 buckets, newest above: started only
    with engine.connect() as connection:
        every = find_episodes(connection, NOW - timedelta(days=1))
    assert sorted(e.model for e in every) == sorted(["blip-a", "blip-b", "blip-c", "spike", "long", "long",
                                                     "still-on"])
    with Receiver() as receiver:
        settings = load_config(write_config(tmp_path / "c.yaml", alerts={"webhook_url": f"{receiver.origin}/h"}),
                               env={}).alerts
        assert (settings.min_buckets, settings.min_peak, settings.end_after) == (3, 2.0, timedelta(minutes=30))
        assert AnomalyAlerts(settings, engine).check(NOW) == 5
        events = sorted((body["model"], body["event"]) for body, _ in receiver.received)
        assert events == [("long", "anomaly_ended"), ("long", "anomaly_started"), ("spike", "anomaly_ended"),
                          ("spike", "anomaly_started"), ("still-on", "anomaly_started")]
        ended = next(body for body, _ in receiver.received if body["event"] == "anomaly_ended"
                     and body["model"] == "long")
        assert (ended["start"], ended["end"], ended["buckets"], ended["peak"]) == (
            (T0 + 4 * STEP).isoformat(), (T0 + 9 * STEP).isoformat(), 5, 1.7)
    with pytest.raises(ConfigError, match="alerts.min_peak"):
        load_config(write_config(tmp_path / "bad.yaml", alerts={"min_peak": 0.5}), env={})
