"""Many Gordo projects, one latigo: two REAL Gordo 6.0.4 servers (plant-a, plant-b) behind one ingress.

Both projects have a model `pump-1`, built differently; plant-b also has `pump-2`. latigo runs as a user
runs it (`latigo db upgrade`, `latigo backfill`, `latigo executor`) with `projects: [plant-a, plant-b]`
over the ingress's one base URL and the default schedule, reading a real influxd. Every stored value must
equal gordo-client 6.3.0's, run against the model's own project through the same ingress, and no value
gordo-client has inside latigo's covered span may be missing.

The second test rebuilds plant-a while an executor runs: the windows queued after the rebuild must be
predicted by the new revision (recorded in the ledger), equal to gordo-client against the new models, and
none may fail or spend an attempt on the revision that disappeared (410)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.timegrid import predicted_buckets
from latigo.types import TimeRange
from tests.conftest import create_pg_database, drop_pg_database
from tests.support.gordo_ingress import (
    NEXT_REVISION,
    PLANT_A,
    PLANT_B,
    GordoIngress,
    build_project,
    gordo_ingress_fixture,  # noqa: F401 - registers the session fixture `gordo_ingress`
)
from tests.support.gordo_real import REVISION, TAGS, gordo_client_predict, sensor_points, write_sensors
from tests.support.influxd import InfluxServer, serve_for_tests
from tests.support.processes import latigo, latigo_ok, write_config

pytestmark = [pytest.mark.gordo_real, pytest.mark.slow, pytest.mark.integration]

UTC = timezone.utc
T0 = datetime(2026, 3, 3, tzinfo=UTC)
RESOLUTION = timedelta(minutes=10)
DATA = TimeRange(T0, T0 + timedelta(hours=7))
ORACLE = TimeRange(T0 + timedelta(hours=1), T0 + timedelta(hours=6))
"""gordo-client's range: an hour of clean data on either side of every window latigo predicts."""
FIRST = TimeRange(T0 + timedelta(hours=2), T0 + timedelta(hours=3))
SECOND = TimeRange(T0 + timedelta(hours=3), T0 + timedelta(hours=5))
"""`latigo backfill` ranges: FIRST before plant-a's rebuild, SECOND after it (in the revision test)."""
MODELS = {PLANT_A: ("pump-1",), PLANT_B: ("pump-1", "pump-2")}
OUTPUT_GROUPS = ("model-output", "total-anomaly-scaled", "tag-anomaly-scaled", "anomaly-confidence",
                 "total-anomaly-confidence")
"""latigo's default `predictions.outputs` (gordo-client also returns model-input, which latigo does not store)."""
TOLERANCE = 1e-9
"""Every model here is scikit-learn (float64)."""
CLI_TIMEOUT = 900.0

Key = tuple[str, str, pd.Timestamp]  # (output group, tag, timestamp)


@pytest.fixture(scope="module")
def influxd() -> Iterator[InfluxServer]:
    yield from serve_for_tests()


@pytest.fixture(scope="module")
def sensors(influxd: InfluxServer) -> str:
    database = f"projects_{uuid.uuid4().hex[:8]}"
    write_sensors(influxd.url, database, sensor_points(TAGS, DATA.start, DATA.end, seed=20))
    return database


@pytest.fixture
def pg_database() -> Iterator[str]:
    url = create_pg_database("latigo_projects")
    yield url
    drop_pg_database(url)


def oracle(ingress: GordoIngress, influxd: InfluxServer, sensors: str, project: str) -> dict[str, dict[Key, float]]:
    """gordo-client's values over ORACLE for every model of `project`, asked through the ingress."""
    models = MODELS[project]
    result = gordo_client_predict(ingress.client_target(project), influxd.url, sensors, "sensors",
                                  ORACLE.start, ORACLE.end, list(models))
    values = {}
    for model in models:
        answer = result[model]
        assert answer["exception"] is None and answer["errors"] == [], (project, model, answer["exception"])
        values[model] = {(group, column, pd.Timestamp(ts)): float(value)
                         for group, column, ts, value in answer["rows"] if group not in ("start", "end")}
        assert values[model], f"gordo-client got no rows for {project}/{model}"
    return values


