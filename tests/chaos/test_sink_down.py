"""Chaos 6b: a prediction sink that is down (an InfluxDB sink pointing at a port nothing listens on).

- `required: false` (best-effort, after the commit): every task is done, its predictions in the
  database; each failure is logged and counted in latigo_sink_failures_total.
- `required: true` (before the commit): tasks are retried by redelivery and none is done while the
  sink is down; a real influxd started on that port brings it back, and then every task is done and
  its points are in InfluxDB.

On PostgreSQL (the sink path does not depend on the database)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from latigo.storage.tables import TaskRecord
from tests.chaos.harness import REPORT, Probe, ScenarioResult, backfill_args, chaos_config, task_keys, wait_until
from tests.chaos.invariants import assert_invariants
from tests.support.influxd import CONFIG_TEMPLATE, INFLUXD, InfluxServer, influxd_available, influxql
from tests.support.postgres_cluster import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SINK_FAILED = "sink InfluxPredictionSink failed"
"""The warning for a best-effort write that failed for good (after its retries)."""


def influx_sink(port: int, required: bool) -> dict:
    return {"type": "influx", "database": "chaos", "host": "127.0.0.1", "port": port, "create_database": True,
            "retries": 1, "timeout": "2s", "required": required}


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = [float(match) for match in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE)]
    return sum(values)


def test_an_optional_sink_that_is_down_leaves_every_task_done(pg_database, procs, tmp_path):
    began = time.monotonic()
    models, windows = ["sink-a", "sink-b"], 4  # 8 tasks
    expected = task_keys(models, windows)
    metrics_port = free_port()
    config = chaos_config(tmp_path / "latigo.yaml", pg_database.url, models, concurrency=8,
                          predictions={"sinks": [influx_sink(free_port(), required=False)]})
    text = config.read_text().replace("enabled: false", f"enabled: true\n  host: 127.0.0.1\n  port: {metrics_port}")
    config.write_text(text)
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(pg_database.url)
    executor = procs.start(config, "executor")
    wait_until(lambda: probe.drained(len(expected)), 60, "every task to be done", procs.tails)
    wait_until(lambda: executor.count(SINK_FAILED) >= len(expected), 30, "every sink write to fail", procs.tails)
    executor.wait_started(30)
    served = re.search(r"serving /\S+ /\S+ /metrics on [^ ]*:(\d+)", executor.output())
    failures = metric(int(served.group(1)) if served else metrics_port, "latigo_sink_failures_total")
    assert procs.stop([executor]) == [0], executor.tail()
    probe.close()

    summary = assert_invariants(pg_database.url, expected, max_runs=1)
    logged = executor.count(SINK_FAILED)
    assert logged == len(expected), executor.tail()
    assert failures == len(expected), failures
    REPORT.add(ScenarioResult(
        "optional sink down", pg_database.backend, summary.tasks, summary.done, summary.failed, summary.runs_max,
        summary.lost, summary.attempts, summary.dead_letters, "InfluxDB sink on a closed port (required: false)",
        procs.log_count("database fault while"), time.monotonic() - began,
        {"sink failures logged": logged, "latigo_sink_failures_total": failures}))


def start_influxd_on(port: int) -> InfluxServer:
    """A throwaway influxd whose HTTP API listens on `port` (tests/support/influxd.py picks its own)."""
    directory = Path(tempfile.mkdtemp(prefix="latigo-chaos-influxd-"))
    config = directory / "influxdb.conf"
    config.write_text(CONFIG_TEMPLATE.format(dir=directory, http_port=port, rpc_port=free_port()))
    log_path = directory / "influxd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([INFLUXD, "run", "-config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = InfluxServer("127.0.0.1", port, directory, process, log_path)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"influxd exited {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/ping", timeout=1) as response:
                return response.status == 204
        except OSError:
            return False

    try:
        wait_until(answers, 30, f"influxd on port {port}", server.log_tail, every=0.05)
    except BaseException:
        server.stop()
        raise
    return server


def test_a_required_sink_that_is_down_retries_its_tasks_until_it_comes_back(pg_database, procs, tmp_path):
    if not influxd_available():
        reason = f"{INFLUXD} is not installed (Debian package influxdb)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this test")
        pytest.skip(reason)
    began = time.monotonic()
    models, windows = ["req-a", "req-b"], 3  # 6 tasks
    expected = task_keys(models, windows)
    port = free_port()
    config = chaos_config(tmp_path / "latigo.yaml", pg_database.url, models, concurrency=6,
                          executor={"retry_base_delay": "500ms", "retry_max_delay": "1s", "max_attempts": 50},
                          predictions={"sinks": [influx_sink(port, required=True)]})
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(pg_database.url)
    executor = procs.start(config, "executor")
    wait_until(lambda: probe.count(TaskRecord.attempts >= 3) == len(expected), 60,
               "every task to be retried three times while the sink is down", procs.tails)
    assert probe.done() == 0, "a task was done while its required sink was down"
    down_attempts = probe.scalar(TaskRecord.__table__.select().with_only_columns(
        TaskRecord.attempts).order_by(TaskRecord.attempts).limit(1))

    influx = start_influxd_on(port)
    try:
        wait_until(lambda: probe.drained(len(expected)), 60, "the tasks to be done once the sink is back",
                   lambda: f"{probe.snapshot()}\n{procs.tails()}")
        assert procs.stop([executor]) == [0], executor.tail()
        probe.close()
        result = influxql(influx.url, 'SELECT count("value") FROM /.*/', database="chaos")
        points = sum(int(series["values"][0][1]) for series in result.get("series", []))
    finally:
        influx.stop()

    summary = assert_invariants(pg_database.url, expected, max_runs=60, max_attempts=None)
    assert points == summary.predictions, (points, summary.predictions)
    REPORT.add(ScenarioResult(
        "required sink down, then back", pg_database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        "InfluxDB sink on a closed port (required: true), then influxd started on it",
        procs.log_count("database fault while"), time.monotonic() - began,
        {"attempts each while down (at least)": down_attempts, "points in InfluxDB": points}))
