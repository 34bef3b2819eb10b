"""The data_api sink's `prevent` naming (production latigo's series), read back through the official client:
names, descriptions, units, the facility of the model's first input tag, a 409 that finds the series, no NaN
sent, and a change of naming that leaves the old series as they were."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from latigo.errors import ConfigError, PermanentError
from latigo.sensors.data_api_sink import DataApiPredictionSink
from latigo.sensors.series_naming import SeriesNaming, asset_of, prevent_name
from latigo.types import ModelInfo, PredictionFrame, PredictionRow
from tests.support.data_api_server import DataApiServer, Series
from tests.support.omnia_client import official_client

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
PLANT = "KAS"
TAGS = ("1903.R-29TT3018.MA_Y", "1903.R-29PT3019.MA_Y")
UNITS = {"1903.R-29TT3018.MA_Y": "degC", "1903.R-29PT3019.MA_Y": "bar"}
MODEL = "00000000-0000-0000-0000-db70adcf653d-0000"
INFO = ModelInfo(name=MODEL, tags=TAGS, target_tags=TAGS, resolution=timedelta(minutes=10), project="ioc-1903",
                 revision="1700000000000", extra={"train_start_date": "2023-01-01T00:00:00+00:00",
                                                   "train_end_date": "2023-06-01T00:00:00+00:00"})


@pytest.fixture
def server():
    with DataApiServer([Series(name=tag, facility=PLANT, unit=UNITS[tag]) for tag in TAGS]) as api:
        yield api


def make_sink(server: DataApiServer, info: ModelInfo = INFO, **overrides) -> DataApiPredictionSink:
    options = dict(base_url=server.url, naming="prevent", retry_base_delay=timedelta(milliseconds=1))
    options.update(overrides)
    return DataApiPredictionSink(DataApiPredictionSink.Settings(**options), sleep=lambda s: None,
                                 model_info=lambda ref: info)


def make_frame(model: str = MODEL, buckets: int = 3, nan_at: int | None = None) -> PredictionFrame:
    rows = []
    for step in range(buckets):
        ts = T0 + timedelta(minutes=10 * step)
        for t, tag in enumerate(TAGS):
            rows.append(PredictionRow("model-output", tag, ts, 20.0 + step + t / 4))
            value = math.nan if step == nan_at else step / 3 + t
            rows.append(PredictionRow("tag-anomaly-scaled", tag, ts, value))
        rows.append(PredictionRow("total-anomaly-scaled", "", ts, step / 7))
        rows.append(PredictionRow("total-anomaly-confidence", "total-anomaly-confidence", ts, step * 1e-9))
    return PredictionFrame(model, rows, project="ioc-1903", revision="1700000000000")


def found(client, name: str, facility: str = PLANT) -> dict:
    items = client.search_timeseries(name=name, facility=facility)["data"]["items"]
    assert len(items) == 1, (name, items)
    return items[0]


def read_back(client, series_id: str) -> list[tuple[str, float, int]]:
    answer = client.get_multi_datapoints([{"id": series_id, "startTime": "2024-03-01T00:00:00Z",
                                           "endTime": "2024-03-02T00:00:00Z"}])
    return [(p["time"], p["value"], p["status"]) for p in answer["data"]["items"][0]["datapoints"]]


def test_names_follow_production_latigo():
    assert prevent_name("m1", "model-output", "1903.R-29TT3018.MA_Y", "1903") == "1903.R-29TT3018.MA_Y|m1|model-output"
    assert prevent_name("m1", "total-anomaly-scaled", "", "1903") == "1903.INDICATOR|m1|total-anomaly-scaled"
    assert prevent_name("m1", "total-anomaly-confidence", "total-anomaly-confidence", "1903") == \
        "1903.INDICATOR|m1|total-anomaly-confidence"
    assert prevent_name("pump|a1", "model-output", "A|B", "x") == "A-B|pump-a1|model-output"
    assert asset_of(("", "1903.R-29TT3018.MA_Y")) == "1903"
    assert SeriesNaming("prevent").name("m1", "total-anomaly-scaled", "", "") is None, "no asset, no name"
    assert SeriesNaming("latigo").name("m.1", "model-output", "t") is None
    with pytest.raises(ValueError, match="naming 'other'"):
        SeriesNaming("other")


def test_every_series_is_created_as_production_latigo_created_it_and_reads_back(server):
    sink = make_sink(server)
    frame = make_frame(nan_at=1)
    written = sink.write(frame)
    assert written == len(frame.rows) - len(TAGS), "the NaN values are not sent"
    client = official_client(server)
    for tag in TAGS:
        output = found(client, f"{tag}|{MODEL}|model-output")
        assert {k: output[k] for k in ("description", "unit", "step", "externalId", "facility")} == {
            "description": f"Gordo model-output - {tag}", "unit": UNITS[tag], "step": True,
            "externalId": f"{tag}|{MODEL}|model-output", "facility": PLANT}
        assert [value for _, value, _ in read_back(client, output["id"])] == [
            20.0 + step + TAGS.index(tag) / 4 for step in range(3)]
        score = found(client, f"{tag}|{MODEL}|tag-anomaly-scaled")
        assert (score["unit"], score["description"]) == ("", f"Gordo tag-anomaly-scaled - {tag}")
        assert [time for time, _, _ in read_back(client, score["id"])] == [
            "2024-03-01T00:00:00.000Z", "2024-03-01T00:20:00.000Z"], "the NaN bucket is left out"
    total = found(client, f"1903.INDICATOR|{MODEL}|total-anomaly-scaled")
    assert total["description"] == "Gordo total-anomaly-scaled - 1903.INDICATOR"
    assert read_back(client, total["id"]) == [(f"2024-03-01T00:{10 * s:02d}:00.000Z", s / 7, 192) for s in range(3)]
    found(client, f"1903.INDICATOR|{MODEL}|total-anomaly-confidence")
    assert len(server.created) == 2 * len(TAGS) + 2


def test_an_existing_series_is_found_after_the_409_and_written_there(server):
    client = official_client(server)
    name = f"{TAGS[0]}|{MODEL}|model-output"
    existing = client.post_timeseries({"name": name, "facility": PLANT, "step": True})["data"]["items"][0]
    client.post_timeseries({"name": name, "facility": "OTHER"})
    make_sink(server).write(make_frame())
    assert len(client.search_timeseries(name=name, facility=PLANT)["data"]["items"]) == 1
    assert len(read_back(client, existing["id"])) == 3


def test_the_facility_is_the_first_input_tags_and_a_missing_tag_is_named(server):
    server.add(Series(name="9999.X-1.PV", facility="OTHER"))
    other = ModelInfo(name="m2", tags=("9999.X-1.PV", TAGS[0]), target_tags=(TAGS[0],),
                      resolution=timedelta(minutes=10), extra=INFO.extra)
    make_sink(server, info=other).write(make_frame("m2"))
    assert server.by_name(f"{TAGS[0]}|m2|model-output", "OTHER") is not None
    assert server.by_name(f"{TAGS[0]}|m2|model-output", PLANT) is None
    lost = ModelInfo(name="m3", tags=("NO-SUCH.TAG",), target_tags=(TAGS[0],), resolution=timedelta(minutes=10))
    with pytest.raises(PermanentError, match="first input tag 'NO-SUCH.TAG' has no series in any facility"):
        make_sink(server, info=lost).write(make_frame("m3"))


def test_changing_the_naming_starts_new_series_and_leaves_the_old_ones(server):
    make_sink(server, naming="latigo", facility=PLANT).write(make_frame("m4"))
    old = server.stored("latigo.ioc-1903.m4.model-output." + TAGS[0], PLANT)
    assert len(old) == 3
    make_sink(server).write(make_frame("m4", buckets=4))
    assert server.stored("latigo.ioc-1903.m4.model-output." + TAGS[0], PLANT) == old
    assert len(server.stored(f"{TAGS[0]}|m4|model-output", PLANT)) == 4


def test_latigo_naming_needs_a_facility_and_prevent_needs_the_model_provider(server):
    with pytest.raises(ConfigError, match="facility is required with naming: latigo"):
        DataApiPredictionSink(DataApiPredictionSink.Settings(base_url=server.url))
    with pytest.raises(ConfigError, match="naming: prevent needs the model provider"):
        DataApiPredictionSink(DataApiPredictionSink.Settings(base_url=server.url, naming="prevent"))
