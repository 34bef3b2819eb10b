"""latigo.sensors.data_api_sink against the local Time Series API server: series created once and found
again by name, exact values and times, idempotent rewrites, batching, retries, auth, concurrency, config,
and the real executor writing every stored prediction to it."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
import yaml

from latigo.config import load_config
from latigo.errors import ConfigError, PermanentError, TransientError
from latigo.factory import Components
from latigo.sensors.data_api_sink import DataApiPredictionSink, series_name
from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import Prediction, TaskRecord
from latigo.types import PredictionFrame, PredictionRow
from tests.support.data_api_server import BASE_PATH, DataApiServer, Series, rfc3339
from tests.support.processes import latigo_ok, static_models_config

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
FACILITY = "JSV"
CLIENT = "latigo-test"
SECRET = "client-secret-value"
SUBSCRIPTION = "subscription-key-value"
SCOPE = "32f2a909-8a98-4eb8-b22d-1208d9350cb0/.default"
TAGS = ["1903.R-29TT3018.MA_Y", "1903.R-29PT3019.MA_Y", "GRA-FOI -13-0979.PV"]


class Sleeps(list):
    """Records the delays the client asks for instead of waiting them out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def server():
    with DataApiServer(client_id=CLIENT, client_secret=SECRET, subscription_key=SUBSCRIPTION) as api:
        yield api


def connection(server: DataApiServer) -> dict:
    return dict(base_url=server.url, facility=FACILITY, tenant=server.tenant, authority_host=server.authority,
                client_id=CLIENT, client_secret=SECRET, scope=SCOPE, subscription_key=SUBSCRIPTION,
                retry_base_delay=timedelta(milliseconds=1), max_retries=3)


def make_sink(server: DataApiServer, sleeps: Sleeps | None = None, **overrides) -> DataApiPredictionSink:
    options = connection(server)
    options.update(overrides)
    return DataApiPredictionSink(DataApiPredictionSink.Settings(**options),
                                 sleep=sleeps if sleeps is not None else Sleeps())


def make_frame(model: str = "pump-a1", start: datetime = T0, buckets: int = 3, tags=TAGS,
               outputs=("model-output", "tag-anomaly-scaled"), scale: float = 1.0) -> PredictionFrame:
    """Per bucket of 10 minutes: every output for every tag, plus an aggregate with an empty tag (Gordo's JSON
    answer) and one whose tag is its group (Gordo's parquet answer)."""
    rows = []
    for step in range(buckets):
        ts = start + timedelta(minutes=10 * step)
        for o, output in enumerate(outputs):
            for t, tag in enumerate(tags):
                rows.append(PredictionRow(output, tag, ts, scale * (step + 0.1 * o + 0.01 * t) + 1 / 3))
        rows.append(PredictionRow("total-anomaly-scaled", "", ts, scale * step / 7))
        rows.append(PredictionRow("total-anomaly-confidence", "total-anomaly-confidence", ts, scale * step * 1e-9))
    return PredictionFrame(model, rows)


def expected_points(frame: PredictionFrame, prefix: str = "latigo") -> dict[str, list[dict]]:
    points: dict[str, dict[datetime, dict]] = {}
    for row in frame.rows:
        name = series_name(prefix, frame.model, row.output, row.tag)
        points.setdefault(name, {})[row.ts] = {"time": rfc3339(row.ts), "value": row.value, "status": 192}
    return {name: [by_ts[ts] for ts in sorted(by_ts)] for name, by_ts in points.items()}


def assert_stored(server: DataApiServer, expected: dict[str, list[dict]]) -> None:
    for name, points in expected.items():
        assert server.stored(name, FACILITY) == points, name


def creates(server: DataApiServer):
    return server.calls("POST", BASE_PATH)


def writes(server: DataApiServer):
    return server.calls("POST", BASE_PATH + "/data")


def lookups(server: DataApiServer):
    return server.calls("GET", BASE_PATH)


# ---------------------------------------------------------------- naming, creation, lookup


def test_series_names_follow_the_convention():
    assert series_name("latigo", "pump-a1", "model-output", "1903.R-29TT3018.MA_Y") == \
        "latigo.pump-a1.model-output.1903.R-29TT3018.MA_Y"
    assert series_name("latigo", "pump-a1", "total-anomaly-scaled", "") == "latigo.pump-a1.total-anomaly-scaled"
    assert series_name("", "m", "o", "t") == "m.o.t"
    assert series_name("plant.latigo", "m", "o", "t") == "plant.latigo.m.o.t"


