"""Issue 12's judge: latigo against a REAL Gordo 6.0.4 server, value by value against gordo-client 6.3.0.

Both read the same real influxd and ask the same `gordo run-server` (models built by Gordo's own builder:
pca-model, lstm-model, row-filter-model; tests/support/gordo_real.py). The sensor data has gaps inside
windows, gaps that straddle or touch the edges of the DEFAULT schedule's windows ([hh:25, hh:55) and
[hh:55, hh+1:25): interval 30m, delay 5m, start_time 00:00), a gap longer than pca-model's
interpolation_limit (30T, so rows are dropped) and a step change; the first and last two hours are clean,
so gordo-client's own range edges do not matter (it cannot see data outside its range; latigo can).

latigo runs as a user runs it (`latigo db upgrade`, `latigo backfill`, `latigo executor`) with the
default scheduler settings, through a small pass-through HTTP proxy that counts its requests, once per
wire format (JSON, parquet: `use_parquet`); the two runs must store bitwise the same numbers. Every
stored value must equal gordo-client's for the same (model, output group, tag, timestamp), and no
timestamp gordo-client has inside latigo's covered span may be missing. The figures are printed and kept
in a file under pytest's tmp directory (its path is printed too).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from latigo.models.gordo import GordoModels, GordoSettings
from latigo.sensors.influx import InfluxSensors
from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.timegrid import predicted_buckets
from latigo.types import TimeRange
from tests.conftest import create_pg_database, drop_pg_database
from tests.support.gordo_real import (
    LSTM_LOOKBACK_WINDOW,
    TAGS,
    GordoRealServer,
    gordo_client_predict,
    gordo_real_server_fixture,  # noqa: F401 - registers the session fixture `gordo_real_server`
    sensor_points,
    write_sensors,
)
from tests.support.gordo_server import frame_from_parquet, parse_multipart
from tests.support.influxd import InfluxServer, serve_for_tests
from tests.support.processes import latigo_ok, write_config

pytestmark = [pytest.mark.gordo_real, pytest.mark.slow, pytest.mark.integration]

UTC = timezone.utc
D0 = datetime(2026, 3, 2, tzinfo=UTC)
RESOLUTION = timedelta(minutes=10)
DATA = TimeRange(D0, D0 + timedelta(hours=12))
"""1-minute points for tag-1..tag-4; the gaps (GAPS) lie in 03:30-09:30, the two hours at either end are clean."""
BACKFILL = TimeRange(D0 + timedelta(hours=2), D0 + timedelta(hours=10))
"""`latigo backfill --from --to`: the default grid's windows inside it are [02:25, 02:55) ... [09:25, 09:55)."""
EXPECTED_WINDOWS = TimeRange(D0 + timedelta(hours=2, minutes=25), D0 + timedelta(hours=9, minutes=55))
ORACLE = TimeRange(D0 + timedelta(hours=2), D0 + timedelta(hours=10, minutes=30))
"""gordo-client's range: it reads (model_offset + 5) buckets before its start (from 00:20 for the LSTM), so
its answers start at 01:10, and its last bucket (10:30) is its own range edge; latigo covers 02:20..09:40."""
STEP_AT = D0 + timedelta(hours=6, minutes=13)
STEP_TAG, STEP = "tag-3", 0.4
"""tag-3 rises by 0.4 mid-bucket and stays up (beyond the training data's range): a step change."""
DIP = ("tag-1", D0 + timedelta(hours=4, minutes=50), D0 + timedelta(hours=5), 0.05)
"""tag-1 reads 0.05 in [04:50, 05:00): row-filter-model (`tag-1` > 0.1) rejects that bucket, the first of
window [04:55, 05:25), right before the gap of every tag at 05:00-05:20 (whose filling uses it). A
window whose every row the filter rejects fails as no_data, by design (tests/unit/test_model_input.py), so
the dip stays short of that."""


def _at(hh_mm: str) -> datetime:
    hours, minutes = map(int, hh_mm.split(":"))
    return D0 + timedelta(hours=hours, minutes=minutes)


GAPS: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    (("tag-2",), "03:30", "03:50", "buckets 03:30 and 03:40 empty, inside window [03:25, 03:55)"),
    (("tag-3",), "04:20", "04:40", "straddles the window edge 04:25 (buckets 04:20, 04:30 empty)"),
    (TAGS, "04:55", "05:20", "every tag, from the window start 04:55 (buckets 05:00, 05:10 empty)"),
    (("tag-1",), "05:40", "05:55", "touches the window end 05:55: the last bucket (05:40) of [05:25, 05:55) empty"),
    (("tag-4",), "06:40", "07:00", "the last bucket of [06:25, 06:55) and the first of [06:55, 07:25) empty"),
    (("tag-2",), "07:50", "08:00", "the first bucket (07:50) of window [07:55, 08:25) empty"),
    (("tag-3",), "08:30", "09:30", "60 min > pca-model's interpolation_limit 30T: its rows 09:00-09:20 dropped"),
)
"""(tags, from, to (exclusive), why): minutes without any point."""

