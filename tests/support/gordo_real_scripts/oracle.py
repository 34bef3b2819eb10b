"""Predictions by Gordo's official client; runs INSIDE the gordo-client venv (never imports latigo).

    python oracle.py REQUEST.json RESULT.json

REQUEST.json: {"project", "host", "port", "influx_host", "influx_port", "database", "measurement",
"start", "end" (ISO 8601 with offset), "models": [names], "batch_size" (optional), "n_retries",
"parallelism"}.

For every model, in turn, `gordo_client.Client(project, host, port, scheme="http",
data_provider=InfluxDataProvider(measurement, value_name="Value", client=DataFrameClient(...)),
use_parquet=False).predict(start, end, targets=[model])` fetches the sensor data from InfluxDB
(measurement, tag key `tag`, field `Value`), resamples it as the model's dataset says, POSTs it to the
server's /anomaly/prediction in batches and joins the answers. The client's own `prediction_forwarder`
hook (with forward_resampled_sensors=True) records the resampled input it sent.

RESULT.json: {model: {"rows": [[group, column, iso_ts, value], ...], "errors": [...],
"input_rows": [[column, iso_ts, value], ...], "exception": null or "Type: message"}}; the (group, column)
MultiIndex of the client's frame is flattened, NaN values are skipped, timestamps are UTC ISO 8601.
"errors" are the client's own messages for failed batches; "exception" is what `predict` raised (for
instance when InfluxDB has no data for a tag in the range), the other keys are then empty.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import datetime, timezone


def _iso(timestamp) -> str:
    if timestamp.tzinfo is None:
        raise ValueError(f"naive timestamp {timestamp!r} in the client's frame")
    return timestamp.astimezone(timezone.utc).isoformat()


def _value(value):
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "isoformat"):
        return _iso(value)
    return value


def _column(column) -> str:
    return "|".join(map(str, column)) if isinstance(column, tuple) else str(column)


def _flatten(frame) -> list[list]:
    rows = []
    for timestamp, row in frame.iterrows():
        when = _iso(timestamp)
        for column, value in row.items():
            value = _value(value)
            if value is None:
                continue
            group, name = (column[0], column[1]) if isinstance(column, tuple) else (column, "")
            rows.append([str(group), str(name), when, value])
    return rows


def _flatten_input(frame) -> list[list]:
    rows = []
    for timestamp, row in frame.iterrows():
        when = _iso(timestamp)
        for column, value in row.items():
            value = _value(value)
            if value is not None:
                rows.append([_column(column), when, value])
    return rows


def main(request_path: str, result_path: str) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from gordo_client import Client
    from gordo_core.data_providers.providers import InfluxDataProvider
    from influxdb import DataFrameClient

    with open(request_path) as file:
        request = json.load(file)
    start = datetime.fromisoformat(request["start"])
    end = datetime.fromisoformat(request["end"])
    influx = DataFrameClient(host=request["influx_host"], port=request["influx_port"], database=request["database"])
    provider = InfluxDataProvider(measurement=request["measurement"], value_name="Value", client=influx)

    inputs: list = []

    def forwarder(predictions=None, machine=None, metadata=None, resampled_sensor_data=None):
        if resampled_sensor_data is not None:
            inputs.append(resampled_sensor_data)

    options = {"n_retries": request.get("n_retries", 0), "parallelism": request.get("parallelism", 2)}
    if request.get("batch_size"):
        options["batch_size"] = request["batch_size"]
    client = Client(request["project"], host=request["host"], port=request["port"], scheme="http",
                    data_provider=provider, use_parquet=False, prediction_forwarder=forwarder,
                    forward_resampled_sensors=True, **options)
    result = {}
    for model in request["models"]:
        inputs.clear()
        try:
            [(name, frame, errors)] = client.predict(start, end, targets=[model])
        except Exception as error:  # e.g. no sensor data at all: gordo-core's provider raises IndexError
            logging.exception("gordo-client raised for %s", model)
            result[model] = {"rows": [], "errors": [], "input_rows": [],
                             "exception": f"{type(error).__name__}: {error}"}
            continue
        result[name] = {
            "rows": _flatten(frame),
            "errors": [str(error) for error in errors],
            "input_rows": [row for data in inputs for row in _flatten_input(data)],
            "exception": None,
        }
    with open(result_path, "w") as file:
        json.dump(result, file)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
