"""GordoModels against the local Gordo server built from the captured Gordo 6 answers."""

from __future__ import annotations

import io
import json
import logging
import math
import threading
from datetime import timedelta

import pandas as pd
import pytest
import requests

from latigo.config import load_config
from latigo.durations import parse_frequency
from latigo.errors import ConfigError, NoDataError, PermanentError, TransientError, UnknownModelError
from latigo.factory import Components
from latigo.models.gordo import GordoModels, GordoSettings, check_models, format_check_report
from latigo.models.gordo_projects import GordoProjects
from latigo.models.gordo_wire import _groups_from_frame, groups_from_parquet, parse_prediction
from latigo.types import ModelRef, SensorFrame, TimeRange
from tests.support.gordo_server import (
    FIXTURES,
    GordoServer,
    ModelSpec,
    RampSensors,
    fixture_bytes,
    fixture_headers,
    fixture_json,
    frame_from_parquet,
    ramp_value,
    utc,
)

pytestmark = pytest.mark.integration
START = utc("2026-02-01T00:00:00")
END = utc("2026-02-01T03:00:00")
TEN_MIN = timedelta(minutes=10)


@pytest.fixture
def server():
    with GordoServer() as gordo:
        yield gordo


def provider(server: GordoServer, sensors: RampSensors | None = None, **overrides) -> GordoModels:
    options = {"retry_base_delay": timedelta(milliseconds=1), "retry_max_delay": timedelta(milliseconds=5),
               "timeout": timedelta(seconds=5), **overrides}
    return GordoModels(GordoSettings(base_url=server.url, project=server.project, **options),
                       sensors=sensors if sensors is not None else RampSensors())


def posts(server: GordoServer, endpoint: str = "/anomaly/prediction"):
    return [r for r in server.recorded(method="POST") if r.path.endswith(endpoint)
            and not (endpoint == "/prediction" and r.path.endswith("/anomaly/prediction"))]


def sent_column(record, tag: str, part: str = "X") -> dict[str, float]:
    """{iso timestamp: value} of one column of a prediction POST's X (or y), whichever wire format carried
    it: parquet parts (the default) or JSON columns."""
    frame = record.body[part]
    if isinstance(frame, pd.DataFrame):
        return {stamp.isoformat(): float(value) for stamp, value in frame[tag].items()}
    return frame[tag]


def grid(start, end, step=TEN_MIN):
    return list(pd.date_range(start, end, freq=step, inclusive="left").to_pydatetime())


# ---------------------------------------------------------------- the test server is the captured server


def test_the_server_answers_the_captured_requests_with_the_captured_bytes(server):
    base = f"{server.url}/gordo/v0/demo"
    for path, body_file, headers_file in [("models", "models.json", "models.headers"),
                                          ("model-a/metadata", "metadata.json", "metadata.headers"),
                                          ("model-zzz/metadata", "unknown-model-metadata.json",
                                           "unknown-model.headers")]:
        response = requests.get(f"{base}/{path}")
        expected = fixture_headers(headers_file)
        assert response.content == fixture_bytes(body_file)
        assert response.status_code == int(fixture_bytes(headers_file).split()[1])
        assert response.reason == fixture_bytes(headers_file).decode().splitlines()[0].split(" ", 2)[2]
        for name in ("Server", "Content-Type", "Content-Length", "revision"):
            assert response.headers[name] == expected[name]
        assert response.headers["Server-Timing"].startswith("request_walltime_s;dur=")
    assert requests.get(f"{base}/revisions").json() == fixture_json("revisions.json")

    captured = fixture_json("anomaly-request.json")
    anomaly = requests.post(f"{base}/model-a/anomaly/prediction", json=captured)
    assert (anomaly.status_code, anomaly.content) == (200, fixture_bytes("anomaly-response.json"))
    plain = requests.post(f"{base}/model-a/prediction", json={"X": captured["X"]})
    assert plain.content == fixture_bytes("prediction-response.json")
    unknown = requests.post(f"{base}/model-zzz/anomaly/prediction", json=captured)
    assert (unknown.status_code, unknown.content) == (404, fixture_bytes("anomaly-unknown-model-response.json"))
    bad = requests.post(f"{base}/model-a/anomaly/prediction",
                        json={"X": {"TAG-1": captured["X"]["TAG-1"]}, "y": captured["y"]})
    assert (bad.status_code, bad.content) == (400, fixture_bytes("anomaly-bad-request-response.json"))