def test_the_same_model_name_in_two_projects_writes_two_sets_of_series(server):
    """Outside the default project the name carries the project: plant-a's pump-a1 is not plant-b's."""
    sink = make_sink(server)
    a, b = (replace(make_frame(scale=s), project=p) for s, p in ((1.0, "plant-a"), (2.0, "plant-b")))
    sink.write(a)
    sink.write(b)
    name = "latigo.{}.pump-a1.model-output." + TAGS[0]
    first, second = server.stored(name.format("plant-a"), FACILITY), server.stored(name.format("plant-b"), FACILITY)
    assert first and second and [p["value"] for p in first] != [p["value"] for p in second]
    assert not any(n.startswith("latigo.pump-a1.") for n in server.created)


def test_each_series_is_created_once_with_its_metadata_and_then_reused(server):
    sink = make_sink(server, unit="-", description="{output} of {tag} by {model}")
    frame = make_frame()
    expected = expected_points(frame)
    assert len(expected) == 2 * len(TAGS) + 2

    assert sink.write(frame) == len(frame.rows)
    assert sorted(server.created) == sorted(expected)
    assert len(creates(server)) == len(expected) and lookups(server) == []
    assert len(writes(server)) == 1
    assert_stored(server, expected)
    name = series_name("latigo", "pump-a1", "model-output", TAGS[0])
    created = next(call.body for call in creates(server) if call.body["name"] == name)
    assert created == {"name": name, "description": f"model-output of {TAGS[0]} by pump-a1", "step": True,
                       "unit": "-", "externalId": name, "facility": FACILITY}
    metadata = server.by_name(name, FACILITY).metadata()
    assert (metadata["externalId"], metadata["unit"], metadata["step"]) == (name, "-", True)

    server.clear_calls()
    later = make_frame(start=T0 + timedelta(minutes=30))
    assert sink.write(later) == len(later.rows)
    assert creates(server) == [] and lookups(server) == []
    assert len(writes(server)) == 1, "ids cached: one request for a known model's frame"
    assert len(server.calls("POST", "/oauth2/v2.0/token")) == 0, "token cached"
    assert all(len(server.stored(name, FACILITY)) == 6 for name in expected)


def test_another_instance_finds_existing_series_by_exact_name_after_a_409():
    with DataApiServer(name_match="contains") as api:
        frame = make_frame(tags=TAGS[:1], outputs=("model-output",))
        first = make_sink(api, client_id="", client_secret="", tenant="", scope="", subscription_key="")
        first.write(frame)
        names = sorted(expected_points(frame))
        ids = {name: api.by_name(name, FACILITY).id for name in names}
        # decoys a contains-search also answers, and the same name in another facility
        for name in names:
            api.add(Series(name=name + ".extra", facility=FACILITY))
            api.add(Series(name=name, facility="OTHER"))
        api.clear_calls()

        second = make_sink(api, client_id="", client_secret="", tenant="", scope="", subscription_key="")
        later = make_frame(start=T0 + timedelta(hours=1), tags=TAGS[:1], outputs=("model-output",))
        second.write(later)
        assert sorted(api.created) == names, "nothing created twice"
        assert len(creates(api)) == len(names) and len(lookups(api)) == len(names)  # 409, then a lookup each
        assert all(call.query == {"name": [call.query["name"][0]], "facility": [FACILITY]} for call in lookups(api))
        assert {name: api.by_name(name, FACILITY).id for name in names} == ids
        for name in names:
            assert len(api.stored(name, FACILITY)) == 6
            assert api.by_name(name + ".extra", FACILITY).points == []
            assert api.by_name(name, "OTHER").points == []

        api.clear_calls()
        second.write(make_frame(start=T0 + timedelta(hours=2), tags=TAGS[:1], outputs=("model-output",)))
        assert creates(api) == [] and lookups(api) == [] and len(writes(api)) == 1


