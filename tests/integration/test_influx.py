"""latigo.sensors.influx against a real influxd: bucket means, hostile names, listing, errors, the sink.

Expected values are computed here from the raw points the test wrote (numpy, one bucket at a
time), never by latigo's own resampling code.
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from latigo.errors import PermanentError, TransientError
from latigo.sensors.influx import InfluxSensors
from latigo.sensors.influx_sink import InfluxPredictionSink, escape_tag
from latigo.types import PredictionFrame, PredictionRow
from tests.support.influxd import StatusServer, free_port, influxql, write_lines

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
T0_MS = int(T0.timestamp() * 1000)
DAY_MINUTES = 24 * 60
MEASUREMENT = "sensor data"  # a space in the measurement name too
REGULAR = [f"plant.area{i % 7}.sensor-{i:03d}" for i in range(100)]
HOSTILE = [
    "x' OR \"tag\" =~ /.*/ OR 'x",
    "a/ OR 1=1",
    "b/) OR \"tag\" =~ /.*",
    "quote'single\"double",
    "back\\slash and \\\\double",
    "regex.*[a-z]+(x|y)?{2}^$",
    "with space, comma=equals",
    "temp °C æøå 温度 🌡",
    "line\\\nbreak",  # InfluxDB 1.x can hold a newline in a tag only behind a backslash
    "x'; DROP DATABASE \"victim\"; SELECT '",
    "plant.area1.sensor-0.*",  # a regex that would match real sensors
    "tab\tand\rcarriage",  # a string literal cannot hold CR or NUL: these go in a regex
    "nul\x00char",
    ")|(.*",
]


def lp_tag(value: str) -> str:
    """Line-protocol tag escaping, written independently of latigo's (enough for the names above)."""
    return value.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


@dataclass
class Dataset:
    url: str
    database: str
    raw: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (ms since epoch, values)


def raw_series(rng: np.random.Generator, level: float, gap: bool) -> tuple[np.ndarray, np.ndarray]:
    """One point per minute at a random second inside it (so buckets are not all equally full)."""
    minute = np.arange(DAY_MINUTES, dtype=np.int64)
    times = T0_MS + minute * 60_000 + rng.integers(0, 60_000, DAY_MINUTES)
    if gap:  # 25 minutes without data: some 10-minute buckets are empty
        times = times[(minute < 200) | (minute >= 225)]
    return times, rng.normal(level, 1.0, len(times))


@pytest.fixture(scope="module")
def dataset(influxd) -> Dataset:
    database = f"sensors_{uuid.uuid4().hex[:8]}"
    influxql(influxd.url, f'CREATE DATABASE "{database}"')
    influxql(influxd.url, 'CREATE DATABASE "victim"')
    rng = np.random.default_rng(6)
    raw = {}
    for i, name in enumerate(REGULAR + HOSTILE):
        raw[name] = raw_series(rng, level=float(i), gap=i % 10 == 3)
    lines = [
        f"{MEASUREMENT.replace(' ', chr(92) + ' ')},tag={lp_tag(name)} Value={value!r} {ts}"
        for name, (times, values) in raw.items()
        for ts, value in zip(times.tolist(), values.tolist(), strict=True)
    ]
    write_lines(influxd.url, database, lines, batch=10_000, precision="ms")
    return Dataset(influxd.url, database, raw)


@pytest.fixture
def sensors(influxd, dataset) -> InfluxSensors:
    provider = InfluxSensors(InfluxSensors.Settings(database=dataset.database, host="127.0.0.1", port=influxd.port,
                                                    measurement=MEASUREMENT))
    yield provider
    provider.close()


def record_requests(provider: InfluxSensors) -> list:
    """Every HTTP request the provider's client sends (observed through a requests hook)."""
    sent = []
    provider.client._session.hooks["response"].append(lambda response, *a, **k: sent.append(response.request))
    return sent


def expected_means(raw: tuple[np.ndarray, np.ndarray], start: datetime, end: datetime, resolution: timedelta):
    """Bucket starts and means, one bucket at a time: buckets at multiples of the resolution since
    the epoch, points restricted to [start, end)."""
    times, values = raw
    step = int(resolution.total_seconds() * 1000)
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    first = start_ms - start_ms % step
    starts, means = [], []
    for bucket in range(first, end_ms, step):
        inside = (times >= max(bucket, start_ms)) & (times < min(bucket + step, end_ms))
        starts.append(bucket)
        means.append(values[inside].mean() if inside.any() else math.nan)
    return pd.to_datetime(starts, unit="ms", utc=True), np.array(means)


