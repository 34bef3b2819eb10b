"""Production latigo's loop, end to end: sensor data from the Data API test server, a real Gordo 6.0.4 server,
predictions into PostgreSQL and, under `prevent` naming, into the Data API (read back with the official
client), the Metadata API told once per model revision. `latigo backfill` and `latigo executor` run as
processes; the requests each task cost are printed (run with -s to see them)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import Prediction, PredictionMetadataRecord, TaskRecord
from tests.support.data_api_server import DataApiServer, Series, rfc3339
from tests.support.gordo_real import (
    TAGS,
    GordoRealServer,
    gordo_real_server_fixture,  # noqa: F401 - registers the session fixture `gordo_real_server`
    sensor_points,
)
from tests.support.metadata_api_server import MetadataApiServer
from tests.support.omnia_client import official_client
from tests.support.processes import latigo_ok, write_config

pytestmark = [pytest.mark.integration, pytest.mark.gordo_real, pytest.mark.slow]

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
START, END = T0 + timedelta(hours=2), T0 + timedelta(hours=4)
MODELS = ("pca-model", "lstm-model")
PLANT = "LAT"
KEY = "prevent-key"


@pytest.fixture
def data_api():
    series = []
    for tag, points in sensor_points(TAGS, T0, T0 + timedelta(hours=5)).items():
        series.append(Series(name=tag, facility=PLANT, unit="degC", points=[
            {"time": rfc3339(moment), "value": value, "status": 192} for moment, value in points]))
    with DataApiServer(series, page_size=200) as api:
        yield api


@pytest.fixture
def prevent():
    with MetadataApiServer(projects=["latigo-test"], subscription_key=KEY) as api:
        yield api


def kind(method: str, path: str, base: str) -> str:
    rest = path[len(base):].strip("/")
    if method == "GET" and not rest:
        return "lookup by name"
    if method == "POST" and not rest:
        return "create series"
    return f"{method} /{rest}"


def test_real_gordo_with_the_data_api_as_source_and_sink_and_prevent_told_once(
        tmp_path, pg_url, gordo_real_server: GordoRealServer, data_api, prevent):
    from tests.conftest import truncate_all

    engine = create_engine_for(DatabaseSettings(url=pg_url))
    truncate_all(engine)
    gordo = {"type": "gordo", "base_url": gordo_real_server.base_url, "project": gordo_real_server.project,
             "retry_base_delay": "10ms"}
    config = write_config(
        tmp_path / "latigo.yaml",
        database={"url": pg_url},
        task_queue={"type": "database", "poll_interval": "200ms"},
        sensor_data={"type": "data_api", "base_url": data_api.url, "facility": PLANT},
        model_information=gordo, model_execution=gordo,
        scheduler={"interval": "30m", "delay": "0s"},
        executor={"concurrency": 2, "shutdown_timeout": "30s", "poll_timeout": "500ms", "retry_base_delay": "50ms"},
        predictions={"sinks": [{"type": "data_api", "base_url": data_api.url, "naming": "prevent",
                                "required": True}]},
        prediction_metadata={"type": "metadata_api", "base_url": prevent.url, "subscription_key": KEY},
        metrics={"enabled": False},
    )
    latigo_ok(config, "db", "upgrade")
    latigo_ok(config, "backfill", "--from", START.isoformat(), "--to", END.isoformat(), "--no-progress",
              *[arg for model in MODELS for arg in ("--model", model)])
    latigo_ok(config, "executor", "--exit-when-idle", "3", timeout=600)
    base = data_api.url[len(data_api.origin):]
    counts = Counter(kind(r.method, r.path, base) for r in data_api.requests)  # latigo's, before the checks' own

    with engine.connect() as c:
        tasks = c.execute(sa.select(TaskRecord.model, TaskRecord.state, TaskRecord.revision)).all()
        rows = c.execute(sa.select(Prediction.model, Prediction.output, Prediction.tag, Prediction.ts,
                                   Prediction.value)).all()
        records = c.execute(sa.select(PredictionMetadataRecord.model, PredictionMetadataRecord.revision,
                                      PredictionMetadataRecord.model_id)).all()
    engine.dispose()
    assert len(tasks) == 4 * len(MODELS) and {t.state for t in tasks} == {"done"}, tasks
    assert {t.revision for t in tasks} == {gordo_real_server.revision}

    # every stored prediction is in the Data API under its prevent name, read back with the official client
    client = official_client(data_api)
    by_series: dict[str, dict[str, float]] = {}
    for row in rows:
        subject = f"{TAGS[0]}.INDICATOR" if row.tag in ("", row.output) else row.tag
        by_series.setdefault(f"{subject}|{row.model}|{row.output}", {})[rfc3339(row.ts)] = row.value
    assert len(by_series) == len(MODELS) * (3 * len(TAGS) + 2)  # 3 groups per tag, 2 totals, per model
    for name, expected in by_series.items():
        [series] = client.search_timeseries(name=name, facility=PLANT)["data"]["items"]
        answer = client.get_multi_datapoints([{"id": series["id"], "startTime": rfc3339(START),
                                               "endTime": rfc3339(END), "limit": 100000}])
        got = {p["time"]: p["value"] for p in answer["data"]["items"][0]["datapoints"]}
        assert got == pytest.approx(expected), name
        assert series["step"] is True and series["externalId"] == name
        if name.endswith("|model-output"):
            assert series["unit"] == "degC" and series["description"] == f"Gordo model-output - {name.split('|')[0]}"

    # the Metadata API: one post per model and revision, every field checked by its server
    accepted = prevent.accepted()
    assert sorted((b["model_name"], b["revision"]) for b in accepted) == sorted(
        (m, gordo_real_server.revision) for m in MODELS)
    assert len(prevent.posts) == len(MODELS)
    ids = {tag: data_api.by_name(tag, PLANT).id for tag in TAGS}
    for body in accepted:
        assert body["project_name"] == "latigo-test"
        assert body["input_tags"] == [{"name": tag, "time_series_id": ids[tag]} for tag in TAGS]
        assert {t["name"] for t in body["output_tags"]} == {n for n in by_series if f"|{body['model_name']}|" in n}
        assert body["training_time_from"] == "2026-01-01T00:00:00+00:00"
    assert sorted((r.model, r.revision, r.model_id) for r in records) == sorted(
        (b["model_name"], b["revision"], prevent.model_ids[("latigo-test", b["model_name"], b["revision"])])
        for b in accepted)

    # what each task cost
    per_task = {k: v / len(tasks) for k, v in sorted(counts.items())}
    print(f"\nData API requests, {len(tasks)} tasks: {dict(counts)}; per task: {per_task}")
    print(f"Metadata API requests: {len(prevent.requests)} ({len(prevent.requests) / len(tasks):.2f} per task)")
    assert counts["create series"] == len(by_series), "each series created once"
    assert counts["POST /data"] == len(tasks), "one write per task (under 100 series a model)"