def test_values_and_timestamps_arrive_exactly_with_status_good(server):
    odd = [T0 + timedelta(milliseconds=1), T0 + timedelta(days=400, hours=5, seconds=59, milliseconds=999),
           datetime(2024, 3, 1, 1, tzinfo=timezone(timedelta(hours=2)))]  # 23:00Z the day before
    values = [0.1 + 0.2, -1e-300, 123456789.123456789, 2.0**60, -0.0, 1 / 3]
    rows = [PredictionRow("model-output", TAGS[0], ts, value) for ts, value in zip(odd, values, strict=False)]
    rows += [PredictionRow("model-output", TAGS[1], T0 + timedelta(minutes=i), v) for i, v in enumerate(values)]
    make_sink(server).write(PredictionFrame("pump-a1", rows))

    first = server.stored(series_name("latigo", "pump-a1", "model-output", TAGS[0]), FACILITY)
    assert [p["time"] for p in first] == ["2024-02-29T23:00:00.000Z", "2024-03-01T00:00:00.001Z",
                                          "2025-04-05T05:00:59.999Z"]
    assert [p["value"] for p in first] == [values[2], values[0], values[1]]
    second = server.stored(series_name("latigo", "pump-a1", "model-output", TAGS[1]), FACILITY)
    assert [p["value"] for p in second] == values and {p["status"] for p in first + second} == {192}
    assert all(isinstance(p["value"], float) for p in second)


def test_a_redelivered_frame_rewrites_its_points_and_never_duplicates_them(server):
    sink = make_sink(server)
    frame = make_frame()
    sink.write(frame)
    sink.write(frame)
    assert_stored(server, expected_points(frame))

    changed = make_frame(scale=2.0)  # a rerun that computed other values for the same buckets
    another = make_sink(server)  # ... in another executor process
    another.write(changed)
    assert_stored(server, expected_points(changed))
    assert len(server.series) == len(expected_points(frame))


def test_rows_that_cannot_be_named_or_are_not_finite_are_skipped_with_a_warning(server, caplog):
    rows = [PredictionRow("model-output", "a", T0, 1.0), PredictionRow("model-output", "b", T0, float("nan")),
            PredictionRow("model-output", "c", T0, float("inf")), PredictionRow("odd.group", "a", T0, 2.0)]
    sink = make_sink(server)
    with caplog.at_level(logging.WARNING):
        assert sink.write(PredictionFrame("pump-a1", rows)) == 1
        assert sink.write(PredictionFrame("model.with.dots", rows[:1])) == 0
    assert server.created == [series_name("latigo", "pump-a1", "model-output", "a")]
    assert "3 of 4 rows of model 'pump-a1' are not written" in caplog.text
    assert sink.write(PredictionFrame("pump-a1", [])) == 0
    assert len(writes(server)) == 1


def test_a_bad_description_template_is_a_config_error(server):
    with pytest.raises(ConfigError, match="description"):
        make_sink(server, description="{modell}")


# ---------------------------------------------------------------- batching


def test_requests_hold_at_most_100_series(server):
    tags = [f"T{i:03d}" for i in range(125)]
    frame = make_frame(tags=tags, outputs=("model-output", "tag-anomaly-scaled"), buckets=2)  # 252 series
    make_sink(server).write(frame)
    assert [len(call.body["items"]) for call in writes(server)] == [100, 100, 52]
    assert_stored(server, expected_points(frame))


def test_requests_hold_at_most_batch_points_points_and_a_long_series_is_split(server):
    frame = make_frame(tags=TAGS[:2], outputs=("model-output",), buckets=20)  # 2 x 20 + 2 aggregates x 20
    make_sink(server, batch_points=7).write(frame)
    sizes = [sum(len(item["datapoints"]) for item in call.body["items"]) for call in writes(server)]
    assert sizes == [7] * 11 + [3]
    for call in writes(server):
        ids = [item["id"] for item in call.body["items"]]
        assert len(ids) == len(set(ids)), "a series appears once in a request"
    assert_stored(server, expected_points(frame))


# ---------------------------------------------------------------- transport: retries, auth, errors


def test_429_with_retry_after_and_503_are_retried(server):
    sleeps = Sleeps()
    sink = make_sink(server, sleeps)
    frame = make_frame(tags=TAGS[:1], outputs=("model-output",))
    server.inject("POST", BASE_PATH, 429, times=1, headers={"Retry-After": "5"})
    server.inject("POST", BASE_PATH + "/data", 429, times=2, headers={"Retry-After": "7"})
    server.inject("POST", BASE_PATH + "/data", 503, times=1)
    sink.write(frame)
    assert sorted(sleeps[:3]) == [5.0, 7.0, 7.0] and len(sleeps) == 4 and sleeps[3] < 1
    assert len(writes(server)) == 4
    assert len(server.created) == 3
    assert_stored(server, expected_points(frame))