def assert_frame_matches(frame, dataset: Dataset, names, start, end, resolution) -> None:
    assert list(frame.data.columns) == list(names)
    assert str(frame.data.index.tz) == "UTC"
    for name in names:
        index, means = expected_means(dataset.raw[name], start, end, resolution)
        assert frame.data.index.equals(index), name
        assert frame.data[name].dtype == np.float64
        np.testing.assert_allclose(frame.data[name].to_numpy(), means, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    "start, span",
    [
        (T0 + timedelta(hours=3, minutes=7, seconds=13), timedelta(minutes=30)),  # not on the 10-minute grid
        (T0 + timedelta(minutes=180), timedelta(minutes=30)),  # covers part of a gap: an empty bucket
        (T0, timedelta(days=1)),
    ],
)
def test_twenty_sensor_model_gets_server_side_bucket_means(sensors, dataset, start, span):
    model = [REGULAR[i] for i in (3, 50, 13, 0, 99, 23, 7, 61, 42, 33, 88, 5, 17, 29, 71, 64, 93, 11, 36, 53)]
    resolution = timedelta(minutes=10)
    sent = record_requests(sensors)

    frame = sensors.get_data_for_range(start, start + span, model, resolution)

    assert frame.missing == ()
    assert_frame_matches(frame, dataset, model, start, start + span, resolution)
    assert len(sent) == 1, "one request for all sensors"
    query = sensors.get_native_range_specifier(start, start + span, {"sensors": model, "resolution": resolution})
    assert sent[0].method == "GET"
    assert _sent_query(sent[0]) == query, "the native specifier is the query sent"


def _sent_query(request) -> str:
    from urllib.parse import parse_qs, urlsplit

    if request.method == "POST":
        return parse_qs(request.body if isinstance(request.body, str) else request.body.decode())["q"][0]
    return parse_qs(urlsplit(request.url).query)["q"][0]


def test_every_sensor_over_a_day_goes_in_one_posted_query(sensors, dataset):
    resolution = timedelta(minutes=10)
    sent = record_requests(sensors)
    frame = sensors.get_data_for_range(T0, T0 + timedelta(days=1), REGULAR, resolution)
    assert_frame_matches(frame, dataset, REGULAR, T0, T0 + timedelta(days=1), resolution)
    assert [r.method for r in sent] == ["POST"], "a long query goes in the body"
    spec = sensors.get_native_range_specifier(T0, T0 + timedelta(days=1), {"sensors": REGULAR, "resolution": "10m"})
    assert _sent_query(sent[0]) == spec
    assert "GROUP BY time(600s)" in spec and "time >= '2024-03-01T00:00:00Z' AND time < '2024-03-02T00:00:00Z'" in spec


def test_hostile_names_each_return_only_their_own_series(sensors, dataset):
    start, end, resolution = T0 + timedelta(hours=5), T0 + timedelta(hours=7), timedelta(minutes=10)
    for name in HOSTILE:
        frame = sensors.get_data_for_range(start, end, [name], resolution)
        assert frame.missing == (), name
        assert_frame_matches(frame, dataset, [name], start, end, resolution)
        assert sensors.sensor_exists(name), name
    together = HOSTILE + REGULAR[:5]
    frame = sensors.get_data_for_range(start, end, together, resolution)
    assert_frame_matches(frame, dataset, together, start, end, resolution)
    assert influxql(dataset.url, "SHOW DATABASES")["series"][0]["values"].count(["victim"]) == 1


@pytest.mark.parametrize("name", [".*", "plant.area1.sensor-00.", "/.*/", "' OR '1'='1", "x\\", "\n", "plant"])
def test_patterns_and_fragments_match_nothing(sensors, name):
    frame = sensors.get_data_for_range(T0, T0 + timedelta(hours=1), [name], timedelta(minutes=10))
    assert frame.missing == (name,)
    assert list(frame.data.columns) == []
    assert len(frame.data.index) == 6
    assert not sensors.sensor_exists(name)


def test_every_short_name_over_quoting_characters_reads_back_only_itself(influxd):
    """All strings of up to 3 characters over quote, slash, backslash, regex and control characters,
    written (when line protocol can hold them) and read back in one query: each column is its own."""
    alphabet = ["a", "\\", "'", '"', "/", "\r", "\x00", " ", "|", ".", "*"]
    names = ["".join(chars) for n in range(1, 4) for chars in itertools.product(alphabet, repeat=n)]
    names = [name for name in names if escape_tag(name) is not None]
    database = f"names_{uuid.uuid4().hex[:8]}"
    influxql(influxd.url, f'CREATE DATABASE "{database}"')
    try:
        lines = [f"m,tag={escape_tag(name)} Value={i} {T0_MS}" for i, name in enumerate(names)]
        write_lines(influxd.url, database, lines)
        provider = InfluxSensors(InfluxSensors.Settings(database=database, host="127.0.0.1", port=influxd.port,
                                                        measurement="m"))
        absent = ["a.*a*", "/.*/", "a\r.*"]  # patterns over the written names, not names themselves
        frame = provider.get_data_for_range(T0, T0 + timedelta(minutes=1), names + absent, timedelta(minutes=1))
        assert frame.missing == tuple(absent)
        assert list(frame.data.columns) == names
        assert frame.data.iloc[0].tolist() == [float(i) for i in range(len(names))]
        assert sorted(provider.get_sensor_list()) == sorted(names)
    finally:
        influxql(influxd.url, f'DROP DATABASE "{database}"')


