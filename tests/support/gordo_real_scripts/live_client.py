"""gordo-client as a live client: one `Client.predict` per model and window, timed; runs INSIDE the
gordo-client venv (never imports latigo).

    python live_client.py REQUEST.json

REQUEST.json: {"project", "host", "port", "influx_host", "influx_port", "database", "measurement",
"models": [names], "windows": [[start, end], ...] (ISO 8601 with offset), "use_parquet"}.

The client is made once (one HTTP session, as a service would keep it). The script then prints
`ready` and waits for a line on stdin, so the caller can read the server's CPU right before the loop;
for every round it is sent (`go`), it predicts every (window, model) in turn and prints one JSON line:
{"seconds": wall time of the loop, "predictions": count, "rows": rows answered, "errors": [...]}.
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
        for start, end in windows:
            for model in request["models"]:
                [(_, frame, failed)] = client.predict(start, end, targets=[model])
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
