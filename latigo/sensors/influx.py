"""InfluxDB 1.x: sensor listing and values (InfluxQL); the prediction sink is in influx_sink.py.

Values come from one query per call for all of a model's sensors, averaged by the
server per resolution bucket (`GROUP BY time(r), "tag"`), because a round trip per
sensor costs far more than the query itself once the server is not on loopback.

Sensor names are data. In a query they only ever appear inside InfluxQL string
literals (`"tag" = '...'`, with `\\`, `'` and newlines escaped), never as code, so
no name can widen or break the query. Empty names are never queried: in InfluxQL
`"tag" = ''` matches series *without* the tag.

The same query carries a `SHOW TAG VALUES` statement for the requested names, so one
request also tells which sensors exist (a sensor that exists but has no points in
the range gets a NaN column; one that does not exist is reported as missing).
"""

from __future__ import annotations

import json
import logging
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import numpy as np
import requests
from influxdb import InfluxDBClient
from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError

from latigo.errors import PermanentError, TransientError
from latigo.http import CONNECTION_FAILURES, connection_failure
from latigo.interfaces import SensorDataProvider, SensorInformationProvider, check_aggregation
from latigo.peers import PEERS, CircuitBreaker
from latigo.sensors.resample import BucketGrid, as_timedelta, frame, resolution_ns, unique
from latigo.types import SensorFrame, ensure_utc

log = logging.getLogger(__name__)

GET_QUERY_LIMIT = 2000
INFLUXQL_AGGREGATIONS = {"mean": "mean", "max": "max", "min": "min", "sum": "sum", "count": "count",
                         "median": "median", "std": "stddev", "first": "first", "last": "last"}
"""pandas' aggregation names (Gordo's spelling) as InfluxQL functions; stddev is the sample deviation,
like pandas' std."""
"""Queries longer than this (characters) go in a POST body: proxies cap URL length near 8 KB."""
_NOT_IN_STRINGS = re.compile("[\r\x00]")
"""Characters an InfluxQL string literal cannot hold (the lexer reads CR as a newline, NUL as the end)."""
_TRANSIENT_STATEMENT_ERRORS = ("timeout", "max concurrent queries", "interrupted", "shutting down",
                               "query engine shutdown")
"""Statement errors of a server that is busy or stopping: worth another try, unlike a bad query."""


# ---------------------------------------------------------------- settings and connection


@dataclass
class InfluxConnectionSettings:
    database: str
    host: str = "localhost"
    port: int = field(default=8086, metadata={"min": 1})
    username: str = ""
    password: str = ""
    ssl: bool = False
    verify_ssl: bool = True
    path: str = ""
    """URL path prefix when the server sits behind a reverse proxy."""
    retention_policy: str = ""
    """Empty: the database's default retention policy."""
    timeout: timedelta = timedelta(seconds=30)
    retries: int = field(default=2, metadata={"min": 1})
    """Attempts per request on connection failures (1 = no retry; the executor retries tasks anyway)."""
    pool_size: int = field(default=16, metadata={"min": 1})


def connect(settings: InfluxConnectionSettings) -> InfluxDBClient:
    return InfluxDBClient(
        host=settings.host,
        port=settings.port,
        username=settings.username or None,
        password=settings.password or None,
        database=settings.database,
        ssl=settings.ssl,
        verify_ssl=settings.verify_ssl,
        timeout=settings.timeout.total_seconds(),
        retries=settings.retries,
        pool_size=settings.pool_size,
        path=settings.path,
    )


def _where(settings: InfluxConnectionSettings) -> str:
    return f"influx {settings.host}:{settings.port} database {settings.database!r}"


def classify_error(exc: Exception, action: str, settings: InfluxConnectionSettings) -> Exception:
    """The latigo error for a failure of the client or the server."""
    where = _where(settings)
    if isinstance(exc, CONNECTION_FAILURES):
        return TransientError(f"{where}: {action} failed: {connection_failure(exc)}")
    if isinstance(exc, InfluxDBServerError):
        detail = _message(exc.args[0] if exc.args else "")
        return TransientError(f"{where}: {action} failed with a server error: {detail}")
    if isinstance(exc, InfluxDBClientError):
        code = getattr(exc, "code", None)
        if code in (408, 429):
            return TransientError(f"{where}: {action} answered {code}: {_message(exc.content)}")
        if code in (401, 403):
            return PermanentError(f"{where}: {action} refused ({code}): check username and password")
        return PermanentError(f"{where}: {action} answered {code}: {_message(exc.content)}")
    if isinstance(exc, requests.RequestException):
        return TransientError(f"{where}: {action} failed: {type(exc).__name__}")
    if isinstance(exc, ValueError):  # a cut-off answer is not valid JSON
        return TransientError(f"{where}: {action}: unreadable answer: {exc}")
    return exc


def influx_peer(settings: InfluxConnectionSettings) -> CircuitBreaker:
    """The circuit breaker of the InfluxDB server (shared by the sensor provider and the sink)."""
    return PEERS.breaker(f"influx {settings.host}:{settings.port}")


