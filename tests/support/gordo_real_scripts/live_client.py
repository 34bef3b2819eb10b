"""gordo-client as a live client: one `Client.predict` per model and window, timed; runs INSIDE the
gordo-client venv (never imports latigo).

    python live_client.py REQUEST.json

REQUEST.json: {"project", "host", "port", "influx_host", "influx_port", "database", "measurement",
"models": [names], "windows": [[start, end], ...] (ISO 8601 with offset), "use_parquet", "per_model"}.

The client is made once (one HTTP session, as a service would keep it). The script then prints
`ready` and waits for a line on stdin, so the caller can read the server's CPU right before the loop;
for every round it is sent (`go`), it predicts every window in turn, with one `predict` for all the
models (the client's own threads ask for them at once), or with `per_model` one `predict` per (window,
model), and prints one JSON line:
{"seconds": wall time of the loop, "predictions": model-windows answered, "rows": rows answered,
"errors": [...]}.
An empty line or end of input ends it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime


def main(request_path: str) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from gordo_client import Client
    from gordo_core.data_providers.providers import InfluxDataProvider
    from influxdb import DataFrameClient

    with open(request_path) as file:
        request = json.load(file)
    windows = [(datetime.fromisoformat(start), datetime.fromisoformat(end)) for start, end in request["windows"]]
    influx = DataFrameClient(host=request["influx_host"], port=request["influx_port"], database=request["database"])
    provider = InfluxDataProvider(measurement=request["measurement"], value_name="Value", client=influx)
    client = Client(request["project"], host=request["host"], port=request["port"], scheme="http",
                    data_provider=provider, use_parquet=bool(request["use_parquet"]), n_retries=0)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        errors: list[str] = []
        rows = predictions = 0
        started = time.perf_counter()
        targets = [[model] for model in request["models"]] if request["per_model"] else [request["models"]]
        for start, end in windows:
            for models in targets:
                for _, frame, failed in client.predict(start, end, targets=models):
                    errors.extend(str(error) for error in failed)
                    rows += len(frame)
                    predictions += 1
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "predictions": predictions, "rows": rows, "errors": errors[:5]}),
              flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