def config_for(tmp_path: Path, database: str, ingress: GordoIngress, influxd: InfluxServer, sensors: str) -> Path:
    gordo = {"type": "gordo", "base_url": ingress.base_url, "projects": list(MODELS)}
    return write_config(
        tmp_path / "latigo.yaml",
        database={"url": database},
        sensor_data={"type": "influx", "host": influxd.host, "port": influxd.port, "database": sensors,
                     "measurement": "sensors"},
        model_information=gordo,
        model_execution=gordo,
        metrics={"enabled": False},
    )  # scheduler, executor and predictions: their defaults (interval 30m, delay 5m, every output group)


def run_latigo(config: Path, *args: str) -> str:
    return latigo_ok(config, *args, timeout=CLI_TIMEOUT)


def ledger(database: str) -> tuple[list[Any], list[Any]]:
    engine = create_engine_for(DatabaseSettings(url=database))
    try:
        with engine.connect() as connection:
            tasks = connection.execute(sa.text(
                "SELECT project, model, window_start, window_end, state, attempts, error, revision "
                "FROM tasks")).all()
            stored = connection.execute(sa.text(
                "SELECT project, model, output, tag, ts, value FROM predictions")).all()
    finally:
        engine.dispose()
    return tasks, stored


def differences(stored: dict[Key, float], expected: dict[Key, float], span: TimeRange) -> list[str]:
    """Each stored value against gordo-client's, and gordo-client's keys in `span` that latigo lacks."""
    problems = []
    for key, value in sorted(stored.items()):
        other = expected.get(key)
        if other is None:
            problems.append(f"extra {key}")
        elif not abs(value - other) <= TOLERANCE:
            problems.append(f"differs {key}: latigo {value!r} gordo-client {other!r}")
    start, end = pd.Timestamp(span.start), pd.Timestamp(span.end)
    problems += [f"missing {key}" for key in sorted(expected)
                 if key[0] in OUTPUT_GROUPS and start <= key[2] < end and key not in stored]
    return problems


def covered(tasks: list[Any]) -> TimeRange:
    """The bucket starts that complete inside the tasks' windows (contiguous here)."""
    span = predicted_buckets(TimeRange(min(t.window_start for t in tasks), max(t.window_end for t in tasks)),
                             RESOLUTION)
    assert span is not None
    return span


def values_of(stored: list[Any], project: str, model: str, span: TimeRange | None = None) -> dict[Key, float]:
    rows = {(r.output, r.tag, pd.Timestamp(r.ts)): float(r.value) for r in stored
            if r.project == project and r.model == model}
    if span is None:
        return rows
    return {k: v for k, v in rows.items() if pd.Timestamp(span.start) <= k[2] < pd.Timestamp(span.end)}


def test_each_project_is_predicted_apart_and_equals_gordo_client(
    tmp_path: Path, gordo_ingress: GordoIngress, influxd: InfluxServer, sensors: str, pg_database: str,
) -> None:
    expected = {project: oracle(gordo_ingress, influxd, sensors, project) for project in MODELS}
    config = config_for(tmp_path, pg_database, gordo_ingress, influxd, sensors)

    run_latigo(config, "db", "upgrade")
    run_latigo(config, "backfill", "--from", FIRST.start.isoformat(), "--to", SECOND.end.isoformat(),
               "--no-progress")
    run_latigo(config, "executor", "--exit-when-idle", "5")
    listed = run_latigo(config, "models", "list")
    tasks, stored = ledger(pg_database)

    keys = {(t.project, t.model) for t in tasks}
    assert keys == {(p, m) for p, models in MODELS.items() for m in models}
    windows = {(t.window_start, t.window_end) for t in tasks}
    assert len(windows) >= 5 and len(tasks) == len(keys) * len(windows)  # every model, every window, once
    assert [(t.project, t.model, t.state, t.error) for t in tasks if t.state != "done"] == []
    assert {t.revision for t in tasks} == {REVISION}
    assert Counter(t.attempts for t in tasks) == Counter({0: len(tasks)})

    span = covered(tasks)
    for project, models in MODELS.items():
        for model in models:
            mine = values_of(stored, project, model)
            assert mine, (project, model)
            assert differences(mine, expected[project][model], span) == [], (project, model)
    # The two pump-1s are different models and were stored apart.
    a, b = values_of(stored, PLANT_A, "pump-1"), values_of(stored, PLANT_B, "pump-1")
    assert a.keys() == b.keys()
    assert sum(abs(a[k] - b[k]) > 1e-6 for k in a) > len(a) // 2
    # `latigo models list` groups the models by project.
    assert listed.index(PLANT_A) < listed.index(PLANT_B), listed
    assert listed.count("pump-1") == 2 and listed.count("pump-2") == 1, listed


