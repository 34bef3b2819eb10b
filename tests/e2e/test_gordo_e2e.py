"""The whole loop against Gordo: backfill → database queue → `latigo executor` processes → the Gordo
provider against the local Gordo server → predictions in PostgreSQL, checked value by value."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import Prediction, TaskRecord
from tests.support.gordo_server import GordoServer, ModelSpec, ramp_value, utc
from tests.support.processes import latigo_ok, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
START = utc("2026-02-01T00:00:00")
END = START + timedelta(hours=3)
TAGS = ["TAG-1", "TAG-2", "TAG-3", "TAG-4"]
OUTPUTS = ["model-output", "total-anomaly-scaled", "anomaly-confidence"]


@pytest.fixture
def gordo():
    models = [ModelSpec("model-a"), ModelSpec("lstm", model_offset=3), ModelSpec("regressor", anomaly=False),
              ModelSpec("half-deployed", has_metadata=False)]
    with GordoServer(models=models) as server:
        yield server


def config_for(tmp_path, url, gordo: GordoServer):
    section = {"type": "gordo", "base_url": gordo.url, "project": gordo.project, "batch_size": 4,
               "retry_base_delay": "10ms", "max_retries": 3}
    return write_config(
        tmp_path / "latigo.yaml",
        database={"url": url},
        task_queue={"type": "database", "poll_interval": "200ms"},
        sensor_data={"type": "tests.support.gordo_server:RampSensors"},
        model_information=section,
        model_execution=section,
        scheduler={"interval": "30m", "delay": "0s"},
        executor={"concurrency": 4, "shutdown_timeout": "10s", "poll_timeout": "500ms",
                  "retry_base_delay": "50ms"},
        predictions={"outputs": OUTPUTS},
        metrics={"enabled": False},
    )


def test_backfilled_windows_are_predicted_through_gordo_into_postgresql(tmp_path, pg_url, gordo):
    from tests.conftest import truncate_all

    engine = create_engine_for(DatabaseSettings(url=pg_url))
    truncate_all(engine)
    gordo.fail_next(2, status=503, match="lstm/anomaly")  # transient trouble on the way
    config = config_for(tmp_path, pg_url, gordo)

    latigo_ok(config, "db", "upgrade")
    latigo_ok(config, "backfill", "--from", START.isoformat(), "--to", END.isoformat(), "--no-progress")
    latigo_ok(config, "executor", "--exit-when-idle", "2", timeout=300)

    with engine.connect() as c:
        tasks = c.execute(sa.select(TaskRecord.model, TaskRecord.state, TaskRecord.window_start)).all()
        rows = c.execute(sa.select(Prediction.model, Prediction.output, Prediction.tag, Prediction.ts,
                                   Prediction.value)).all()
    engine.dispose()

    windows = list(pd.date_range(START, END, freq="30min", inclusive="left").to_pydatetime())
    models = ["lstm", "model-a", "regressor"]  # half-deployed is listed but has no metadata: skipped
    assert sorted((t.model, t.window_start) for t in tasks) == sorted((m, w) for m in models for w in windows)
    assert {t.state for t in tasks} == {"done"}

    stamps = list(pd.date_range(START, END, freq="10min", inclusive="left").to_pydatetime())
    by_model = {m: [r for r in rows if r.model == m] for m in models}
    for model in ("model-a", "lstm"):
        keys = {(r.output, r.tag, r.ts) for r in by_model[model]}
        expected = {(o, t, ts) for ts in stamps for o, t in
                    [("model-output", tag) for tag in TAGS] + [("anomaly-confidence", tag) for tag in TAGS]
                    + [("total-anomaly-scaled", "total-anomaly-scaled")]}
        assert keys == expected, model  # every row of every window once, look-back rows trimmed
    assert {r.output for r in by_model["regressor"]} == {"model-output"}  # /prediction fallback has no anomalies
    assert len(by_model["regressor"]) == len(stamps) * len(TAGS)

    for row in rows:
        if row.output == "model-output":
            mean = sum(ramp_value(tag, pd.Timestamp(row.ts)) for tag in TAGS) / len(TAGS)
            assert row.value == pytest.approx(mean), row

    lstm_posts = [r for r in gordo.recorded("/lstm/anomaly/prediction", method="POST")]
    assert [r.status for r in lstm_posts].count(503) == 2
    assert all(r.query.get("revision") == "1" for r in gordo.recorded(method="POST"))