def test_retries_exhausted_are_a_transient_error_naming_the_series(server):
    sink = make_sink(server, max_retries=2)
    frame = make_frame(tags=TAGS[:1], outputs=("model-output",))
    server.inject("POST", BASE_PATH + "/data", 503, times=3)
    name = series_name("latigo", "pump-a1", "model-output", TAGS[0])
    with pytest.raises(TransientError, match=rf"writing 9 points to series '{re.escape(name)}' and 2 other "
                                             r"series: .*answered 503 after 3 attempts"):
        sink.write(frame)
    sink.write(frame)  # the series exist and their ids are kept
    assert len(server.created) == 3
    assert_stored(server, expected_points(frame))


def test_a_401_refreshes_the_token_exactly_once(server):
    sink = make_sink(server)
    frame = make_frame(tags=TAGS[:1], outputs=("model-output",))
    sink.write(frame)
    assert len(server.calls("POST", "/oauth2/v2.0/token")) == 1
    server.revoke_tokens()  # expired early
    sink.write(make_frame(start=T0 + timedelta(hours=1), tags=TAGS[:1], outputs=("model-output",)))
    assert len(server.calls("POST", "/oauth2/v2.0/token")) == 2

    server.inject("POST", BASE_PATH + "/data", 401, times=5)
    with pytest.raises(PermanentError, match="answered 401"):
        sink.write(frame)
    assert len(server.calls("POST", "/oauth2/v2.0/token")) == 3, "one refresh, not a loop"
    api_calls = [c for c in server.calls() if c.path.startswith(BASE_PATH)]
    assert all(c.headers["Authorization"].startswith("Bearer ") for c in api_calls)
    assert all(c.headers["Ocp-Apim-Subscription-Key"] == SUBSCRIPTION for c in api_calls)


def test_a_400_is_permanent_with_the_servers_message_and_the_series_name(server, caplog):
    sink = make_sink(server)
    name = series_name("latigo", "pump-a1", "model-output", TAGS[0])
    frame = PredictionFrame("pump-a1", [PredictionRow("model-output", TAGS[0], T0, 1.0)])
    server.inject("POST", BASE_PATH, 400, times=1)
    with caplog.at_level(logging.DEBUG), pytest.raises(PermanentError) as caught:
        sink.write(frame)
    message = str(caught.value)
    assert message == f"data_api sink: creating series '{name}': data_api: POST {server.url} answered 400: injected 400"
    assert len(creates(server)) == 1

    sink.write(frame)
    server.inject("POST", BASE_PATH + "/data", 400, times=1)
    with caplog.at_level(logging.DEBUG), pytest.raises(PermanentError) as caught:
        sink.write(frame)
    message = str(caught.value)
    assert message == (f"data_api sink: writing 1 points to series '{name}': data_api: POST {server.url}/data "
                       "answered 400: injected 400")
    assert "\n" not in message
    tokens = [t for t in server.tokens]
    for secret in [SECRET, SUBSCRIPTION, *tokens]:
        assert secret not in caplog.text and secret not in message


def test_a_series_deleted_behind_the_sinks_back_is_created_again(server):
    sink = make_sink(server)
    frame = make_frame(tags=TAGS[:1], outputs=("model-output",))
    sink.write(frame)
    name = series_name("latigo", "pump-a1", "model-output", TAGS[0])
    del server.series[server.by_name(name, FACILITY).id]
    with pytest.raises(TransientError, match="unknown to the API.*created again"):
        sink.write(frame)
    sink.write(frame)
    assert server.created.count(name) == 2
    assert_stored(server, expected_points(frame))


# ---------------------------------------------------------------- concurrency


def test_eight_threads_writing_one_model_create_each_series_once(server, caplog):
    caplog.set_level(logging.WARNING, logger="latigo.http")
    sink = make_sink(server)
    frames = [make_frame(start=T0 + timedelta(hours=i), tags=[f"T{t}" for t in range(20)]) for i in range(8)]
    barrier = threading.Barrier(8)
    errors = []

    def work(frame):
        barrier.wait()
        try:
            sink.write(frame)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(frame,)) for frame in frames]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    names = set(expected_points(frames[0]))
    assert sorted(server.created) == sorted(names)
    # One creation per name in the process; a create the HTTP client retried (a slow answer on a loaded
    # machine) is the only other way a second POST for a name may happen.
    retried = sum(1 for record in caplog.records if "POST" in record.getMessage() and "retry" in record.getMessage())
    assert len(creates(server)) == len(names) + retried, "no 409 from a race: one creation per name in the process"
    assert len(writes(server)) == 8
    assert len(server.calls("POST", "/oauth2/v2.0/token")) == 1
    merged: dict[str, list] = {}
    for frame in frames:
        for name, points in expected_points(frame).items():
            merged.setdefault(name, []).extend(points)
    assert_stored(server, {name: sorted(points, key=lambda p: p["time"]) for name, points in merged.items()})