def wait_done(database: str, count: int, process: subprocess.Popen, timeout: float = CLI_TIMEOUT) -> list[Any]:
    """The tasks once `count` of them are done (fails early when the executor exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks, _ = ledger(database)
        if sum(t.state == "done" for t in tasks) >= count:
            return tasks
        if process.poll() is not None:
            pytest.fail(f"the executor exited {process.returncode} with {Counter(t.state for t in tasks)}")
        time.sleep(1.0)
    pytest.fail(f"fewer than {count} tasks done within {timeout:.0f}s")


def test_a_rebuilt_project_is_picked_up_mid_run_and_no_window_fails(
    tmp_path: Path, gordo_ingress: GordoIngress, influxd: InfluxServer, sensors: str, pg_database: str,
) -> None:
    before = {project: oracle(gordo_ingress, influxd, sensors, project) for project in MODELS}
    config = config_for(tmp_path, pg_database, gordo_ingress, influxd, sensors)
    run_latigo(config, "db", "upgrade")
    run_latigo(config, "backfill", "--from", FIRST.start.isoformat(), "--to", FIRST.end.isoformat(),
               "--no-progress")
    first_count = len(ledger(pg_database)[0])
    assert first_count > 0

    executor = latigo(config, "executor")  # runs through the rebuild: its revision and metadata are cached
    try:
        wait_done(pg_database, first_count, executor)
        gordo_ingress.restart_project(PLANT_A, build_project(PLANT_A, NEXT_REVISION))
        try:
            after = oracle(gordo_ingress, influxd, sensors, PLANT_A)
            run_latigo(config, "backfill", "--from", SECOND.start.isoformat(), "--to", SECOND.end.isoformat(),
                       "--no-progress")
            total = len(ledger(pg_database)[0])
            tasks = wait_done(pg_database, total, executor)
        finally:
            gordo_ingress.restart_project(PLANT_A, build_project(PLANT_A))
    finally:
        executor.terminate()
        output, _ = executor.communicate(timeout=60)
    _, stored = ledger(pg_database)

    assert executor.returncode == 0, output[-4000:]
    assert [(t.project, t.model, t.state, t.error) for t in tasks if t.state != "done"] == []
    assert Counter(t.attempts for t in tasks) == Counter({0: len(tasks)}), "an attempt was spent on the rebuild"
    first = [t for t in tasks if t.window_end <= FIRST.end]
    second = [t for t in tasks if t.window_start >= FIRST.end]
    assert first and second and len(first) + len(second) == len(tasks)
    assert {t.revision for t in first} == {REVISION}
    assert {(t.project, t.revision) for t in second} == {(PLANT_A, NEXT_REVISION), (PLANT_B, REVISION)}

    first_span, second_span = covered(first), covered(second)
    for project, models in MODELS.items():
        for model in models:
            old = values_of(stored, project, model, first_span)
            assert differences(old, before[project][model], first_span) == [], (project, model, "before")
            new = values_of(stored, project, model, second_span)
            want = after[model] if project == PLANT_A else before[project][model]
            assert differences(new, want, second_span) == [], (project, model, "after")
    # plant-a's new model is another model: its values moved (PCA(3) instead of PCA(2)).
    moved = [k for k, v in values_of(stored, PLANT_A, "pump-1", second_span).items()
             if k[0] == "model-output" and abs(v - before[PLANT_A]["pump-1"][k]) > 1e-6]
    assert moved
    assert "revision" in output and NEXT_REVISION in output, "the executor did not log the revision change"
