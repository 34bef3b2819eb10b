"""InfluxDB sensor reads and prediction writes, against a throwaway influxd started here.

Reads: a 20-tag model over a 30-minute and a 1-day window at 10-minute resolution, fetched as
one query for all tags (what latigo does) and as one query per tag, in the same run; the
ratio is what the single query saves (on loopback: remotely each round trip costs more).
Writes: the influx prediction sink's rate in points per second.

    python benchmarks/sensors.py [--sensors 100] [--raw-seconds 10] [--repeat 7] [--points 200000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latigo.sensors.influx import InfluxSensors  # noqa: E402
from latigo.sensors.influx_sink import InfluxPredictionSink  # noqa: E402
from latigo.types import PredictionFrame, PredictionRow  # noqa: E402
from tests.support.influxd import influxd_available, influxql, start_influxd, write_lines  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
RESOLUTION = timedelta(minutes=10)


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    action()  # warm caches and connections
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def load(url: str, database: str, sensors: list[str], raw_seconds: int) -> int:
    rng = np.random.default_rng(0)
    stamps = np.arange(int(T0.timestamp()), int((T0 + timedelta(days=1)).timestamp()), raw_seconds)
    lines = []
    for level, name in enumerate(sensors):
        values = rng.normal(level, 1.0, len(stamps))
        lines.extend(f"sensors,tag={name} Value={v!r} {t}" for t, v in zip(stamps.tolist(), values.tolist(),
                                                                            strict=True))
    started = time.perf_counter()
    write_lines(url, database, lines, batch=10_000, precision="s")
    elapsed = time.perf_counter() - started
    print(f"loaded {len(lines):,} raw points ({len(sensors)} sensors x 1 day every {raw_seconds}s) "
          f"as line protocol in 10k batches: {elapsed:.2f}s = {len(lines) / elapsed:,.0f} points/s")
    return len(lines)


def reads(provider: InfluxSensors, sensors: list[str], repeat: int) -> None:
    model = sensors[:: max(1, len(sensors) // 20)][:20]
    for label, span in (("30 min", timedelta(minutes=30)), ("1 day", timedelta(days=1))):
        start = T0 + timedelta(hours=6) if span < timedelta(days=1) else T0
        end = start + span
        one = median_seconds(lambda s=start, e=end: provider.get_data_for_range(s, e, model, RESOLUTION), repeat)
        each = median_seconds(
            lambda s=start, e=end: [provider.get_data_for_range(s, e, [tag], RESOLUTION) for tag in model], repeat
        )
        print(f"20-tag model, {label} at 10 min: one query {one * 1000:7.1f} ms | one query per tag "
              f"{each * 1000:7.1f} ms | per-tag / one = {each / one:4.1f}x")
    everything = median_seconds(lambda: provider.get_data_for_range(T0, T0 + timedelta(days=1), sensors, RESOLUTION),
                                repeat)
    print(f"{len(sensors)}-tag model, 1 day at 10 min, one query: {everything * 1000:.1f} ms")


def writes(url: str, port: int, points: int) -> None:
    database = "bench_predictions"
    influxql(url, f'CREATE DATABASE "{database}"')
    outputs = ["model-output", "tag-anomaly-scaled", "total-anomaly-scaled", "anomaly-confidence"]
    tags = [f"plant.area.sensor-{i:03d}" for i in range(20)]
    per_series = max(1, points // (len(outputs) * len(tags)))
    rng = np.random.default_rng(1)
    rows = [PredictionRow(output, tag, T0 + timedelta(minutes=i), float(value))
            for output in outputs for tag in tags
            for i, value in enumerate(rng.normal(size=per_series).tolist())]
    frame = PredictionFrame("bench-model", rows)
    sink = InfluxPredictionSink(InfluxPredictionSink.Settings(database=database, host="127.0.0.1", port=port))
    started = time.perf_counter()
    sink.lines(frame)
    formatting = time.perf_counter() - started
    started = time.perf_counter()
    written = sink.write(frame)
    first = time.perf_counter() - started
    started = time.perf_counter()
    sink.write(frame)  # a redelivered task: the same points again
    again = time.perf_counter() - started
    stored = influxql(url, 'SELECT count("value") FROM "model-output"', database)["series"][0]["values"][0][1]
    print(f"influx sink: {written:,} points in {first:.2f}s = {written / first:,.0f} points/s "
          f"(formatting alone {written / formatting:,.0f} points/s); rewrite {written / again:,.0f} points/s; "
          f"model-output holds {stored:,} points after both writes (expected {len(tags) * per_series:,})")
    sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument("--raw-seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--points", type=int, default=200_000)
    args = parser.parse_args()
    if not influxd_available():
        sys.exit("influxd is not installed (Debian package influxdb)")
    server = start_influxd()
    try:
        influxql(server.url, 'CREATE DATABASE "bench"')
        sensors = [f"plant.area{i % 7}.sensor-{i:03d}" for i in range(args.sensors)]
        load(server.url, "bench", sensors, args.raw_seconds)
        provider = InfluxSensors(InfluxSensors.Settings(database="bench", host="127.0.0.1", port=server.port))
        reads(provider, sensors, args.repeat)
        provider.close()
        writes(server.url, server.port, args.points)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
