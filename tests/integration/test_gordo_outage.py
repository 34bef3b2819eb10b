"""A REAL Gordo 6.0.4 server that goes away for minutes, behind a TCP proxy the test switches.

`latigo executor` runs on the default config (concurrency 8, 5 attempts, retry delays from 2 s) while the
proxy refuses connections for longer than every retry budget, then resets every connection once its
request arrived, then accepts and never answers. Every window must end done, none failed, no attempt
spent on the outage beyond the few calls that showed it, and the connections made while the server was
away must stay few (one probe at a time per executor, backoff capped at 30 s), not a stream.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from tests.conftest import create_pg_database, drop_pg_database
from tests.support.gordo_real import (
    TAGS,
    GordoRealServer,
    gordo_real_server_fixture,  # noqa: F401 - registers the session fixture `gordo_real_server`
    sensor_points,
    write_sensors,
)
from tests.support.influxd import InfluxServer
from tests.support.processes import latigo, latigo_ok, write_config
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.gordo_real, pytest.mark.slow, pytest.mark.integration]

T0 = datetime(2026, 3, 4, tzinfo=timezone.utc)
BACKFILL = (T0 + timedelta(hours=2), T0 + timedelta(hours=8))
OUTAGES = (("refuse", 90.0), ("reset", 40.0), ("blackhole", 60.0))
"""(proxy mode, seconds): each longer than the retry budget (2+4+8+16 s between 5 attempts); the
blackhole also longer than twice the read timeout (30 s), so its calls time out before it ends."""


@pytest.fixture(scope="module")
def sensors(influxd: InfluxServer) -> str:
    database = f"outage_{uuid.uuid4().hex[:8]}"
    write_sensors(influxd.url, database, sensor_points(TAGS, T0, T0 + timedelta(hours=9), seed=21))
    return database


@pytest.fixture
def pg_database() -> Iterator[str]:
    url = create_pg_database("latigo_outage")
    yield url
    drop_pg_database(url)


def tasks_of(database: str) -> list[Any]:
    engine = create_engine_for(DatabaseSettings(url=database))
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text("SELECT model, state, attempts, error FROM tasks")).all())
    finally:
        engine.dispose()


def test_minutes_without_gordo_fail_no_window_and_the_executor_backs_off(
    tmp_path: Path, gordo_real_server: GordoRealServer, influxd: InfluxServer, sensors: str, pg_database: str,
) -> None:
    with TcpProxy(gordo_real_server.host, gordo_real_server.port) as proxy:
        gordo = {"type": "gordo", "base_url": proxy.url, "project": gordo_real_server.project}
        config = write_config(
            tmp_path / "latigo.yaml",
            database={"url": pg_database},
            sensor_data={"type": "influx", "host": influxd.host, "port": influxd.port, "database": sensors,
                         "measurement": "sensors"},
            model_information=gordo, model_execution=gordo, metrics={"enabled": False},
        )  # executor: the defaults
        latigo_ok(config, "db", "upgrade")
        latigo_ok(config, "backfill", "--from", BACKFILL[0].isoformat(), "--to", BACKFILL[1].isoformat(),
                  "--no-progress", timeout=300)
        total = len(tasks_of(pg_database))
        executor = latigo(config, "executor", "--exit-when-idle", "20")
        figures: list[str] = []
        try:
            _wait(lambda: sum(t.state == "done" for t in tasks_of(pg_database)) >= 3, executor, 300)
            for mode, seconds in OUTAGES:
                proxy.set_mode(mode)
                began = time.monotonic()
                time.sleep(seconds)
                during = proxy.connections_since(began)
                now = tasks_of(pg_database)
                states = Counter(t.state for t in now)
                figures.append(f"{mode} for {seconds:.0f}s: {during} connections "
                               f"({during / seconds * 60:.1f} a minute), tasks {dict(states)}")
                proxy.set_mode("forward")
                assert states["failed"] == 0, (figures, [t for t in now if t.state == "failed"])
                if mode != "refuse":  # nothing is accepted while refusing, so nothing can be counted
                    # Opening takes the calls in flight plus the failures that open it; then one probe
                    # at a time, backing off 1, 2, 4, ... 30 s. Before: one connection every 0.9 s.
                    assert during <= 8 + 5 + 12, figures
                time.sleep(5)  # the server back between outages (a probe finds it)
            back = time.monotonic()
            _wait(lambda: sum(t.state == "done" for t in tasks_of(pg_database)) == total, executor, 600)
            figures.append(f"drained in {time.monotonic() - back:.1f}s after the last outage")
        finally:
            executor.terminate()
            output, _ = executor.communicate(timeout=60)
    tasks = tasks_of(pg_database)
    attempts = Counter(t.attempts for t in tasks)
    figures.append(f"tasks by attempts spent: {dict(sorted(attempts.items()))}")
    print("\n".join(figures))
    assert Counter(t.state for t in tasks) == Counter({"done": total}), [t for t in tasks if t.state != "done"]
    # The calls that meet an outage first wait for the breaker's verdict and are handed back like the later
    # ones; one that got none (fewer calls in flight than the breaker's threshold) is a retry like any other.
    assert max(attempts) <= 1 and attempts[0] >= total * 0.5, (attempts, figures)
    assert "is down" in output and "is back" in output, output[-3000:]


def _wait(condition: Any, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"the executor exited {process.returncode}:\n{output[-3000:]}")
        time.sleep(1.0)
    pytest.fail(f"not reached within {timeout:.0f}s")