def request(client: InfluxDBClient, settings: InfluxConnectionSettings, action: str, *args: Any,
            **kwargs: Any) -> Any:
    """`client.request(...)` reported to the server's circuit breaker: a connection failure or timeout
    counts against it (PeerDown once it is open), any answer clears it; failures come back classified."""
    peer = influx_peer(settings)
    probe = peer.before_call()
    try:
        response = client.request(*args, **kwargs)
    except CONNECTION_FAILURES as exc:
        if peer.failed(f"{action}: {connection_failure(exc)}", probe, last=True):
            raise peer.down_error() from None
        raise classify_error(exc, action, settings) from None
    except Exception as exc:  # noqa: BLE001 - the server answered: translated, or re-raised as is
        peer.succeeded()
        raise classify_error(exc, action, settings) from None
    peer.succeeded()
    return response


def _message(content: Any) -> str:
    """The server's `{"error": ...}` text, else the body, on one line."""
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    text = str(content)
    try:
        body = json.loads(text)
        if isinstance(body, dict) and "error" in body:
            text = str(body["error"])
    except ValueError:
        pass
    text = " ".join(text.split())
    return text[:300] + ("…" if len(text) > 300 else "")


# ---------------------------------------------------------------- InfluxQL text


def quote_ident(name: str) -> str:
    """A double-quoted InfluxQL identifier (measurement, tag key, field): every name is quoted,
    because some (like `tag`) are keywords."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_string(value: str) -> str:
    """A single-quoted InfluxQL string literal. The lexer knows the escapes \\\\ \\' \\" \\n and
    rejects a raw newline, so those four are all that need care."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def regex_literal(value: str) -> str:
    """`value` as a Go regexp matching exactly it, safe inside an InfluxQL /regex/ literal: ASCII
    punctuation is backslash-escaped (the lexer turns `\\/` into `/`, which the regexp reads as
    a plain slash) and control characters become `\\x{..}`, so the literal holds no raw slash,
    newline or carriage return."""
    out = []
    for char in value:
        if char in string.punctuation:
            out.append("\\" + char)
        elif unicodedata.category(char).startswith("C"):
            out.append(f"\\x{{{ord(char):x}}}")
        else:
            out.append(char)
    return "".join(out)


def duration_literal(resolution: timedelta) -> str:
    nanos = resolution_ns(resolution)
    if nanos % 1_000_000_000 == 0:
        return f"{nanos // 1_000_000_000}s"
    if nanos % 1000 == 0:
        return f"{nanos // 1000}u"
    return f"{nanos}ns"


def time_literal(moment: datetime) -> str:
    moment = ensure_utc(moment)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return f"'{text}Z'"


@dataclass
class _Statement:
    """One statement's answer, the chunks of a chunked response merged back together."""

    series: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------- sensors