OUTPUT_GROUPS = ("model-output", "total-anomaly-scaled", "tag-anomaly-scaled", "anomaly-confidence",
                 "total-anomaly-confidence")
"""latigo's default `predictions.outputs`."""
MODELS = ("lstm-model", "pca-model", "row-filter-model")
TOLERANCE = {"pca-model": 1e-9, "row-filter-model": 1e-9, "lstm-model": 1e-4}
"""scikit-learn answers in float64, the Keras LSTM in float32."""
LSTM_MIN_ROWS = LSTM_LOOKBACK_WINDOW + 1
"""Gordo answers 500 for a request to the LSTM that holds lookback_window (6) rows or fewer."""
CLI_TIMEOUT = 900.0

Key = tuple[str, str, pd.Timestamp]  # (output group, tag, timestamp)


# --------------------------------------------------------------------------- data


def sensor_data() -> dict[str, list[tuple[datetime, float]]]:
    points = sensor_points(TAGS, DATA.start, DATA.end, seed=12)
    holes = [(set(tags), _at(start), _at(end)) for tags, start, end, _ in GAPS]
    data: dict[str, list[tuple[datetime, float]]] = {}
    for tag, series in points.items():
        kept = []
        for moment, value in series:
            if any(tag in tags and start <= moment < end for tags, start, end in holes):
                continue
            if tag == DIP[0] and DIP[1] <= moment < DIP[2]:
                value = DIP[3]
            kept.append((moment, value + STEP if tag == STEP_TAG and moment >= STEP_AT else value))
        data[tag] = kept
    return data


@pytest.fixture(scope="module")
def influxd() -> Iterator[InfluxServer]:
    """A throwaway influxd for this module (tests/e2e has no conftest of its own)."""
    yield from serve_for_tests()


@pytest.fixture(scope="module")
def sensors(influxd: InfluxServer) -> str:
    """The sensor data in a fresh database of the influxd; returns the database's name."""
    database = f"conformance_{uuid.uuid4().hex[:8]}"
    data = sensor_data()
    written = write_sensors(influxd.url, database, data)
    assert written == sum(len(series) for series in data.values())
    return database


@pytest.fixture(scope="module")
def oracle(gordo_real_server: GordoRealServer, influxd: InfluxServer, sensors: str) -> dict[str, dict[str, Any]]:
    """gordo-client 6.3.0's answers over ORACLE for every model (one `Client.predict` per model)."""
    result = gordo_client_predict(gordo_real_server, influxd.url, sensors, "sensors", ORACLE.start, ORACLE.end,
                                  MODELS)
    for model in MODELS:
        answer = result[model]
        assert answer["exception"] is None and answer["errors"] == [], (model, answer["exception"], answer["errors"])
        assert answer["rows"], f"gordo-client got no rows for {model}"
    return result


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gordo-conformance")


# --------------------------------------------------------------------------- counting proxy


@dataclass
class Forwarded:
    method: str
    path: str
    status: int
    seconds: float
    model: str = ""
    wire: str = ""
    """A prediction POST's format: `json` or `parquet` (multipart)."""
    x_index: list[pd.Timestamp] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.x_index)


def x_timestamps(body: bytes, content_type: str) -> list[pd.Timestamp]:
    """The timestamps of X in a prediction POST: a JSON body or a parquet multipart form."""
    if content_type.startswith("multipart/form-data"):
        frame = frame_from_parquet(parse_multipart(content_type, body)["X"])
        return sorted(pd.Timestamp(ts) for ts in frame.index)
    columns = json.loads(body or b"{}")["X"]
    first = next(iter(columns.values()))
    return sorted(pd.Timestamp(ts) for ts in first)


class CountingProxy:
    """A pass-through HTTP proxy on a free loopback port in front of the Gordo server: forwards every
    request unchanged and records it (for a prediction POST: the model and X's timestamps)."""

    def __init__(self, upstream: str, timeout: float = 300.0) -> None:
        target = urllib.parse.urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname, target.port
        self.timeout = timeout
        self.records: list[Forwarded] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "keep-alive", "accept-encoding")}
                started = time.monotonic()
                status, reply_headers, content = proxy._upstream(self.command, self.path, body, headers)
                proxy._record(self.command, self.path, status, time.monotonic() - started, body,
                              self.headers.get("Content-Type", ""))
                self.send_response(status)
                for name, value in reply_headers:
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "keep-alive"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815 - the stdlib's names

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def _upstream(self, method: str, path: str, body: bytes | None,
                  headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=self.timeout)
        try:
            connection.request(method, path, body=body, headers={**headers, "Accept-Encoding": "identity"})
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        except OSError as error:
            return 502, [("Content-Type", "text/plain")], f"proxy: upstream failed: {error!r}".encode()
        finally:
            connection.close()

    def _record(self, method: str, path: str, status: int, seconds: float, body: bytes | None,
                content_type: str) -> None:
        record = Forwarded(method, urllib.parse.urlsplit(path).path, status, seconds)
        if method == "POST" and record.path.endswith("/prediction"):
            parts = record.path.split("/")  # /gordo/v0/<project>/<model>/[anomaly/]prediction
            record.model = parts[4] if len(parts) > 4 else ""
            record.wire = "parquet" if content_type.startswith("multipart/form-data") else "json"
            try:
                record.x_index = x_timestamps(body or b"", content_type)
            except (ValueError, KeyError, StopIteration, TypeError, OSError):
                pass
        with self._lock:
            self.records.append(record)

    def posts(self, model: str | None = None) -> list[Forwarded]:
        with self._lock:
            return [r for r in self.records if r.model and (model is None or r.model == model)]

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def proxy(gordo_real_server: GordoRealServer) -> Iterator[CountingProxy]:
    with CountingProxy(gordo_real_server.base_url) as running:
        yield running