def test_sensor_listing_has_every_name_exactly_once(sensors):
    names = sensors.get_sensor_list()
    assert len(names) == len(set(names))
    assert set(names) == set(REGULAR + HOSTILE)


def test_missing_sensors_are_reported_by_name_and_known_ones_without_data_are_nan(sensors, dataset):
    requested = [REGULAR[1], "no-such-sensor", "", REGULAR[2], "no-such-sensor", HOSTILE[0]]
    frame = sensors.get_data_for_range(T0, T0 + timedelta(hours=1), requested, timedelta(minutes=10))
    assert frame.missing == ("no-such-sensor", "")
    assert list(frame.data.columns) == [REGULAR[1], REGULAR[2], HOSTILE[0]]

    before = T0 - timedelta(days=2)
    empty = sensors.get_data_for_range(before, before + timedelta(hours=1), [REGULAR[1]], timedelta(minutes=10))
    assert empty.missing == ()
    assert list(empty.data.columns) == [REGULAR[1]]
    assert empty.data[REGULAR[1]].isna().all() and len(empty.data) == 6

    nothing = sensors.get_data_for_range(T0, T0 + timedelta(hours=1), ["", "nope"], timedelta(minutes=10))
    assert nothing.missing == ("", "nope") and nothing.data.shape == (6, 0)


def test_unknown_database_is_a_permanent_error_naming_it(influxd):
    provider = InfluxSensors(InfluxSensors.Settings(database="no_such_db", host="127.0.0.1", port=influxd.port))
    with pytest.raises(PermanentError, match="database not found: no_such_db"):
        provider.get_data_for_range(T0, T0 + timedelta(hours=1), ["a"], timedelta(minutes=10))
    with pytest.raises(PermanentError, match="no_such_db"):
        provider.get_sensor_list()


def test_unreachable_server_and_5xx_are_transient():
    provider = InfluxSensors(InfluxSensors.Settings(database="db", host="127.0.0.1", port=free_port(), retries=1))
    with pytest.raises(TransientError, match="ConnectionError"):
        provider.get_sensor_list()
    with StatusServer(503) as proxy:
        provider = InfluxSensors(InfluxSensors.Settings(database="db", host="127.0.0.1", port=proxy.port))
        with pytest.raises(TransientError, match="server error"):
            provider.get_data_for_range(T0, T0 + timedelta(hours=1), ["a"], timedelta(minutes=10))
    with StatusServer(400, b'{"error":"error parsing query: found EOF"}') as proxy:
        provider = InfluxSensors(InfluxSensors.Settings(database="db", host="127.0.0.1", port=proxy.port))
        with pytest.raises(PermanentError, match="error parsing query"):
            provider.sensor_exists("a")


def test_a_query_cut_off_by_influxd_shutting_down_is_transient():
    """What influxd 1.x answers to a query in flight while it stops (seen stopping a real one mid-drain):
    a 200 whose statement failed with "query engine shutdown". Its next start answers again."""
    body = b'{"results":[{"statement_id":0,"error":"query engine shutdown"}]}\n'
    with StatusServer(200, body) as stopping:
        provider = InfluxSensors(InfluxSensors.Settings(database="db", host="127.0.0.1", port=stopping.port))
        with pytest.raises(TransientError, match="query engine shutdown"):
            provider.get_data_for_range(T0, T0 + timedelta(hours=1), ["a"], timedelta(minutes=10))


def test_server_timeout_is_transient(influxd):
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    try:
        settings = InfluxSensors.Settings(database="db", host="127.0.0.1", port=listener.getsockname()[1],
                                          timeout=timedelta(seconds=0.3), retries=1)
        with pytest.raises(TransientError, match="Timeout"):
            InfluxSensors(settings).get_sensor_list()
    finally:
        for connection, _ in accepted:
            connection.close()
        listener.close()


# ---------------------------------------------------------------- prediction sink


@pytest.fixture
def sink_db(influxd):
    database = f"predictions_{uuid.uuid4().hex[:8]}"
    influxql(influxd.url, f'CREATE DATABASE "{database}"')
    yield database
    influxql(influxd.url, f'DROP DATABASE "{database}"')


def make_sink(influxd, database, **options) -> InfluxPredictionSink:
    return InfluxPredictionSink(InfluxPredictionSink.Settings(database=database, host="127.0.0.1",
                                                              port=influxd.port, **options))