def test_the_server_computes_answers_of_the_captured_shape_for_other_requests(server):
    captured = fixture_json("anomaly-request.json")
    shifted = {key: {tag: {ts: v + 0.01 for ts, v in series.items()} for tag, series in frame.items()}
               for key, frame in captured.items()}
    response = requests.post(f"{server.url}/gordo/v0/demo/model-a/anomaly/prediction", json=shifted).json()
    reference = fixture_json("anomaly-response.json")
    assert list(response) == list(reference)
    assert {g: list(c) for g, c in response["data"].items()} == {g: list(c) for g, c in reference["data"].items()}
    for group, columns in reference["data"].items():
        for column, series in columns.items():
            assert list(response["data"][group][column]) == list(series)
    assert response["data"]["start"]["start"] == reference["data"]["start"]["start"]
    assert response["data"]["end"]["end"] == reference["data"]["end"]["end"]


# ---------------------------------------------------------------- metadata


def test_model_info_comes_from_the_metadata(server):
    info = provider(server).get_model_info("model-a")
    assert info.tags == ("TAG-1", "TAG-2", "TAG-3", "TAG-4")
    assert info.target_tags == info.tags
    assert (info.resolution, info.model_offset, info.revision, info.project) == (TEN_MIN, 0, "1", "demo")
    assert (info.aggregation, info.interpolation_method, info.interpolation_limit, info.row_filter) == (
        "mean", "linear_interpolation", timedelta(hours=48), "")
    assert info.extra["model_creation_date"] == "2026-11-25 00:32:36.839027+00:00"


def test_null_target_tags_mean_the_tags_and_offset_and_resolution_are_read(server):
    server.add_model(ModelSpec("lstm", tags=["A", "B"], target_tags=None, resolution="1H", model_offset=5))
    info = provider(server).get_model_info("lstm")
    assert (info.tags, info.target_tags) == (("A", "B"), ("A", "B"))
    assert (info.resolution, info.model_offset) == (timedelta(hours=1), 5)


def test_model_info_is_cached_per_revision(server):
    gordo = provider(server)
    gordo.get_model_info("model-a")
    gordo.get_model_info("model-a")
    assert len(server.recorded("/model-a/metadata")) == 1


@pytest.mark.parametrize(("text", "expected"), [("10T", TEN_MIN), ("1H", timedelta(hours=1)), ("30S", timedelta(
    seconds=30)), ("10min", TEN_MIN), ("D", timedelta(days=1)), ("500ms", timedelta(milliseconds=500))])
def test_gordo_frequencies_parse(text, expected):
    assert parse_frequency(text) == expected


@pytest.mark.parametrize("text", ["1M", "abc", "0T", ""])
def test_non_fixed_frequencies_are_refused(text):
    with pytest.raises(ValueError):
        parse_frequency(text)


def test_unknown_models_are_unknown(server):
    gordo = provider(server)
    with pytest.raises(UnknownModelError, match="No metadata found for 'nope'"):
        gordo.get_model_info("nope")
    assert gordo.model_exists("model-a") and not gordo.model_exists("nope")
    with pytest.raises(UnknownModelError, match="nope"):
        gordo.execute_model("nope", START, END)


# ---------------------------------------------------------------- listing and the check


def test_listing_skips_a_model_without_metadata_with_a_warning(server, caplog):
    server.add_model(ModelSpec("model-b"))
    server.add_model(ModelSpec("half-deployed", has_metadata=False))
    with caplog.at_level(logging.WARNING, logger="latigo.models.gordo"):
        assert provider(server).get_model_list() == ["model-a", "model-b"]
    assert "half-deployed" in caplog.text