class InfluxSensors(SensorInformationProvider, SensorDataProvider):
    """Sensor listing and bucket means from one InfluxDB measurement (tag key = sensor, one value field)."""

    @dataclass
    class Settings(InfluxConnectionSettings):
        measurement: str = "sensors"
        tag_key: str = "tag"
        value_field: str = "Value"
        chunk_size: int = field(default=10000, metadata={"min": 1})
        """Rows per chunk of a response: chunked answers are not cut off by the server's max-row-limit."""

    def __init__(self, settings: InfluxSensors.Settings, client: InfluxDBClient | None = None) -> None:
        self.settings = settings
        self.client = client or connect(settings)

    @classmethod
    def from_settings(cls, settings: InfluxSensors.Settings, components: Any) -> InfluxSensors:
        return cls(settings)

    def close(self) -> None:
        self.client.close()

    # -- query text

    @property
    def _source(self) -> str:
        rp = self.settings.retention_policy
        prefix = f"{quote_ident(rp)}." if rp else ""
        return prefix + quote_ident(self.settings.measurement)

    def _match(self, sensors: Sequence[str]) -> str:
        """`"tag" = '...' OR ...` (exact index lookups); names a string literal cannot carry go in one
        anchored, fully escaped regex instead."""
        tag = quote_ident(self.settings.tag_key)
        parts = [f"{tag} = {quote_string(name)}" for name in sensors if not _NOT_IN_STRINGS.search(name)]
        special = [regex_literal(name) for name in sensors if _NOT_IN_STRINGS.search(name)]
        if special:
            parts.append(f"{tag} =~ /^(?:{'|'.join(special)})$/")
        return " OR ".join(parts)

    def _show_tag_values(self, condition: str = "") -> str:
        query = f"SHOW TAG VALUES FROM {self._source} WITH KEY = {quote_ident(self.settings.tag_key)}"
        return f"{query} WHERE {condition}" if condition else query

    def _range_query(self, start: datetime, end: datetime, sensors: Sequence[str], resolution: timedelta,
                     aggregation: str = "mean") -> str:
        names = [name for name in unique(sensors) if name]
        if not names:
            return ""
        match = self._match(names)
        function = INFLUXQL_AGGREGATIONS[check_aggregation(aggregation)]
        select = (
            f"SELECT {function}({quote_ident(self.settings.value_field)}) AS \"value\" FROM {self._source} "
            f"WHERE ({match}) AND time >= {time_literal(start)} AND time < {time_literal(end)} "
            f"GROUP BY time({duration_literal(resolution)}), {quote_ident(self.settings.tag_key)} fill(null)"
        )
        return f"{select}; {self._show_tag_values(match)}"

    def get_native_range_specifier(self, start: datetime, end: datetime, parameters: Mapping[str, Any]) -> str:
        """The exact InfluxQL get_data_for_range sends: the bucketed SELECT and the existence check."""
        return self._range_query(start, end, list(parameters["sensors"]), as_timedelta(parameters["resolution"]),
                                 str(parameters.get("aggregation", "mean")))

    # -- running queries

    def _execute(self, query: str, action: str) -> list[_Statement]:
        params = {"db": self.settings.database, "epoch": "ns", "chunked": "true",
                  "chunk_size": str(self.settings.chunk_size)}
        headers = {"Accept": "application/json"}
        data = None
        method = "GET"
        if len(query) > GET_QUERY_LIMIT:
            method, data = "POST", urlencode({"q": query})
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            params["q"] = query
        if self.settings.retention_policy:
            params["rp"] = self.settings.retention_policy
        response = request(self.client, self.settings, action, "query", method=method, params=params, data=data,
                           expected_response_code=200, headers=headers)
        try:
            statements = _read_chunks(response.content.split(b"\n"))
        except Exception as exc:  # noqa: BLE001 - translated, or re-raised as is
            raise classify_error(exc, action, self.settings) from None
        for statement in statements:
            if statement.error:
                transient = any(text in statement.error for text in _TRANSIENT_STATEMENT_ERRORS)
                kind = TransientError if transient else PermanentError
                raise kind(f"{_where(self.settings)}: {action} failed: {statement.error}")
        return statements

    def _tag_values(self, statement: _Statement) -> list[str]:
        return [row[1] for series in statement.series for row in series.get("values") or []]

    # -- SensorInformationProvider

    def get_sensor_list(self) -> list[str]:
        (statement,) = self._execute(self._show_tag_values(), "listing sensors")
        return self._tag_values(statement)

    def sensor_exists(self, name: str) -> bool:
        if not name:
            return False
        (statement,) = self._execute(self._show_tag_values(self._match([name])), f"looking up sensor {name!r}")
        return name in self._tag_values(statement)

    # -- SensorDataProvider

    def get_data_for_range(
        self, start: datetime, end: datetime, sensors: Sequence[str], resolution: timedelta,
        aggregation: str = "mean",
    ) -> SensorFrame:
        grid = BucketGrid(start, end, resolution)
        names = unique(sensors)
        query = self._range_query(start, end, names, resolution, aggregation)
        if not query:
            return SensorFrame(frame(grid, {}, names), missing=tuple(names))
        statements = self._execute(query, f"reading {len(names)} sensors over [{start.isoformat()}, {end.isoformat()})")
        selected, shown = (statements + [_Statement(), _Statement()])[:2]
        columns = self._columns(grid, selected)
        existing = set(self._tag_values(shown)) | set(columns)
        for name in names:
            if name in existing and name not in columns:
                columns[name] = np.full(grid.size, np.nan)  # known sensor, no points in the range
        missing = tuple(name for name in names if name not in existing)
        return SensorFrame(frame(grid, columns, names), missing=missing)

    def _columns(self, grid: BucketGrid, statement: _Statement) -> dict[str, np.ndarray]:
        """Bucket means per sensor from the SELECT's series (one per tag value, maybe split across chunks)."""
        times: dict[str, list[int]] = {}
        values: dict[str, list[Any]] = {}
        for series in statement.series:
            name = (series.get("tags") or {}).get(self.settings.tag_key)
            if name is None:
                continue
            rows = series.get("values") or []
            times.setdefault(name, []).extend(row[0] for row in rows)
            values.setdefault(name, []).extend(row[1] for row in rows)
        return {
            name: grid.place(np.asarray(times[name], dtype=np.int64), np.asarray(values[name], dtype=float))
            for name in times
        }


def _read_chunks(lines: Iterable[bytes]) -> list[_Statement]:
    """Merge a chunked /query answer (one JSON object per line) into one result per statement."""
    statements: dict[int, _Statement] = {}
    for line in lines:
        if not line:
            continue
        body = json.loads(line)
        if body.get("error"):
            raise PermanentError(f"query failed: {body['error']}")
        for result in body.get("results") or []:
            statement = statements.setdefault(int(result.get("statement_id", 0)), _Statement())
            if result.get("error") and not statement.error:
                # The first error is the cause; later statements only say "not executed".
                statement.error = str(result["error"])
            statement.series.extend(result.get("series") or [])
    return [statements[key] for key in sorted(statements)]