def test_two_processes_creating_the_same_series_at_once_end_with_one_series_each(server):
    sinks = [make_sink(server) for _ in range(2)]
    frame = make_frame(tags=[f"T{t}" for t in range(20)])
    barrier = threading.Barrier(2)
    errors = []

    def work(sink):
        barrier.wait()
        try:
            sink.write(frame)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(sink,)) for sink in sinks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    expected = expected_points(frame)
    assert sorted(server.created) == sorted(expected)
    assert len(server.series) == len(expected)
    assert_stored(server, expected)


# ---------------------------------------------------------------- configuration and the executor


def sink_config(tmp_path, server: DataApiServer, url: str, required: bool | None, **loop) -> object:
    config = static_models_config(tmp_path / "latigo.yaml", url, {"type": "database", "poll_interval": "200ms"},
                                  loop.get("models", ["m-1", "m-2"]), 0.0, loop.get("concurrency", 4))
    tree = yaml.safe_load(config.read_text())
    sink = {"type": "data_api", "base_url": server.url, "facility": FACILITY, "tenant": server.tenant,
            "authority_host": server.authority, "client_id": CLIENT, "client_secret": SECRET, "scope": SCOPE,
            "subscription_key": SUBSCRIPTION, "retry_base_delay": "10ms", "name_prefix": "plant.latigo",
            "batch_points": 50}
    if required is not None:
        sink["required"] = required
    tree["predictions"] = {"sinks": [sink]}
    config.write_text(yaml.safe_dump(tree))
    return config


@pytest.mark.parametrize("required", [True, False, None])
def test_configured_through_a_config_file(tmp_path, server, required):
    path = sink_config(tmp_path, server, f"sqlite:///{tmp_path / 'latigo.db'}", required)
    components = Components(load_config(path, env={}))
    sinks = components.prediction_sinks
    chosen = sinks.required if required else sinks.optional
    assert [type(s) for s in chosen] == [DataApiPredictionSink]
    assert (sinks.optional if required else sinks.required) == []
    sink = chosen[0]
    assert sink.settings.batch_points == 50 and sink.settings.retry_base_delay == timedelta(milliseconds=10)
    frame = make_frame(tags=TAGS[:2])
    if required:
        sinks.write_required(frame)
    else:
        sinks.write(frame)
    assert_stored(server, expected_points(frame, prefix="plant.latigo"))
    sinks.close()


def test_the_executor_writes_every_stored_prediction_to_the_api(tmp_path, server):
    url = f"sqlite:///{tmp_path / 'latigo.db'}"
    config = sink_config(tmp_path, server, url, True, models=["m-1", "m-2", "m-3"], concurrency=8)
    server.inject("POST", BASE_PATH + "/data", 503, times=3)  # retried inside the sink
    server.inject("POST", BASE_PATH, 429, times=2, headers={"Retry-After": "0"})
    latigo_ok(config, "db", "upgrade")
    latigo_ok(config, "backfill", "--from", T0.isoformat(), "--to", (T0 + timedelta(hours=4)).isoformat(),
              "--no-progress")
    latigo_ok(config, "executor", "--exit-when-idle", "1.5", timeout=300)

    engine = create_engine_for(DatabaseSettings(url=url))
    with engine.connect() as c:
        states = dict(c.execute(sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all())
        rows = c.execute(sa.select(Prediction.model, Prediction.output, Prediction.tag, Prediction.ts,
                                   Prediction.value)).all()
    engine.dispose()
    assert states == {"done": 3 * 24}
    expected: dict[str, dict[str, float]] = {}
    for model, output, tag, ts, value in rows:
        expected.setdefault(series_name("plant.latigo", model, output, tag), {})[rfc3339(ts)] = value
    assert len(rows) == 3 * 24 * 3  # 3 models x 24 windows x (2 tags + 1 total)
    assert len(expected) == 3 * 3
    assert sorted(server.created) == sorted(expected)
    for name, points in expected.items():
        stored = server.stored(name, FACILITY)
        assert {p["time"]: p["value"] for p in stored} == points, name
        assert len(stored) == len(points) and {p["status"] for p in stored} == {192}