def test_check_reports_models_without_metadata_and_expected_models_not_built(server):
    server.add_model(ModelSpec("half-deployed", has_metadata=False))
    server.expected_models = ["model-a", "half-deployed", "never-built"]
    report = check_models(provider(server))
    assert report["listed"] == ["model-a", "half-deployed"]
    assert (report["ready"], report["without_metadata"]) == (["model-a"], ["half-deployed"])
    assert report["not_built"] == ["half-deployed", "never-built"]
    assert report["ok"] is False
    text = format_check_report(report)
    assert "listed without metadata: half-deployed" in text and "not built: half-deployed, never-built" in text
    assert text.rstrip().endswith("PROBLEMS FOUND")


def test_a_healthy_project_checks_ok(server):
    server.expected_models = ["model-a"]
    report = check_models(provider(server))
    assert report["ok"] and report["not_built"] == [] and report["revision"] == "1"
    assert format_check_report(report).rstrip().endswith("OK")


# ---------------------------------------------------------------- predictions: request bodies and output


def test_request_bodies_carry_x_and_y_in_tag_order_batched_by_rows(server):
    server.models["model-a"] = ModelSpec("model-a", tags=["T-B", "T-A", "T-C"], target_tags=["T-C", "T-A"])
    sensors = RampSensors()
    # The JSON body's own shape (the column order of its objects); parquet's is in
    # test_parquet_requests_and_answers_give_the_json_results.
    frame = provider(server, sensors, batch_size=7, history_margin=0, use_parquet=False).execute_model(
        "model-a", START, END)

    bodies = [json.loads(r.raw) for r in posts(server)]
    assert [len(b["X"]["T-B"]) for b in bodies] == [7, 7, 4]
    stamps = [ts for body in bodies for ts in body["X"]["T-B"]]
    assert stamps == [ts.isoformat() for ts in grid(START, END)]
    for body in bodies:
        assert list(body["X"]) == ["T-B", "T-A", "T-C"] and list(body["y"]) == ["T-C", "T-A"]
        assert list(body["y"]["T-A"]) == list(body["X"]["T-B"])
        for tag, series in body["X"].items():
            assert all(v == ramp_value(tag, pd.Timestamp(ts)) for ts, v in series.items())
    assert all(r.query == {"revision": "1"} for r in posts(server))
    assert sensors.calls == [(START, END, ["T-B", "T-A", "T-C"], TEN_MIN)]

    assert {(r.output, r.tag) for r in frame.rows} >= {("model-output", "T-C"), ("total-anomaly-scaled",
                                                                                   "total-anomaly-scaled")}
    assert sorted({r.ts for r in frame.rows}) == grid(START, END)
    assert not any(r.output in ("start", "end") for r in frame.rows)
    means = {ts: sum(ramp_value(t, pd.Timestamp(ts)) for t in ["T-B", "T-A", "T-C"]) / 3 for ts in grid(START, END)}
    outputs = {r.ts: r.value for r in frame.rows if (r.output, r.tag) == ("model-output", "T-A")}
    assert outputs == pytest.approx(means)


def test_history_for_the_model_offset_is_fetched_and_trimmed_off(server):
    server.add_model(ModelSpec("lstm", model_offset=3))
    sensors = RampSensors()
    start, end = utc("2026-02-01T01:00:00"), utc("2026-02-01T02:00:00")
    frame = provider(server, sensors, batch_size=5, history_margin=2).execute_model("lstm", start, end)

    assert sensors.calls[0][:2] == (start - 5 * TEN_MIN, end)
    bodies = [sent_column(r, "TAG-1") for r in posts(server)]
    sent = [list(b) for b in bodies]
    # 6 window rows + 5 history rows; offset 3: each batch of 5 re-sends the 3 rows before its 2 new outputs
    assert [len(b) for b in sent] == [5, 5, 5]
    for before, after in zip(sent, sent[1:], strict=False):
        assert after[:3] == before[-3:]
    assert sorted({r.ts for r in frame.rows}) == grid(start, end)  # margin rows trimmed, offset rows consumed
    window = TimeRange(start, end)
    assert all(window.start <= r.ts < window.end for r in frame.rows)
    assert len({(r.output, r.tag, r.ts) for r in frame.rows}) == len(frame.rows)  # no row twice


