"""The Time Series API (the "Data API"): sensor lookup by name and raw points, bucketed locally.

The API knows series by id; names are resolved (GET `?name=&facility=`) and their ids and metadata
cached for `cache_ttl` (24 hours, as production latigo kept them: ids never change, names rarely do).
Values come from POST `/query/data` with at most 100 ids per
request, and every continuation token is followed to the end: stopping at the first page
loses data without a trace. The raw points are averaged per resolution bucket here,
on the same epoch-aligned grid InfluxDB uses (latigo.sensors.resample), with Bad
(status 0) points left out. Transport concerns (timeouts, retries with Retry-After,
one token refresh on 401, error classes) are latigo.http's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import requests

from latigo.errors import ConfigError, PermanentError
from latigo.http import (
    AzureAdSettings,
    ClientCredentialsToken,
    HttpClient,
    RetryPolicy,
    describe_response,
)
from latigo.interfaces import SensorDataProvider, SensorInformationProvider
from latigo.peers import PEERS
from latigo.secrets import register_secret
from latigo.sensors.resample import BucketGrid, as_timedelta, frame, resolution_ns, unique
from latigo.types import SensorFrame, ensure_utc

log = logging.getLogger(__name__)

MAX_IDS_PER_REQUEST = 100
MAX_PAGE_LIMIT = 100_000
LOOKUP_CONCURRENCY = 8
STATUS_BAD = 0


def rfc3339(moment: datetime, round_up: bool = False) -> str:
    """UTC with milliseconds and a Z, the form the API documents (YYYY-MM-DDThh:mm:ss.mmmZ).

    Sub-millisecond parts are rounded outwards (`round_up` for a range's end): the request may
    then cover a little more, never less, and the points are cut to the exact range here."""
    moment = ensure_utc(moment)
    if round_up and moment.microsecond % 1000:
        moment += timedelta(microseconds=1000 - moment.microsecond % 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class _Points:
    """Raw points of one series as they arrive, page after page."""

    times: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)

    def extend(self, datapoints: Sequence[Mapping[str, Any]]) -> None:
        for point in datapoints:
            self.times.append(point["time"])
            self.values.append(point.get("value"))
            self.statuses.append(point.get("status", 192))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ns since the epoch, values) with Bad points and missing values as NaN."""
        if not self.times:
            return np.empty(0, dtype=np.int64), np.empty(0)
        stamps = pd.to_datetime(self.times, utc=True, format="ISO8601").as_unit("ns").asi8
        values = np.array([np.nan if v is None else v for v in self.values], dtype=float)
        bad = np.array([s == STATUS_BAD for s in self.statuses], dtype=bool)
        values[bad] = np.nan
        return stamps, values


class DataApiSensors(SensorInformationProvider, SensorDataProvider):
    """Sensors from the Time Series API, averaged to the model's resolution."""

    @dataclass
    class Settings(AzureAdSettings):
        """The Time Series API's address and the Azure AD client credentials for it (AzureAdSettings)."""

        base_url: str
        """E.g. https://<gateway>/plant/timeseries/v1.6"""
        facility: str = ""
        """Restricts name lookups (names are unique per facility, not globally)."""
        subscription_key: str = ""
        """Sent as Ocp-Apim-Subscription-Key when the gateway asks for one."""
        timeout: timedelta = timedelta(seconds=30)
        max_retries: int = field(default=3, metadata={"min": 0})
        retry_base_delay: timedelta = timedelta(seconds=0.5)
        page_limit: int = field(default=MAX_PAGE_LIMIT, metadata={"min": 1})
        """Points per page asked for (the API allows at most 100,000)."""
        cache_ttl: timedelta = timedelta(hours=24)
        """How long a series' id and metadata (unit, facility) found by name are kept before being asked again."""

    def __init__(self, settings: DataApiSensors.Settings, sleep: Callable[[float], None] = time.sleep) -> None:
        _validate(settings)
        self.settings = settings
        self.base = settings.base_url.rstrip("/")
        self.token = _token(settings)
        headers = {"Accept": "application/json"}
        if settings.subscription_key:
            register_secret(settings.subscription_key)
            headers["Ocp-Apim-Subscription-Key"] = settings.subscription_key
        self.http = HttpClient(
            "data_api",
            timeout=settings.timeout.total_seconds(),
            retry=RetryPolicy(max_retries=settings.max_retries, base_delay=settings.retry_base_delay.total_seconds()),
            token=self.token.get if self.token else None,
            headers=headers,
            sleep=sleep,
            peer=PEERS.breaker(f"data api {urlsplit(self.base).netloc}"),
        )
        self._ids: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        """(facility asked, name) -> (the series' metadata, when it was found): ids never change, but a series
        can be renamed, so entries expire after `cache_ttl`."""
        self._lock = threading.Lock()
        self._clock = time.monotonic

    @classmethod
    def from_settings(cls, settings: DataApiSensors.Settings, components: Any) -> DataApiSensors:
        return cls(settings)

    def close(self) -> None:
        self.http.close()

    # -- names and ids

    def _json(self, response: requests.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise PermanentError(f"data_api: {what}: the answer is not JSON: {describe_response(response)}") from None

    def _items(self, body: Any, what: str) -> list[dict[str, Any]]:
        try:
            items = body["data"]["items"]
        except (KeyError, TypeError):
            raise PermanentError(f"data_api: {what}: the answer has no data.items") from None
        return [item for item in items or [] if isinstance(item, dict)]

    def series_id(self, name: str, facility: str | None = None) -> str | None:
        """The id of the series called `name` (in `facility`, else the configured one); None when there is none."""
        metadata = self.series_metadata(name, facility)
        return None if metadata is None else str(metadata["id"])

    def series_metadata(self, name: str, facility: str | None = None) -> dict[str, Any] | None:
        """The API's metadata (id, unit, facility, ...) of the series called `name` in `facility` (None: the
        configured facility; empty: any, and then it must be the only one of that name); None when none."""
        facility = self.settings.facility if facility is None else facility
        key = (facility, name)
        with self._lock:
            cached = self._ids.get(key)
            if cached is not None and self._clock() - cached[1] < self.settings.cache_ttl.total_seconds():
                return cached[0]
        if not name:
            return None
        params = {"name": name}
        if facility:
            params["facility"] = facility
        what = f"looking up series {name!r}"
        response = self.http.request("GET", self.base, params=params)
        items = self._items(self._json(response, what), what)
        matches = [item for item in items if item.get("name") == name and item.get("id")
                   and (not facility or item.get("facility") == facility)]
        distinct = {str(item["id"]): item for item in matches}
        if not distinct:
            return None
        if len(distinct) > 1:
            facilities = ", ".join(sorted({str(item.get("facility")) for item in matches}))
            raise PermanentError(f"data_api: {len(distinct)} series are named {name!r} (facilities: {facilities}); "
                                 f"set the facility setting to choose one")
        found = next(iter(distinct.values()))
        with self._lock:
            self._ids[key] = (found, self._clock())
        return found

    def _resolve(self, names: Sequence[str]) -> dict[str, str | None]:
        """Ids of `names`; the ones not cached are looked up concurrently (one request each)."""
        with self._lock:
            unknown = [name for name in names if name and (self.settings.facility, name) not in self._ids]
        if len(unknown) > 1:
            with ThreadPoolExecutor(min(LOOKUP_CONCURRENCY, len(unknown)), "data-api-lookup") as pool:
                list(pool.map(self.series_id, unknown))
        return {name: self.series_id(name) for name in names}

    def forget(self, ids: Sequence[str]) -> None:
        with self._lock:
            for key in [k for k, (metadata, _) in self._ids.items() if str(metadata["id"]) in ids]:
                del self._ids[key]

    # -- SensorInformationProvider

    def get_sensor_list(self) -> list[str]:
        """Every series name (in the configured facility), following continuation tokens."""
        params: dict[str, Any] = {"limit": min(self.settings.page_limit, MAX_PAGE_LIMIT)}
        if self.settings.facility:
            params["facility"] = self.settings.facility
        names: dict[str, None] = {}
        seen_tokens: set[str] = set()
        while True:
            body = self._json(self.http.request("GET", self.base, params=params), "listing series")
            for item in self._items(body, "listing series"):
                if item.get("name"):
                    names[str(item["name"])] = None
            token = body.get("continuationToken")
            if not token:
                return list(names)
            _check_progress(token, seen_tokens, "listing series")
            params["continuationToken"] = token

    def sensor_exists(self, name: str) -> bool:
        return self.series_id(name) is not None

    # -- SensorDataProvider

    def get_native_range_specifier(self, start: datetime, end: datetime, parameters: Mapping[str, Any]) -> str:
        """A readable description of the requests get_data_for_range makes (no network involved)."""
        names = unique(list(parameters["sensors"]))
        with self._lock:
            cached = {name: str(entry[0]["id"]) for (facility, name), entry in self._ids.items()
                      if facility == self.settings.facility}
        ids = [cached.get(name, f"<id of {name!r}>") for name in names]
        facility = f"&facility={self.settings.facility}" if self.settings.facility else ""
        lookup = f"GET {self.base}?name=<name>{facility}"
        batches = max(1, -(-len(ids) // MAX_IDS_PER_REQUEST))
        bucket = pd.Timedelta(resolution_ns(as_timedelta(parameters["resolution"])), "ns")
        return (
            f"{lookup} for each sensor whose id is not cached; then {batches} x POST {self.base}/query/data "
            f"with at most {MAX_IDS_PER_REQUEST} items {{id, startTime: {rfc3339(start)}, "
            f"endTime: {rfc3339(end, round_up=True)}, "
            f"limit: {min(self.settings.page_limit, MAX_PAGE_LIMIT)}, includeOutsidePoints: false}} "
            f"for ids [{', '.join(ids)}], continuation tokens followed to the end; "
            f"status 0 (Bad) points dropped; mean per {bucket} bucket aligned to the epoch "
            f"over [{ensure_utc(start).isoformat()}, {ensure_utc(end).isoformat()})"
        )

    def get_data_for_range(
        self, start: datetime, end: datetime, sensors: Sequence[str], resolution: timedelta,
        aggregation: str = "mean",
    ) -> SensorFrame:
        grid = BucketGrid(start, end, resolution)
        names = unique(sensors)
        ids = self._resolve(names)
        known = {name: series for name, series in ids.items() if series is not None}
        points = self._fetch(list(dict.fromkeys(known.values())), start, end)
        columns = {name: grid.aggregate(*points[series].arrays(), method=aggregation)
                   for name, series in known.items()}
        missing = tuple(name for name in names if ids[name] is None)
        return SensorFrame(frame(grid, columns, names), missing=missing)

    def _fetch(self, ids: list[str], start: datetime, end: datetime) -> dict[str, _Points]:
        points = {series: _Points() for series in ids}
        for offset in range(0, len(ids), MAX_IDS_PER_REQUEST):
            self._fetch_batch(ids[offset : offset + MAX_IDS_PER_REQUEST], start, end, points)
        return points

    def _fetch_batch(self, ids: list[str], start: datetime, end: datetime, points: dict[str, _Points]) -> None:
        """All pages of up to 100 series: per-item continuation tokens (and a whole-answer one, if the
        API version sends that instead) are followed until none is left."""
        base_item = {"startTime": rfc3339(start), "endTime": rfc3339(end, round_up=True),
                     "limit": min(self.settings.page_limit, MAX_PAGE_LIMIT), "includeOutsidePoints": False}
        pending: dict[str, str | None] = dict.fromkeys(ids)
        params: dict[str, str] = {}
        seen_tokens: set[str] = set()
        while pending:
            body = self._query_data(pending, base_item, params)
            following: dict[str, str | None] = {}
            for item in self._items(body, "reading data"):
                series = str(item.get("id"))
                if series not in pending:
                    continue
                points[series].extend(item.get("datapoints") or [])
                token = item.get("continuationToken")
                if token:
                    _check_progress(token, seen_tokens, f"reading series {series}")
                    following[series] = token
            top = body.get("continuationToken")
            if top:  # one token for the whole answer: ask again for the same items
                _check_progress(top, seen_tokens, "reading data")
                params = {"continuationToken": top}
            else:
                params, pending = {}, following

    def _query_data(self, pending: Mapping[str, str | None], base_item: Mapping[str, Any],
                    params: Mapping[str, str]) -> Any:
        request = [{"id": series, **base_item, **({"continuationToken": token} if token else {})}
                   for series, token in pending.items()]
        response = self.http.request("POST", f"{self.base}/query/data", json=request, params=dict(params),
                                     accept=(404,))
        if response.status_code == 404:
            self.forget(list(pending))
            raise PermanentError(f"data_api: POST /query/data: unknown series ({describe_response(response)}); "
                                 f"ids asked: {', '.join(pending)}")
        return self._json(response, "reading data")


def _check_progress(token: str, seen: set[str], what: str) -> None:
    """A continuation token seen twice means the server is going round in circles."""
    if token in seen:
        raise PermanentError(f"data_api: {what}: continuation token repeated; the answer would never end")
    seen.add(token)


def _validate(settings: DataApiSensors.Settings) -> None:
    if not settings.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"data_api base_url {settings.base_url!r} is not an http(s) URL")
    if settings.page_limit > MAX_PAGE_LIMIT:
        raise ConfigError(f"data_api page_limit {settings.page_limit} is above the API's maximum {MAX_PAGE_LIMIT}")


def _token(settings: DataApiSensors.Settings) -> ClientCredentialsToken | None:
    return settings.token("data_api", settings.timeout.total_seconds())
