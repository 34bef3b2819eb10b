"""Smoke test of the real-Gordo oracle: a real Gordo 6.0.4 server (models built by Gordo's own builder)
and the official gordo-client 6.3.0 reading a real influxd, each in its own venv."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import requests

from tests.support.gordo_real import (
    LSTM_LOOKBACK_WINDOW,
    TAGS,
    GordoRealServer,
    gordo_client_predict,
    gordo_real_server_fixture,  # noqa: F401 - registers the session fixture `gordo_real_server`
    oracle_frame,
    sensor_points,
    write_sensors,
)
from tests.support.influxd import InfluxServer

pytestmark = [pytest.mark.integration, pytest.mark.gordo_real, pytest.mark.slow]

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
STEP = timedelta(minutes=10)
LSTM_OFFSET = LSTM_LOOKBACK_WINDOW - 1


@pytest.fixture(scope="module")
def sensors(influxd: InfluxServer) -> str:
    """Five hours of 1-minute data for tag-1..tag-4 in a fresh database; returns its name."""
    database = f"gordo_real_{uuid.uuid4().hex[:8]}"
    written = write_sensors(influxd.url, database, sensor_points(TAGS, T0, T0 + timedelta(hours=5)))
    assert written == len(TAGS) * 5 * 60
    return database


def on_grid(moment: datetime) -> bool:
    return moment.second == 0 and moment.microsecond == 0 and moment.minute % 10 == 0


def test_gordo_client_gets_predictions_from_the_real_server(gordo_real_server: GordoRealServer,
                                                            influxd: InfluxServer, sensors: str) -> None:
    server = gordo_real_server
    assert {"pca-model", "lstm-model"} <= set(server.models)
    start, end = T0 + timedelta(hours=2), T0 + timedelta(hours=4)

    result = gordo_client_predict(server, influxd.url, sensors, "sensors", start, end, ["pca-model", "lstm-model"])

    assert set(result) == {"pca-model", "lstm-model"}
    for model, answer in result.items():
        assert answer["exception"] is None and answer["errors"] == [], (model, answer["exception"], answer["errors"])
        assert answer["rows"], f"{model}: no rows"
        frame = oracle_frame(answer)
        assert all(on_grid(moment) for moment in frame.index), f"{model}: {list(frame.index)}"
        groups = set(frame.columns.get_level_values(0))
        assert {"model-output", "total-anomaly-confidence", "tag-anomaly-scaled"} <= groups, (model, groups)
        assert set(frame["model-output"].columns) == set(TAGS)
        assert frame.index.max() <= end

    pca_in = sorted({pd.Timestamp(ts) for _, ts, _ in result["pca-model"]["input_rows"]})
    lstm_in = sorted({pd.Timestamp(ts) for _, ts, _ in result["lstm-model"]["input_rows"]})
    pca_out = oracle_frame(result["pca-model"]).index
    lstm_out = oracle_frame(result["lstm-model"]).index
    # The client asks for (model_offset + 5) buckets before `start`; the PCA answers every input row,
    # the LSTM needs lookback_window rows for its first output.
    assert pca_out[0] == pca_in[0] == start - 5 * STEP
    assert list(pca_out) == pca_in
    assert lstm_in[0] == start - (LSTM_OFFSET + 5) * STEP
    assert lstm_out[0] == lstm_in[0] + LSTM_OFFSET * STEP
    assert len(lstm_out) == len(lstm_in) - LSTM_OFFSET
    assert lstm_out[-1] == pca_out[-1]

    assert server.metadata("pca-model")["metadata"]["metadata"]["build_metadata"]["model"]["model_offset"] == 0
    lstm_metadata = server.metadata("lstm-model")
    assert lstm_metadata["metadata"]["metadata"]["build_metadata"]["model"]["model_offset"] == LSTM_OFFSET
    assert lstm_metadata["revision"] == server.revision


def test_row_filter_model_answers_only_rows_the_filter_keeps(gordo_real_server: GordoRealServer,
                                                             influxd: InfluxServer, sensors: str) -> None:
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=5)
    [(model, answer)] = gordo_client_predict(gordo_real_server, influxd.url, sensors, "sensors", start, end,
                                             ["row-filter-model"]).items()
    assert answer["exception"] is None and answer["errors"] == []
    inputs = pd.DataFrame(answer["input_rows"], columns=["tag", "time", "value"]).pivot(
        index="time", columns="tag", values="value")
    assert (inputs["tag-1"] > 0.1).all()
    assert set(oracle_frame(answer).index) == set(pd.to_datetime(inputs.index, utc=True))


def anomaly_request(rows: int) -> dict:
    index = [(T0 + i * STEP).isoformat() for i in range(rows)]
    frame = {tag: {ts: 0.5 + 0.01 * i + 0.1 * n for i, ts in enumerate(index)} for n, tag in enumerate(TAGS)}
    return {"X": frame, "y": frame}


def test_real_server_needs_more_rows_than_the_lookback_window(gordo_real_server: GordoRealServer) -> None:
    url = gordo_real_server.model_url("lstm-model", "anomaly/prediction")
    too_short = requests.post(url, json=anomaly_request(LSTM_LOOKBACK_WINDOW), timeout=60)
    assert too_short.status_code == 500, too_short.text[:300]  # Gordo's ValueError escapes as an HTML 500

    enough = requests.post(url, json=anomaly_request(LSTM_LOOKBACK_WINDOW + 1), timeout=60)
    assert enough.status_code == 200, enough.text[:300]
    output = enough.json()["data"]["model-output"]["tag-1"]
    assert sorted(output) == [str(pd.Timestamp(T0 + i * STEP)) for i in (LSTM_OFFSET, LSTM_OFFSET + 1)]


def test_gordo_client_raises_when_influx_has_no_data_in_the_range(gordo_real_server: GordoRealServer,
                                                                   influxd: InfluxServer, sensors: str) -> None:
    later = T0 + timedelta(days=3)
    result = gordo_client_predict(gordo_real_server, influxd.url, sensors, "sensors", later,
                                  later + timedelta(hours=1), ["pca-model"])
    assert result["pca-model"]["rows"] == []
    assert result["pca-model"]["exception"].startswith("IndexError"), result