def test_a_window_off_the_grid_predicts_the_buckets_that_complete_in_it(server):
    start, end = utc("2026-02-01T00:05:00"), utc("2026-02-01T00:45:00")
    frame = provider(server).execute_model("model-a", start, end)
    # [00:00, 00:10) completes at 00:10, inside the window; [00:40, 00:50) completes after it.
    assert sorted({r.ts for r in frame.rows}) == [utc("2026-02-01T00:00:00"), utc("2026-02-01T00:10:00"),
                                                  utc("2026-02-01T00:20:00"), utc("2026-02-01T00:30:00")]


def test_bare_nan_in_the_answer_is_parsed_and_left_out(server):
    server.nan_groups = {"anomaly-confidence"}
    frame = provider(server, use_parquet=False).execute_model("model-a", START, END)  # bare NaN is JSON's
    raw = posts(server)[0]
    assert raw.status == 200
    assert "anomaly-confidence" not in {r.output for r in frame.rows}
    assert {r.output for r in frame.rows} >= {"model-output", "total-anomaly-confidence"}
    answer = requests.post(f"{server.url}/gordo/v0/demo/model-a/anomaly/prediction",
                           json=json.loads(raw.raw)).content
    assert b": NaN" in answer


def test_the_captured_answers_parse_to_the_same_rows_from_json_and_parquet():
    class Answer:
        def __init__(self, content):
            self.content, self.headers, self.text = content, {}, ""

    from_json = parse_prediction("model-a", Answer(fixture_bytes("anomaly-response.json")))
    from_parquet = parse_prediction("model-a", Answer(fixture_bytes("anomaly-response.parquet")))
    assert len(from_json) == len(from_parquet) == 18 * 23
    assert {(r.output, r.tag, r.ts) for r in from_json.rows} == {(r.output, r.tag, r.ts) for r in from_parquet.rows}
    assert {r.tag for r in from_json.rows if r.output == "total-anomaly-scaled"} == {"total-anomaly-scaled"}
    parquet_input = {(r.tag, r.ts): r.value for r in from_parquet.rows if r.output == "model-input"}
    expected = frame_from_parquet((FIXTURES / "anomaly-response.parquet").read_bytes())
    assert parquet_input[("TAG-2", START)] == expected[("model-input", "TAG-2")].iloc[0]


def test_a_parquet_answer_read_with_pyarrow_gives_what_pandas_reads():
    content = fixture_bytes("anomaly-response.parquet")
    fast, general = groups_from_parquet(content), _groups_from_frame(pd.read_parquet(io.BytesIO(content)))
    assert fast == general  # the fixture holds no NaN, so == compares every value
    for group, columns in general.items():
        assert list(fast[group]) == list(columns)
        for name, series in columns.items():
            assert [(type(k), k.tzinfo) for k in fast[group][name]] == [(type(k), k.tzinfo) for k in series]
            assert [type(v) for v in fast[group][name].values()] == [type(v) for v in series.values()]


def test_a_parquet_answer_without_timestamps_is_named_unreadable():
    class Answer:
        def __init__(self, content):
            self.content, self.headers, self.text = content, {}, ""

    buffer = io.BytesIO()
    pd.DataFrame({"model-output": [0.5, 0.25]}).to_parquet(buffer)
    with pytest.raises(TransientError, match="unreadable parquet answer: its index is RangeIndex, not timestamps"):
        parse_prediction("model-a", Answer(buffer.getvalue()))


def test_parquet_requests_and_answers_give_the_json_results(server):
    server.add_model(ModelSpec("lstm", model_offset=2))
    by_json = provider(server, batch_size=6, use_parquet=False).execute_model("lstm", START, END)
    assert posts(server) and all(r.query == {"revision": "1"} for r in posts(server))
    server.clear()
    by_parquet = provider(server, batch_size=6).execute_model("lstm", START, END)  # the default
    requests_sent = posts(server)
    assert requests_sent and all(r.query == {"format": "parquet", "revision": "1"} for r in requests_sent)
    first = requests_sent[0]
    assert first.headers["Content-Type"].startswith("multipart/form-data")
    assert list(first.body["X"].columns) == ["TAG-1", "TAG-2", "TAG-3", "TAG-4"] and len(first.body["X"]) == 6
    assert list(first.body["y"].columns) == ["TAG-1", "TAG-2", "TAG-3", "TAG-4"]
    assert str(first.body["X"].index.tz) == "UTC"
    as_json = {(r.output, r.tag, r.ts): r.value for r in by_json.rows}
    as_parquet = {(r.output, r.tag, r.ts): r.value for r in by_parquet.rows}
    assert as_parquet == pytest.approx(as_json) and len(as_json) == len(by_json)