def read_back(url: str, database: str, measurement: str) -> dict[tuple[str, str, int], float]:
    """(model, tag, ns) -> value of every point in the measurement, read with plain InfluxQL."""
    ident = '"' + measurement.replace("\\", "\\\\").replace('"', '\\"') + '"'
    result = influxql(url, f'SELECT "value" FROM {ident} GROUP BY "model", "tag"', database, method="GET")
    points = {}
    for series in result.get("series", []):
        tags = series["tags"]
        for ts, value in series["values"]:
            points[(tags["model"], tags.get("tag", ""), ts)] = value
    return points


def prediction_rows(tags, outputs=("model-output", "tag-anomaly-scaled"), count=50, seed=1):
    rng = np.random.default_rng(seed)
    base = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)
    return [
        PredictionRow(output, tag, base + timedelta(minutes=10 * i, microseconds=int(rng.integers(0, 1_000_000))),
                      float(rng.normal() * 10 ** int(rng.integers(-8, 8))))
        for output in outputs
        for tag in tags
        for i in range(count)
    ]


def test_sink_points_read_back_exactly_and_rewrites_are_idempotent(influxd, sink_db):
    sink = make_sink(influxd, sink_db, measurement_prefix="latigo ", batch_size=37)
    tags = ["plain-tag", *HOSTILE, "TAG,with=all the\\specials\\\\x"]
    frame = PredictionFrame("model, one=1 \"x\"", prediction_rows(tags))

    assert sink.write(frame) == len(frame.rows)
    assert sink.write(frame) == len(frame.rows)  # a redelivered task

    for output in ("model-output", "tag-anomaly-scaled"):
        got = read_back(influxd.url, sink_db, f"latigo {output}")
        want = {(frame.model, r.tag, int((r.ts - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1))
                 * 1000): r.value for r in frame.rows if r.output == output}
        assert got == want

    changed = PredictionFrame(frame.model, [r._replace(value=r.value + 1) for r in frame.rows[:10]])
    sink.write(changed)
    got = read_back(influxd.url, sink_db, "latigo model-output")
    assert len(got) == len(frame.rows) // 2
    for row in changed.rows:
        ns = int((row.ts - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1)) * 1000
        assert got[(frame.model, row.tag, ns)] == row.value


def test_sink_escaping_round_trips_every_storable_name(influxd, sink_db):
    """Every string up to 4 characters over the line-protocol specials is either stored exactly or
    refused; none is stored as another name and none breaks the batch it is in."""
    alphabet = ["a", "\\", ",", "=", " ", "\n", '"']
    names = ["".join(chars) for n in range(1, 5) for chars in itertools.product(alphabet, repeat=n)]
    sink = make_sink(influxd, sink_db, batch_size=1000)
    rows = [PredictionRow("out", name, datetime(2024, 1, 1, tzinfo=timezone.utc), float(i))
            for i, name in enumerate(names)]
    written = sink.write(PredictionFrame("m", rows))

    got = read_back(influxd.url, sink_db, "out")
    stored = {tag: value for (_, tag, _), value in got.items()}
    assert len(stored) == written
    assert written > len(names) // 3
    for tag, value in stored.items():
        assert names[int(value)] == tag  # stored under exactly its own name
    refused = set(names) - set(stored)
    assert all(name.endswith("\\") or "\n" in name or "\\," in name or "\\=" in name or "\\ " in name
               for name in refused)


def test_sink_skips_rows_it_cannot_store_and_writes_the_rest(influxd, sink_db, caplog):
    sink = make_sink(influxd, sink_db)
    ts = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rows = [PredictionRow("out", "ok", ts, 1.0), PredictionRow("out", "trailing\\", ts, 2.0),
            PredictionRow("out", "nan", ts, math.nan), PredictionRow("#comment", "ok", ts, 3.0),
            PredictionRow("out", "", ts, 4.0)]
    assert sink.write(PredictionFrame("m", rows)) == 2
    assert "3 of 5 rows" in caplog.text
    assert read_back(influxd.url, sink_db, "out") == {("m", "ok", 1704067200 * 10**9): 1.0,
                                                      ("m", "", 1704067200 * 10**9): 4.0}


def test_sink_to_a_missing_database_is_permanent_unless_it_may_create_it(influxd):
    name = f"absent_{uuid.uuid4().hex[:8]}"
    rows = [PredictionRow("out", "t", datetime(2024, 1, 1, tzinfo=timezone.utc), 1.0)]
    with pytest.raises(PermanentError, match="database not found"):
        make_sink(influxd, name).write(PredictionFrame("m", rows))
    try:
        assert make_sink(influxd, name, create_database=True).write(PredictionFrame("m", rows)) == 1
        assert read_back(influxd.url, name, "out") == {("m", "t", 1704067200 * 10**9): 1.0}
    finally:
        influxql(influxd.url, f'DROP DATABASE "{name}"')
