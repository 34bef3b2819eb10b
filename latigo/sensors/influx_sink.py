"""Predictions written back to InfluxDB 1.x as line protocol, so Grafana can chart them beside the
sensors; names InfluxDB cannot store exactly are refused rather than stored as other names."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
from influxdb import InfluxDBClient

from latigo.interfaces import PredictionSink
from latigo.sensors.influx import InfluxConnectionSettings, connect, quote_ident, request
from latigo.types import PredictionFrame, ensure_utc

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- line protocol


def escape_measurement(name: str) -> str | None:
    """`name` as a line-protocol measurement, or None when InfluxDB 1.x cannot store it exactly."""
    if not name or name.startswith("#") or "\\" in name or "\n" in name:
        # Empty is invalid, a leading '#' makes the line a comment, and InfluxDB 1.x unescapes
        # measurement names by other rules than tags (it drops some backslashes).
        return None
    return name.replace(",", "\\,").replace(" ", "\\ ")


def escape_tag(value: str) -> str | None:
    """`value` as a line-protocol tag value, or None when InfluxDB 1.x cannot store it exactly."""
    return _escape(value, ",= ")


def _escape(text: str, specials: str) -> str | None:
    """Backslash before each special character; None for what InfluxDB 1.x cannot round-trip.

    InfluxDB 1.x reads a special character as escaped when the byte before it is a backslash
    and unescapes only those pairs, keeping every other backslash. But its line splitter pairs
    each backslash with the byte after it, and a newline ends the line unless so paired. Both
    readings agree only when no backslash run ends the text, an even run precedes each special
    character and an odd run precedes each newline; anything else is refused rather than
    written as a different name (or as a line that swallows the next one)."""
    if text.endswith("\\"):
        return None
    out: list[str] = []
    run = 0
    for char in text:
        if char == "\\":
            run += 1
            out.append(char)
            continue
        if char in specials:
            if run % 2:
                return None
            out.append("\\" + char)
        elif char == "\n":
            if run % 2 == 0:
                return None
            out.append(char)
        else:
            out.append(char)
        run = 0
    return "".join(out)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def _timestamp_ns(ts: datetime) -> int:
    if isinstance(ts, pd.Timestamp):  # may carry nanoseconds
        return int(pd.Timestamp(ensure_utc(ts)).value)
    return ((ensure_utc(ts) - _EPOCH) // _MICROSECOND) * 1000


class InfluxPredictionSink(PredictionSink):
    """Predictions written back to InfluxDB for Grafana: measurement `<prefix><output>`, tags `model`
    and `tag`, field `value`, timestamp = prediction time.

    A point is identified by (measurement, tags, time), so a redelivered task overwrites its
    points instead of duplicating them. Rows whose names InfluxDB 1.x cannot store exactly are
    skipped with a warning: writing a different name would be a silent lie, and the database
    keeps the authoritative copy."""

    @dataclass
    class Settings(InfluxConnectionSettings):
        measurement_prefix: str = ""
        batch_size: int = field(default=5000, metadata={"min": 1})
        """Points per write request."""
        create_database: bool = False
        """Issue CREATE DATABASE (idempotent) on first write; needs admin rights."""

    def __init__(self, settings: InfluxPredictionSink.Settings, client: InfluxDBClient | None = None) -> None:
        self.settings = settings
        self.client = client or connect(settings)
        self._measurements: dict[str, str | None] = {}
        self._created = not settings.create_database

    @classmethod
    def from_settings(cls, settings: InfluxPredictionSink.Settings, components: Any) -> InfluxPredictionSink:
        return cls(settings)

    def close(self) -> None:
        self.client.close()

    def lines(self, frame: PredictionFrame) -> tuple[list[str], int]:
        """The line-protocol lines for `frame` and how many rows could not be written."""
        model, project = escape_tag(frame.model), escape_tag(frame.project)
        if model is None or project is None:
            return [], len(frame.rows)
        lines: list[str] = []
        skipped = 0
        tags: dict[str, str | None] = {}
        for row in frame.rows:
            measurement = self._measurement(row.output)
            tag = tags[row.tag] if row.tag in tags else tags.setdefault(row.tag, escape_tag(row.tag) if row.tag else "")
            value = float(row.value)
            if measurement is None or tag is None or not math.isfinite(value):
                skipped += 1
                continue
            tag_part = f",tag={tag}" if tag else ""  # InfluxDB drops empty tag values anyway
            lines.append(f"{measurement},model={model},project={project}{tag_part} value={value!r} "
                         f"{_timestamp_ns(row.ts)}")
        return lines, skipped

    def _measurement(self, output: str) -> str | None:
        if output not in self._measurements:
            self._measurements[output] = escape_measurement(self.settings.measurement_prefix + output)
        return self._measurements[output]

    def write(self, frame: PredictionFrame) -> int:
        lines, skipped = self.lines(frame)
        if skipped:
            log.warning("influx sink: %d of %d rows of model %r have names InfluxDB cannot store exactly or "
                        "non-finite values; skipped", skipped, len(frame.rows), frame.model)
        if lines and not self._created:
            self._create_database()
        size = self.settings.batch_size
        for offset in range(0, len(lines), size):
            self._post("\n".join(lines[offset : offset + size]) + "\n")
        return len(lines)

    def _create_database(self) -> None:
        query = f"CREATE DATABASE {quote_ident(self.settings.database)}"
        request(self.client, self.settings, "creating the database", "query", method="POST", params={"q": query},
                expected_response_code=200)
        self._created = True

    def _post(self, body: str) -> None:
        params = {"db": self.settings.database, "precision": "n"}
        if self.settings.retention_policy:
            params["rp"] = self.settings.retention_policy
        request(self.client, self.settings, "writing predictions", "write", method="POST", params=params,
                data=body.encode("utf-8"), expected_response_code=204,
                headers={"Content-Type": "text/plain; charset=utf-8"})