# ---------------------------------------------------------------- sensor data problems


def test_missing_sensors_are_a_permanent_error_naming_them(server):
    with pytest.raises(PermanentError, match="missing from the sensor source: TAG-2") as error:
        provider(server, RampSensors(missing=["TAG-2"])).execute_model("model-a", START, END)
    assert not isinstance(error.value, NoDataError)
    assert posts(server) == []


def test_no_sensor_data_is_no_data_naming_the_tags(server):
    with pytest.raises(NoDataError, match="no data for TAG-3 in"):
        provider(server, RampSensors(empty=["TAG-3"])).execute_model("model-a", START, END)
    with pytest.raises(NoDataError, match="TAG-1, TAG-2, TAG-3, TAG-4"):
        provider(server, RampSensors(empty=["TAG-1", "TAG-2", "TAG-3", "TAG-4"])).execute_model("model-a", START, END)
    assert posts(server) == []


def test_gaps_are_interpolated_up_to_the_limit_and_longer_ones_dropped(server):
    server.add_model(ModelSpec("short-limit", interpolation_limit="10T"))
    single = utc("2026-02-01T00:30:00")
    double = [utc("2026-02-01T01:30:00"), utc("2026-02-01T01:40:00")]
    sensors = RampSensors(gaps={"TAG-1": [single, *double]})
    provider(server, sensors).execute_model("short-limit", START, END)
    sent = sent_column(posts(server)[0], "TAG-1")
    before, after = ramp_value("TAG-1", pd.Timestamp(single - TEN_MIN)), ramp_value("TAG-1", pd.Timestamp(
        single + TEN_MIN))
    assert sent[single.isoformat()] == pytest.approx((before + after) / 2)
    assert double[0].isoformat() in sent  # the first row of a two-row gap is within the limit
    assert double[1].isoformat() not in sent  # the second is not: the row is dropped
    assert len(sent) == len(grid(START, END)) - 1


def test_a_gap_at_the_end_is_looked_ahead_then_carried_forward_within_the_limit_as_gordo_does(server):
    late = grid(utc("2026-02-01T02:30:00"), END + timedelta(days=3))
    sensors = RampSensors(gaps={"TAG-2": late})
    frame = provider(server, sensors).execute_model("model-a", START, END)
    assert sensors.calls[1][:2] == (END, END + timedelta(days=2))  # looked for a later value to interpolate to
    sent = sent_column(posts(server)[0], "TAG-2")
    last = ramp_value("TAG-2", pd.Timestamp(utc("2026-02-01T02:20:00")))
    assert [sent[ts.isoformat()] for ts in late[:3]] == [last, last, last]  # pandas' linear fill past the end
    assert max(r.ts for r in frame.rows) == utc("2026-02-01T02:50:00")


# ---------------------------------------------------------------- fallbacks and errors


def test_a_model_answering_422_falls_back_to_prediction_for_that_model_only(server, caplog):
    server.add_model(ModelSpec("regressor", anomaly=False))
    gordo = provider(server)
    with caplog.at_level(logging.WARNING, logger="latigo.models.gordo"):
        first = gordo.execute_model("regressor", START, END)
    assert "not an anomaly detector" in caplog.text
    gordo.execute_model("regressor", START, END)
    gordo.execute_model("model-a", START, END)
    paths = [r.path.split("/demo/")[1] for r in server.recorded(method="POST")]
    assert paths == ["regressor/anomaly/prediction", "regressor/prediction", "regressor/prediction",
                     "model-a/anomaly/prediction"]
    fallback_body = server.recorded("regressor/prediction")[0].body  # parquet parts: X, no y
    assert list(fallback_body) == ["X"]
    assert {r.output for r in first.rows} == {"model-input", "model-output"}