# --------------------------------------------------------------------------- comparison


def oracle_values(answer: dict[str, Any]) -> dict[Key, float]:
    return {(group, column, pd.Timestamp(ts)): float(value) for group, column, ts, value in answer["rows"]
            if group not in ("start", "end")}


def oracle_input(answer: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(answer["input_rows"], columns=["tag", "time", "value"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame.pivot(index="time", columns="tag", values="value").sort_index()


@dataclass
class Comparison:
    model: str
    tolerance: float
    compared: Counter = field(default_factory=Counter)
    max_diff: dict[str, float] = field(default_factory=dict)
    differing: list[tuple[Key, float, float]] = field(default_factory=list)
    missing: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.differing or self.missing or self.extra)

    def figures(self) -> dict[str, Any]:
        return {
            "compared": sum(self.compared.values()),
            "compared_per_group": dict(sorted(self.compared.items())),
            "max_abs_diff": dict(sorted(self.max_diff.items())),
            "tolerance": self.tolerance,
            "differing": len(self.differing),
            "missing": len(self.missing),
            "missing_timestamps": sorted({k[2].isoformat() for k in self.missing}),
            "extra": len(self.extra),
        }


def compare(model: str, latigo_values: dict[Key, float], answer: dict[str, Any], span: TimeRange,
            groups: tuple[str, ...] = OUTPUT_GROUPS) -> Comparison:
    """Every latigo value against gordo-client's for the same key; gordo-client's keys of `groups` with a
    timestamp in `span` (bucket starts) that latigo lacks are `missing`; latigo keys gordo-client lacks
    are `extra`."""
    expected = oracle_values(answer)
    result = Comparison(model, TOLERANCE[model])
    for key, value in sorted(latigo_values.items()):
        other = expected.get(key)
        if other is None:
            result.extra.append(key)
            continue
        diff = abs(value - other)
        result.compared[key[0]] += 1
        result.max_diff[key[0]] = max(result.max_diff.get(key[0], 0.0), diff)
        if not diff <= result.tolerance:
            result.differing.append((key, value, other))
    start, end = pd.Timestamp(span.start), pd.Timestamp(span.end)
    result.missing = sorted(key for key in expected
                            if key[0] in groups and start <= key[2] < end and key not in latigo_values)
    return result


def window_of(bucket: pd.Timestamp, windows: list[TimeRange]) -> TimeRange | None:
    """The window in which the bucket starting at `bucket` completes (ws < b + r <= we)."""
    done = bucket.to_pydatetime() + RESOLUTION
    return next((w for w in windows if w.start < done <= w.end), None)


def diagnose(comparison: Comparison, answer: dict[str, Any], windows: list[TimeRange], server: GordoRealServer,
             influxd: InfluxServer, database: str, limit: int = 6) -> str:
    """For the first windows holding a differing or missing key: the keys, and latigo's input rows (built
    in-process by GordoModels.model_input) next to the rows gordo-client sent, where they differ."""
    if comparison.ok:
        return ""
    lines = [f"== {comparison.model}: {len(comparison.differing)} differing, {len(comparison.missing)} missing, "
             f"{len(comparison.extra)} extra"]
    affected: dict[TimeRange | None, list[str]] = defaultdict(list)
    for key, mine, theirs in comparison.differing:
        affected[window_of(key[2], windows)].append(f"differs {key[0]}/{key[1]} {key[2].isoformat()}: "
                                                    f"latigo {mine!r} gordo-client {theirs!r} ({mine - theirs:+.3g})")
    for key in comparison.missing:
        affected[window_of(key[2], windows)].append(f"missing {key[0]}/{key[1]} {key[2].isoformat()}")
    for key in comparison.extra:
        affected[window_of(key[2], windows)].append(f"extra {key[0]}/{key[1]} {key[2].isoformat()}")
    theirs = oracle_input(answer)
    provider = in_process_models(server.base_url, influxd, database)
    try:
        info = provider.get_model_info(comparison.model)
        for window, notes in list(sorted(affected.items(), key=lambda item: str(item[0])))[:limit]:
            lines.append(f"-- window {window}: {len(notes)} keys, e.g.")
            lines.extend(f"   {note}" for note in notes[:8])
            if window is None:
                continue
            try:
                lines.extend(input_differences(provider, info, window, theirs))
            except Exception as error:  # a diagnosis must not hide the comparison's failure
                lines.append(f"   latigo's model input could not be compared: {error!r}")
    finally:
        provider.close()
    return "\n".join(lines)


def input_differences(provider: GordoModels, info: Any, window: TimeRange, theirs: pd.DataFrame) -> list[str]:
    """latigo's X for `window` (GordoModels.model_input, in-process) against the rows gordo-client sent."""
    model_input = provider.model_input(info, window)
    if model_input is None:
        return ["   latigo's model_input: no bucket completes in the window"]
    mine = model_input.X
    lines = [f"   latigo input: {len(mine)} rows {mine.index[0].isoformat()}..{mine.index[-1].isoformat()} "
             f"(span {model_input.span}, fetched {model_input.fetched}, {model_input.fetches} reads)"]
    around = theirs[(theirs.index >= mine.index[0]) & (theirs.index <= mine.index[-1])]
    only_mine, only_theirs = mine.index.difference(around.index), around.index.difference(mine.index)
    if len(only_mine):
        lines.append(f"   rows only latigo sent: {[t.isoformat() for t in only_mine]}")
    if len(only_theirs):
        lines.append(f"   rows only gordo-client sent: {[t.isoformat() for t in only_theirs]}")
    both, columns = mine.index.intersection(around.index), list(mine.columns)
    delta = (mine.loc[both, columns] - around.loc[both, columns]).abs()
    for stamp in delta.index[(delta > 1e-12).any(axis=1)]:
        lines.append(f"   row {stamp.isoformat()}: latigo {mine.loc[stamp, columns].round(6).tolist()} "
                     f"gordo-client {around.loc[stamp, columns].round(6).tolist()}")
    return lines


def in_process_models(base_url: str, influxd: InfluxServer, database: str, **settings: Any) -> GordoModels:
    sensors = InfluxSensors(InfluxSensors.Settings(database=database, host=influxd.host, port=influxd.port,
                                                   measurement="sensors"))
    return GordoModels(GordoSettings(base_url=base_url, project="latigo-test", **settings), sensors=sensors)


def frame_values(rows: list[Any]) -> dict[Key, float]:
    return {(row.output, row.tag, pd.Timestamp(row.ts)): float(row.value) for row in rows}


def report(artefacts: Path, name: str, figures: dict[str, Any], text: str) -> None:
    (artefacts / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str))
    (artefacts / f"{name}.txt").write_text(text + "\n")
    print(f"\n{text}\n(figures kept in {artefacts / name}.json and .txt)")


def figure_lines(comparisons: dict[str, Comparison]) -> list[str]:
    lines = []
    for model, comparison in sorted(comparisons.items()):
        figures = comparison.figures()
        lines.append(f"{model}: {figures['compared']} values compared (tolerance {comparison.tolerance:g}), "
                     f"{figures['differing']} over it, {figures['missing']} missing, {figures['extra']} extra")
        for group, diff in figures["max_abs_diff"].items():
            lines.append(f"    {group:26s} max |diff| {diff:.3e}  ({figures['compared_per_group'][group]} values)")
        if figures["missing_timestamps"]:
            lines.append(f"    missing timestamps: {figures['missing_timestamps']}")
    return lines


# --------------------------------------------------------------------------- running latigo


def run_latigo(config: Path, *args: str, timeout: float = CLI_TIMEOUT) -> str:
    """`latigo --config CONFIG ARGS...` to completion within `timeout`; a non-zero exit or an overrun fails
    the test with the command's output (an overrun stops the process by its pid first)."""
    return latigo_ok(config, *args, timeout=timeout)


WIRE_FORMATS = [pytest.param(False, id="json"), pytest.param(True, id="parquet")]
"""`use_parquet` of latigo's gordo settings: both wire formats must give gordo-client's numbers."""


@dataclass
class LatigoRun:
    """What one run of the CLI (db upgrade, backfill, executor) left: its tasks, its stored predictions
    and the prediction POSTs the counting proxy saw."""

    use_parquet: bool
    tasks: list[Any]
    stored: list[Any]
    records: list[Forwarded]
    seconds: float

    def posts(self, model: str | None = None) -> list[Forwarded]:
        return [r for r in self.records if r.model and (model is None or r.model == model)]


def run_latigo_cli(directory: Path, server: GordoRealServer, influxd: InfluxServer, sensors: str,
                   use_parquet: bool, windows_per_request: int | None = None) -> LatigoRun:
    """latigo as a user runs it, on the default schedule, into a database of its own; `windows_per_request`
    set when not None (else its default)."""
    url = create_pg_database("latigo_conformance")
    try:
        with CountingProxy(server.base_url) as proxy:
            started = time.monotonic()
            gordo = {"type": "gordo", "base_url": proxy.url, "project": server.project, "use_parquet": use_parquet}
            if windows_per_request is not None:
                gordo["windows_per_request"] = windows_per_request
            config = write_config(
                directory / "latigo.yaml",
                database={"url": url},
                sensor_data={"type": "influx", "host": influxd.host, "port": influxd.port, "database": sensors,
                             "measurement": "sensors"},
                model_information=gordo,
                model_execution=gordo,
                metrics={"enabled": False},  # other processes on this machine may hold the default port
            )  # no scheduler, executor or predictions section: their defaults (interval 30m, delay 5m, 00:00)
            run_latigo(config, "db", "upgrade")
            run_latigo(config, "backfill", "--from", BACKFILL.start.isoformat(), "--to", BACKFILL.end.isoformat(),
                       "--no-progress")
            run_latigo(config, "executor", "--exit-when-idle", "5")
            seconds = time.monotonic() - started
            records = list(proxy.records)
        engine = create_engine_for(DatabaseSettings(url=url))
        try:
            with engine.connect() as connection:
                tasks = connection.execute(sa.text(
                    "SELECT model, window_start, window_end, state, attempts, error, rows FROM tasks")).all()
                stored = connection.execute(sa.text("SELECT model, output, tag, ts, value FROM predictions")).all()
        finally:
            engine.dispose()
    finally:
        drop_pg_database(url)
    return LatigoRun(use_parquet, list(tasks), list(stored), records, seconds)


@pytest.fixture(scope="module")
def latigo_runs(tmp_path_factory: pytest.TempPathFactory, gordo_real_server: GordoRealServer,
                influxd: InfluxServer, sensors: str) -> Callable[..., LatigoRun]:
    """`latigo_runs(use_parquet, windows_per_request=None)`: the CLI run for that wire format (and that
    many windows per request; None: the default), made once per module, so the tests share the runs."""
    runs: dict[tuple[bool, int | None], LatigoRun] = {}

    def run(use_parquet: bool, windows_per_request: int | None = None) -> LatigoRun:
        key = (use_parquet, windows_per_request)
        if key not in runs:
            directory = tmp_path_factory.mktemp(("parquet" if use_parquet else "json") + f"-{windows_per_request}")
            runs[key] = run_latigo_cli(directory, gordo_real_server, influxd, sensors, use_parquet,
                                       windows_per_request)
        return runs[key]

    return run


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("use_parquet", WIRE_FORMATS)
def test_latigo_on_the_default_schedule_equals_gordo_client(
    use_parquet: bool, gordo_real_server: GordoRealServer, influxd: InfluxServer, sensors: str,
    oracle: dict[str, dict[str, Any]], latigo_runs: Callable[[bool], LatigoRun], artefacts: Path,
) -> None:
    run = latigo_runs(use_parquet)
    tasks, stored, latigo_seconds = run.tasks, run.stored, run.seconds
    wire = "parquet" if use_parquet else "json"

    # The ledger: one task per model and default-grid window, every one done.
    windows = sorted({TimeRange(t.window_start, t.window_end) for t in tasks}, key=lambda w: w.start)
    expected = [TimeRange(EXPECTED_WINDOWS.start + i * timedelta(minutes=30),
                          EXPECTED_WINDOWS.start + (i + 1) * timedelta(minutes=30)) for i in range(15)]
    assert windows == expected, f"windows {[str(w) for w in windows]}"
    assert sorted((t.model, t.window_start) for t in tasks) == sorted((m, w.start) for m in MODELS for w in windows)
    not_done = [(t.model, t.window_start.isoformat(), t.state, t.error) for t in tasks if t.state != "done"]

    # Covered span: the buckets that complete in (S', E'].
    covered = predicted_buckets(TimeRange(windows[0].start, windows[-1].end), RESOLUTION)
    assert covered is not None

    comparisons: dict[str, Comparison] = {}
    for model in MODELS:
        mine = {(r.output, r.tag, pd.Timestamp(r.ts)): float(r.value) for r in stored if r.model == model}
        comparisons[model] = compare(model, mine, oracle[model], covered)

    # Requests per task, from the proxy: each prediction POST belongs to the window in which its last row's
    # bucket completes.
    per_task: dict[str, Counter] = {}
    unplaced = []
    for model in MODELS:
        counts: Counter = Counter({w: 0 for w in windows})
        for post in run.posts(model):
            window = window_of(post.x_index[-1], windows) if post.x_index else None
            if window is None:
                unplaced.append((model, post.status, post.rows))
            else:
                counts[window] += 1
        per_task[model] = counts
    statuses = Counter((p.model, p.status) for p in run.posts())
    lstm_rows = [p.rows for p in run.posts("lstm-model")]
    other_requests = Counter((r.method, r.path.rsplit("/", 1)[-1]) for r in run.records if not r.model)

    lines = [
        f"gordo conformance: latigo (default schedule, backfill + executor, CLI, {wire}) vs gordo-client 6.3.0, "
        "real Gordo 6.0.4, real influxd",
        f"data {DATA}; backfill {BACKFILL}; windows {windows[0].start.isoformat()}..{windows[-1].end.isoformat()} "
        f"({len(windows)} per model); covered buckets {covered}; gordo-client over {ORACLE}",
        f"tasks: {len(tasks)}, states {dict(Counter(t.state for t in tasks))}, "
        f"attempts {dict(Counter(t.attempts for t in tasks))}, not done: {not_done}",
        *figure_lines(comparisons),
        "requests per task (prediction POSTs, counted by a pass-through proxy):",
        *[f"    {model:18s} {sum(c.values())} POSTs for {len(c)} tasks; per task "
          f"min {min(c.values())} max {max(c.values())}; distribution {dict(sorted(Counter(c.values()).items()))}"
          for model, c in per_task.items()],
        f"    POST statuses {dict(statuses)}; POSTs not placed in a window {unplaced}; "
        f"lstm-model rows per request min {min(lstm_rows, default=0)} max {max(lstm_rows, default=0)}",
        f"    other requests: {dict(other_requests)}",
        f"latigo CLI run time {latigo_seconds:.1f}s",
    ]
    diagnoses = [diagnose(comparisons[m], oracle[m], windows, gordo_real_server, influxd, sensors)
                 for m in MODELS if not comparisons[m].ok]
    text = "\n".join(lines + [d for d in diagnoses if d])
    report(artefacts, f"default-schedule-{wire}", {
        "comparisons": {m: c.figures() for m, c in comparisons.items()},
        "requests_per_task": {m: {w.start.isoformat(): n for w, n in c.items()} for m, c in per_task.items()},
        "post_statuses": {f"{m} {s}": n for (m, s), n in statuses.items()},
        "tasks": len(tasks), "not_done": not_done, "latigo_seconds": latigo_seconds,
    }, text)

    # The data does what it is meant to: pca-model's rows deep in the long gap are dropped (the LSTM's,
    # with Gordo's default 48H limit, are not) and row-filter-model rejects the dip's bucket.
    def stamps(model: str) -> set[pd.Timestamp]:
        return {key[2] for key in oracle_values(oracle[model])}

    dropped = {pd.Timestamp(_at(hh_mm)) for hh_mm in ("09:00", "09:10", "09:20")}
    assert not dropped & stamps("pca-model") and dropped <= stamps("lstm-model")
    assert pd.Timestamp(DIP[1]) not in stamps("row-filter-model") and pd.Timestamp(DIP[1]) in stamps("pca-model")

    assert not not_done, f"tasks not done: {not_done}"
    assert all(c.ok for c in comparisons.values()), text
    for model in MODELS:
        groups = {key[0] for key in oracle_values(oracle[model])}
        stored_groups = {r.output for r in stored if r.model == model}
        assert stored_groups == set(OUTPUT_GROUPS) & groups, (model, stored_groups)
        assert sum(comparisons[model].compared.values()) > 0, model
    assert set(statuses) == {(m, 200) for m in MODELS}, statuses
    assert {p.wire for p in run.posts()} == {wire}, Counter(p.wire for p in run.posts())
    assert not unplaced, unplaced
    for model, counts in per_task.items():
        # One POST per window, or one for consecutive windows the executor held at once (windows_per_request):
        # batch_size 1000 holds them all, nothing is retried on the happy path. A window no POST ends in
        # lies inside a later POST that joined it: one that reaches its last bucket and goes beyond (its
        # first rows may be missing: a POST to a model without offset starts at the first row it wants).
        assert set(counts.values()) <= {0, 1}, (model, counts)
        for window in (w for w, n in counts.items() if n == 0):
            buckets = predicted_buckets(window, RESOLUTION)
            assert buckets is not None
            last = pd.Timestamp(buckets.end - RESOLUTION)
            assert any(p.x_index and p.x_index[0] <= last < p.x_index[-1] for p in run.posts(model)), \
                (model, str(window), [(p.x_index[0], p.x_index[-1]) for p in run.posts(model) if p.x_index])
    assert min(lstm_rows) >= LSTM_MIN_ROWS, lstm_rows


def test_json_and_parquet_store_the_same_numbers(latigo_runs: Callable[..., LatigoRun], artefacts: Path) -> None:
    """Two default-schedule runs, one per wire format, store the same rows with bitwise the same values.

    Bitwise, not within TOLERANCE: both formats carry float64 exactly (JSON as the shortest repr that
    reads back to the same double, parquet as the doubles themselves), so the server gets the same
    frames, computes the same answers (one process, one thread per TensorFlow pool) and sends them back
    exactly; any difference at all is a defect of a wire format. One window per request, so that the
    frames are the same: which windows a run joins depends on which ones its executor held at once, and
    the LSTM's float32 arithmetic differs in its last bits between request sizes (see the next test)."""
    json_run, parquet_run = latigo_runs(False, 1), latigo_runs(True, 1)

    def values(run: LatigoRun) -> dict[tuple[str, str, str, pd.Timestamp], float]:
        return {(r.model, r.output, r.tag, pd.Timestamp(r.ts)): float(r.value) for r in run.stored}

    def states(run: LatigoRun) -> dict[tuple[str, datetime], tuple[str, int]]:
        return {(t.model, t.window_start): (t.state, t.rows) for t in run.tasks}

    from_json, from_parquet = values(json_run), values(parquet_run)
    only_json = sorted(set(from_json) - set(from_parquet))
    only_parquet = sorted(set(from_parquet) - set(from_json))
    differing = [(key, from_json[key], value) for key, value in sorted(from_parquet.items())
                 if key in from_json and from_json[key].hex() != value.hex()]
    per_model = Counter(key[0] for key in from_json)
    text = "\n".join([
        "JSON against parquet (two default-schedule CLI runs, one window per request, against the same real "
        "Gordo 6.0.4 server):",
        f"  stored values: json {len(from_json)}, parquet {len(from_parquet)} ({dict(sorted(per_model.items()))})",
        f"  only in json {len(only_json)}, only in parquet {len(only_parquet)}, bitwise different {len(differing)}",
        *[f"    {key}: json {mine!r} parquet {theirs!r}" for key, mine, theirs in differing[:10]],
        *[f"    only json {key}" for key in only_json[:5]], *[f"    only parquet {key}" for key in only_parquet[:5]],
        f"  CLI run time: json {json_run.seconds:.1f}s, parquet {parquet_run.seconds:.1f}s",
    ])
    report(artefacts, "json-vs-parquet", {"json": len(from_json), "parquet": len(from_parquet),
                                          "only_json": len(only_json), "only_parquet": len(only_parquet),
                                          "differing": len(differing)}, text)
    assert from_json and set(per_model) == set(MODELS), text
    assert states(json_run) == states(parquet_run), text
    assert not only_json and not only_parquet and not differing, text



JOINED_TOLERANCE = {"pca-model": 1e-12, "row-filter-model": 1e-12, "lstm-model": 1e-6}
"""Absolute, on values of order 1: a request of other size rounds differently in the last bits (BLAS in
float64 for scikit-learn's models: about 1e-16; the Keras LSTM in float32: about 1e-8)."""


def test_joined_windows_store_what_one_window_per_request_stores(latigo_runs: Callable[..., LatigoRun],
                                                                 artefacts: Path) -> None:
    """The default run (windows_per_request: 8: consecutive windows the executor held at once went in one
    request) against one window per request, same wire format: the same rows and tasks, the same values to
    the rounding of the arithmetic (JOINED_TOLERANCE), and fewer requests."""
    joined, single = latigo_runs(True), latigo_runs(True, 1)

    def values(run: LatigoRun) -> dict[tuple[str, str, str, pd.Timestamp], float]:
        return {(r.model, r.output, r.tag, pd.Timestamp(r.ts)): float(r.value) for r in run.stored}

    mine, theirs = values(joined), values(single)
    gaps = {key: abs(value - theirs[key]) for key, value in mine.items() if key in theirs}
    differing = [(key, mine[key], theirs[key]) for key, gap in sorted(gaps.items()) if gap > JOINED_TOLERANCE[key[0]]]
    largest = {model: max((gap for key, gap in gaps.items() if key[0] == model), default=0.0) for model in MODELS}
    posts = {model: (len(joined.posts(model)), len(single.posts(model))) for model in MODELS}
    text = "\n".join([
        "joined windows (default windows_per_request) against one window per request, parquet, same server:",
        f"  stored values: joined {len(mine)}, one per request {len(theirs)}; differing {len(differing)}; "
        f"largest difference per model {({m: f'{g:.1e}' for m, g in largest.items()})}",
        *[f"    {key}: joined {a!r} single {b!r}" for key, a, b in differing[:10]],
        f"  prediction POSTs (joined, one per request): {posts}",
    ])
    report(artefacts, "joined-vs-single", {"differing": len(differing), "largest_difference": largest,
                                           "posts": posts}, text)
    assert set(mine) == set(theirs), text
    assert not differing, text
    assert {(t.model, t.window_start, t.state, t.rows) for t in joined.tasks} == \
        {(t.model, t.window_start, t.state, t.rows) for t in single.tasks}, text
    assert all(n_single == 15 for _, n_single in posts.values()), text
    assert sum(n for n, _ in posts.values()) < sum(n for _, n in posts.values()), text

SINGLE_BUCKET_WINDOWS = (
    TimeRange(_at("03:05"), _at("03:15")),  # bucket 03:00, gap-free
    TimeRange(_at("03:35"), _at("03:45")),  # bucket 03:30: tag-2 has no point in it
    TimeRange(_at("05:45"), _at("05:55")),  # bucket 05:40: tag-1 has none, the window ends in the gap
)


@pytest.mark.parametrize("use_parquet", WIRE_FORMATS)
def test_lstm_answers_a_window_that_holds_one_bucket(
    use_parquet: bool, gordo_real_server: GordoRealServer, influxd: InfluxServer, sensors: str,
    oracle: dict[str, dict[str, Any]], proxy: CountingProxy, artefacts: Path,
) -> None:
    wire = "parquet" if use_parquet else "json"
    provider = in_process_models(proxy.url, influxd, sensors, use_parquet=use_parquet)
    lines, failures, comparisons = [], [], {}
    try:
        for window in SINGLE_BUCKET_WINDOWS:
            before = len(proxy.posts("lstm-model"))
            frame = provider.execute_model("lstm-model", window.start, window.end)
            posts = proxy.posts("lstm-model")[before:]
            span = predicted_buckets(window, RESOLUTION)
            assert span is not None and span.end - span.start == RESOLUTION, span
            mine = {k: v for k, v in frame_values(frame.rows).items() if k[0] in OUTPUT_GROUPS}
            comparison = compare("lstm-model", mine, oracle["lstm-model"], span)
            comparisons[str(window)] = comparison
            stamps = sorted({k[2] for k in mine})
            lines.append(f"window {window}: bucket {span.start.isoformat()}, latigo timestamps "
                         f"{[s.isoformat() for s in stamps]}, {len(posts)} POST(s) of {[p.rows for p in posts]} rows "
                         f"status {[p.status for p in posts]}")
            lines.extend(figure_lines({f"lstm-model {window}": comparison})[:1])
            if stamps != [pd.Timestamp(span.start)]:
                failures.append(f"{window}: timestamps {stamps}")
            if not comparison.ok:
                failures.append(diagnose(comparison, oracle["lstm-model"], [window], gordo_real_server, influxd,
                                         sensors))
            if [(p.status, p.wire) for p in posts] != [(200, wire)] or min(p.rows for p in posts) < LSTM_MIN_ROWS:
                failures.append(f"{window}: POSTs {[(p.status, p.wire, p.rows) for p in posts]}")
    finally:
        provider.close()
    text = "\n".join([f"lstm-model, windows that hold one bucket (GordoModels.execute_model in-process, {wire}):",
                      *lines, *failures])
    report(artefacts, f"lstm-single-bucket-{wire}", {w: c.figures() for w, c in comparisons.items()}, text)
    assert not failures, text


SMALL_BATCH = 8
LONG_WINDOW = TimeRange(_at("02:25"), _at("10:05"))
"""46 buckets (02:20..09:50): with batch_size 8 the LSTM's requests carry 3 new rows each (8 - offset 5),
so the last one holds a single new row and must reach back to 7 rows."""


@pytest.mark.parametrize("use_parquet", WIRE_FORMATS)
def test_small_batches_overlap_and_equal_gordo_client(
    use_parquet: bool, gordo_real_server: GordoRealServer, influxd: InfluxServer, sensors: str,
    oracle: dict[str, dict[str, Any]], proxy: CountingProxy, artefacts: Path,
) -> None:
    wire = "parquet" if use_parquet else "json"
    provider = in_process_models(proxy.url, influxd, sensors, batch_size=SMALL_BATCH, use_parquet=use_parquet)
    span = predicted_buckets(LONG_WINDOW, RESOLUTION)
    assert span is not None
    comparisons, lines, failures = {}, [], []
    try:
        for model in MODELS:
            before = len(proxy.posts(model))
            frame = provider.execute_model(model, LONG_WINDOW.start, LONG_WINDOW.end)
            posts = proxy.posts(model)[before:]
            mine = {k: v for k, v in frame_values(frame.rows).items() if k[0] in OUTPUT_GROUPS}
            comparisons[model] = comparison = compare(model, mine, oracle[model], span)
            overlaps = [len(set(a.x_index) & set(b.x_index)) for a, b in zip(posts, posts[1:], strict=False)]
            lines.append(f"{model}: {len(posts)} POSTs of {[p.rows for p in posts]} rows, statuses "
                         f"{sorted(Counter(p.status for p in posts).items())}, overlap with the previous batch "
                         f"{overlaps}")
            if not comparison.ok:
                failures.append(diagnose(comparison, oracle[model], [LONG_WINDOW], gordo_real_server, influxd,
                                         sensors))
            if len(posts) < 2 or any((p.status, p.wire) != (200, wire) for p in posts) \
                    or any(p.rows > SMALL_BATCH for p in posts):
                failures.append(f"{model}: POSTs {[(p.status, p.wire, p.rows) for p in posts]} "
                                f"(batch_size {SMALL_BATCH}, {wire})")
            if model == "lstm-model":
                offset = LSTM_LOOKBACK_WINDOW - 1
                if min(p.rows for p in posts) < LSTM_MIN_ROWS:
                    failures.append(f"lstm-model: a request below {LSTM_MIN_ROWS} rows: {[p.rows for p in posts]}")
                if any(overlap < offset for overlap in overlaps):
                    failures.append(f"lstm-model: batches overlap by {overlaps} rows, need {offset}")
    finally:
        provider.close()
    text = "\n".join([f"batch_size {SMALL_BATCH}, window {LONG_WINDOW} (GordoModels.execute_model in-process, "
                      f"{wire}):", *lines, *figure_lines(comparisons), *failures])
    report(artefacts, f"small-batches-{wire}", {m: c.figures() for m, c in comparisons.items()}, text)
    assert not failures, text