def test_a_removed_revision_is_refreshed_and_the_request_retried_once(server):
    gordo = provider(server)
    gordo.get_model_info("model-a")
    server.publish_revision("2")
    frame = gordo.execute_model("model-a", START, END)
    assert len(frame) > 0
    asked = [(r.path.rsplit("/", 1)[1], r.query.get("revision"), r.status) for r in server.requests]
    assert asked[-4:] == [("prediction", "1", 410), ("revisions", None, 200), ("metadata", "2", 200),
                          ("prediction", "2", 200)]
    assert gordo.revision() == "2"


def test_a_revision_answering_410_once_is_retried(server):
    gordo = provider(server)
    gordo.get_model_info("model-a")
    server.gone_once.add("1")
    assert len(gordo.execute_model("model-a", START, END)) > 0
    statuses = [(r.path.rsplit("/", 1)[1], r.status) for r in server.requests][-3:]
    assert statuses == [("prediction", 410), ("revisions", 200), ("prediction", 200)]


def test_a_pinned_revision_that_is_gone_is_permanent(server):
    with pytest.raises(PermanentError, match="pinned revision 7"):
        provider(server, revision="7").get_model_info("model-a")


def test_a_500_for_this_input_is_permanent_and_sent_once(server):
    server.fail_next(2, status=500, match="anomaly")
    with pytest.raises(PermanentError, match=r"failed on this input \(500, 18 rows from"):
        provider(server, max_retries=3).execute_model("model-a", START, END)
    assert [r.status for r in posts(server)] == [500]


def test_a_503_is_transient_with_the_page_text_and_left_to_the_executor_to_retry(server):
    server.fail_next(10, status=503, match="anomaly")
    with pytest.raises(TransientError, match="answered 503 after 1 attempts: The server is temporarily unable"):
        provider(server, max_retries=2).execute_model("model-a", START, END)
    assert len(posts(server)) == 1  # one retry owner per call path: the executor redelivers the task


def test_timeouts_and_refused_connections_are_transient(server):
    server.hang_next(5, seconds=1.0, match="anomaly")
    with pytest.raises(TransientError, match="ReadTimeout"):
        provider(server, max_retries=1, timeout=timedelta(seconds=0.2)).execute_model("model-a", START, END)
    closed = GordoServer().start()
    url = closed.url
    closed.stop()
    gordo = GordoModels(GordoSettings(base_url=url, project="demo", max_retries=1,
                                      retry_base_delay=timedelta(milliseconds=1)), sensors=RampSensors())
    with pytest.raises(TransientError, match="ConnectionError"):
        gordo.get_model_list()


def test_a_400_is_permanent_with_gordos_message(server):
    gordo = provider(server)
    gordo.get_model_info("model-a")
    server.models["model-a"] = ModelSpec("model-a", tags=["TAG-1", "TAG-2", "TAG-3", "TAG-4", "TAG-5"])
    with pytest.raises(PermanentError, match=r"refused the input \(400\): Unexpected features: was expecting "
                                             r"\['TAG-1', 'TAG-2', 'TAG-3', 'TAG-4', 'TAG-5'\] length of 5"):
        gordo.execute_model("model-a", START, END)
    assert len(posts(server)) == 1  # not retried


# ---------------------------------------------------------------- authentication


def test_a_bearer_token_is_fetched_once_cached_and_refreshed_once_on_401(server):
    server.require_token = True
    gordo = provider(server, authority_host=server.authority, tenant="tenant-1",
                     client_id="latigo-client", client_secret="latigo-secret", scope="gordo/.default")
    gordo.execute_model("model-a", START, END)
    gordo.execute_model("model-a", START, END)
    assert server.tokens_issued == 1
    token_request = server.recorded("/oauth2/v2.0/token")[0]
    assert token_request.path == "/login/tenant-1/oauth2/v2.0/token"
    assert token_request.body["grant_type"] == "client_credentials"
    assert token_request.body["scope"] == "gordo/.default"
    server.revoke_tokens()
    server.clear()
    gordo.execute_model("model-a", START, END)
    assert server.tokens_issued == 2
    assert [(r.path.rsplit("/", 1)[1], r.status) for r in server.requests] == [
        ("prediction", 401), ("token", 200), ("prediction", 200)]
    assert posts(server)[-1].headers["Authorization"].startswith("Bearer token-2-")


def test_refused_client_credentials_are_permanent(server):
    server.require_token = True
    gordo = provider(server, authority_host=server.authority, tenant="t", client_id="latigo-client",
                     client_secret="wrong", scope="s")
    with pytest.raises(PermanentError, match="refused the client credentials"):
        gordo.get_model_list()


# ---------------------------------------------------------------- concurrency and configuration


def test_concurrent_executions_share_one_provider(server):
    server.add_model(ModelSpec("lstm", model_offset=2))
    gordo = provider(server, batch_size=10)
    results, errors = {}, []

    def run(index):
        try:
            name = "lstm" if index % 2 else "model-a"
            start = START + index * timedelta(hours=1)
            results[index] = (start, gordo.execute_model(name, start, start + timedelta(hours=1)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for start, frame in results.values():
        assert sorted({r.ts for r in frame.rows}) == grid(start, start + timedelta(hours=1))
    assert len(server.recorded("/metadata")) == 2


def test_the_provider_is_built_from_config_through_the_factory(server, tmp_path):
    path = tmp_path / "latigo.yaml"
    path.write_text(f"""
sensor_data: {{type: "tests.support.gordo_server:RampSensors"}}
model_information: &gordo
  type: gordo
  base_url: {server.url}
  project: demo
  batch_size: 5
  timeout: 10s
  history_margin: 1
model_execution: *gordo
""")
    config = load_config(path, env={})
    components = Components(config)
    assert components.model_information is components.model_execution
    gordo = components.model_execution
    assert isinstance(gordo, GordoProjects) and gordo.client("demo").settings.timeout == timedelta(seconds=10)
    frame = gordo.execute_model(ModelRef("demo", "model-a"), START, START + timedelta(hours=1))
    assert sorted({r.ts for r in frame.rows}) == grid(START, START + timedelta(hours=1))
    assert [len(sent_column(r, "TAG-1")) for r in posts(server)] == [5, 1]
    assert all(r.query.get("format") == "parquet" for r in posts(server))  # the default wire format


def test_secrets_in_gordo_settings_are_masked(server, tmp_path):
    path = tmp_path / "latigo.yaml"
    path.write_text(f"""
model_execution:
  type: gordo
  base_url: {server.url}
  project: demo
  tenant: t
  client_id: c
  client_secret: very-secret-value
  scope: s
""")
    from latigo.config import describe_config

    text = describe_config(load_config(path, env={}))
    assert "very-secret-value" not in text and "client_secret: '***'" in text


def test_values_in_an_answer_are_floats_or_skipped():
    class Answer:
        content = json.dumps({"data": {"model-output": {"A": {"2026-02-01 00:00:00+00:00": 1,
                                                              "2026-02-01 00:10:00+00:00": None}},
                                       "start": {"start": {"2026-02-01 00:00:00+00:00": "x"}}}}).encode()

    frame = parse_prediction("m", Answer())
    assert [(r.output, r.tag, r.ts, r.value) for r in frame.rows] == [("model-output", "A", START, 1.0)]
    assert not math.isnan(frame.rows[0].value)


class RawPoints(RampSensors):
    """A source that hands back raw, irregular points (not yet on the model's grid)."""

    def get_data_for_range(self, start, end, sensors, resolution, aggregation="mean"):
        stamps = [start + timedelta(minutes=m) for m in (1, 4, 12, 19, 25)]
        frame = pd.DataFrame({tag: [float(i) for i in range(len(stamps))] for tag in sensors},
                             index=pd.DatetimeIndex(stamps))
        return SensorFrame(frame)


def test_a_provider_breaking_the_bucket_contract_is_refused_by_name(server):
    start = utc("2026-02-01T00:00:00")
    with pytest.raises(PermanentError, match="RawPoints returned timestamps off the 0:10:00 bucket grid"):
        provider(server, RawPoints()).execute_model("model-a", start, start + timedelta(minutes=30))
    assert posts(server) == []


def test_latigo_models_check_prints_the_report(server, tmp_path, capsys):
    from latigo.cli import main

    server.add_model(ModelSpec("half-deployed", has_metadata=False))
    server.expected_models = ["model-a", "half-deployed"]
    path = tmp_path / "latigo.yaml"
    path.write_text(f"model_information: {{type: gordo, base_url: '{server.url}', project: demo}}\n"
                    "sensor_data: {type: 'tests.support.gordo_server:RampSensors'}\n")
    assert main(["--config", str(path), "models"]) == 0
    assert capsys.readouterr().out.split() == ["demo", "(1", "models)", "model-a"]
    main(["--config", str(path), "models", "--check"])
    out = capsys.readouterr().out
    assert "listed without metadata: half-deployed" in out and "PROBLEMS FOUND" in out


def test_requests_per_task_are_bounded_by_max_attempts_times_batches(server, engine):
    """One retry owner per call path: a window Gordo keeps answering 503 costs max_attempts x batches
    POSTs (the HTTP client does not retry predictions; the executor redelivers), then fails."""
    from latigo.executor import Executor, Outcome
    from latigo.lifecycle import TaskLifecycle
    from latigo.settings import ExecutorSettings
    from latigo.types import Task
    from tests.support.memory_queue import MemoryQueue

    server.fail_next(100, status=503, match="anomaly")
    gordo = GordoProjects(GordoSettings(base_url=server.url, project=server.project, batch_size=10, history_margin=0,
                                        max_retries=3, timeout=timedelta(seconds=5)), sensors=RampSensors())
    settings = ExecutorSettings(max_attempts=3, retry_base_delay=timedelta(0), retry_max_delay=timedelta(0))
    executor = Executor(settings, MemoryQueue(), gordo, TaskLifecycle(engine), ["model-output"])
    task = Task("model-a", TimeRange(START, START + timedelta(hours=3)), server.project)  # 18 buckets: 2 of 10
    with executor.lifecycle.transaction() as connection:
        executor.queue.put_many(executor.lifecycle.enqueue(connection, [task]).to_send)
    outcomes = []
    while not outcomes or outcomes[-1] is Outcome.RETRYING:
        outcomes.append(executor.handle(executor.queue.get(1)))
    assert outcomes == [Outcome.RETRYING, Outcome.RETRYING, Outcome.FAILED]
    assert len(posts(server)) == 3  # the first batch fails each time: 3 attempts x 1 request, not 3 x 4


def test_a_project_that_cannot_be_listed_is_skipped_and_the_others_are_listed(server, caplog):
    """One project's server answering errors never holds back the others' models."""
    down = GordoServer()
    down.__enter__()
    down_url = down.url
    down.__exit__(None, None, None)  # a closed port: connection refused
    gordo = GordoProjects(GordoSettings(base_url=server.url, projects=[server.project, "elsewhere"],
                                        project_urls={"elsewhere": down_url}, max_retries=0,
                                        timeout=timedelta(seconds=2)), sensors=RampSensors())
    listed = gordo.get_model_list()
    assert listed and {ref.project for ref in listed} == {server.project}
    assert "gordo project elsewhere skipped this cycle" in caplog.text
    assert set(gordo.skipped) == {"elsewhere"}
    with pytest.raises(UnknownModelError, match="not configured"):
        gordo.get_model_info(ModelRef("plant-z", listed[0].name))


def test_gordo_settings_name_the_projects_one_way():
    with pytest.raises(ConfigError, match="one way"):
        GordoProjects(GordoSettings(base_url="http://gordo", project="a", projects=["b"]))
    with pytest.raises(ConfigError, match="more than once"):
        GordoProjects(GordoSettings(base_url="http://gordo", projects=["a", "a"]))
    with pytest.raises(ConfigError, match="not served: c"):
        GordoProjects(GordoSettings(base_url="http://gordo", projects=["a"], project_urls={"c": "http://x"}))
