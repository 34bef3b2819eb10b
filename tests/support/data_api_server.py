"""A local Time Series API (the "Data API") speaking the real wire format, for tests and benchmarks.

Endpoints (under `base_path`): GET `?name=&facility=&limit=&continuationToken=` (find/list series),
POST `` (create `{name, description, step, unit, facility, externalId}`: 201 with the new series,
409 when the facility already has a series of that name), GET `/{id}`, GET `/{id}/data`,
POST `/query/data` (at most 100 ids, per-item continuation tokens), POST `/data` (bulk write
`{items: [{id, datapoints: [{time, value, status}]}]}`, at most 100 items; a point at a time the
series already has replaces it), and an Azure AD style token endpoint `/{tenant}/oauth2/v2.0/token`.
Pages are cut at `page_size` points whatever `limit` asks, so several pages per series are the
rule. `endTime` is inclusive here, as the safest assumption a client can be tested against.
`name_match="contains"` makes a name search also answer series whose names merely contain the
name asked for, so that a client is tested to pick the exact match itself. Every request is
recorded; faults (a status, with headers, for the next N matching requests) can be injected;
`revoke_tokens()` expires every issued token; `by_name()` and `stored()` read back what was written.
"""

from __future__ import annotations

import bisect
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.loopback import LoopbackServer

BASE_PATH = "/plant/timeseries/v1.6"
MAX_IDS_PER_QUERY = 100
MAX_ITEMS_PER_WRITE = 100


def rfc3339(moment: datetime) -> str:
    """The API's time format: UTC, milliseconds, a Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


@dataclass
class Series:
    name: str
    facility: str = "TEST"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    points: list[dict[str, Any]] = field(default_factory=list)
    """Datapoints {time, value, status} sorted by time (time as RFC 3339 text)."""
    description: str | None = None
    """None: "<name> (test)"."""
    step: bool = False
    unit: str = ""
    external_id: str = ""

    _times: list[datetime] | None = field(default=None, repr=False, compare=False)

    def times(self) -> list[datetime]:
        if self._times is None or len(self._times) != len(self.points):
            self._times = [_parse_time(p["time"]) for p in self.points]
        return self._times

    def metadata(self) -> dict[str, Any]:
        description = f"{self.name} (test)" if self.description is None else self.description
        return {"id": self.id, "name": self.name, "description": description, "step": self.step,
                "unit": self.unit, "assetId": "", "facility": self.facility, "externalId": self.external_id,
                "changedTime": "2020-01-01T00:00:00.000Z", "createdTime": "2020-01-01T00:00:00.000Z"}

    def merge(self, datapoints: Iterable[dict[str, Any]]) -> None:
        """Write points: one per instant, a new point at an instant already held replaces it."""
        merged = {_parse_time(p["time"]): p for p in self.points}
        merged.update({_parse_time(p["time"]): dict(p) for p in datapoints})
        self.points = [merged[moment] for moment in sorted(merged)]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    method: str
    path_suffix: str
    status: int | None
    remaining: int
    headers: dict[str, str]
    delay: float = 0.0
    """Seconds to wait before answering (normally, when `status` is None)."""


class DataApiServer(LoopbackServer):
    """Start with `start()`, stop with `stop()`; `url` is the API base URL, `authority` the token host."""

    def __init__(
        self,
        series: Iterable[Series] = (),
        page_size: int = 1000,
        tenant: str = "test-tenant",
        client_id: str | None = None,
        client_secret: str | None = None,
        subscription_key: str | None = None,
        token_lifetime: int = 3599,
        paging: str = "item",
        name_match: str = "exact",
    ) -> None:
        self.series = {s.id: s for s in series}
        self.page_size = page_size
        self.tenant, self.client_id, self.client_secret = tenant, client_id, client_secret
        self.subscription_key = subscription_key
        self.token_lifetime = token_lifetime
        self.paging = paging  # "item": per-item continuation tokens; "top": one token for the whole answer
        self.name_match = name_match  # "exact", or "contains": a name search also finds longer names
        self.created: list[str] = []
        """Names of the series created through POST {base}, in order (a 409 adds nothing)."""
        self.tokens: set[str] = set()
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._cursors: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.origin + BASE_PATH

    @property
    def authority(self) -> str:
        return self.origin

    @property
    def auth_enabled(self) -> bool:
        return self.client_id is not None

    # -- test controls

    def add(self, series: Series) -> Series:
        with self._lock:
            self.series[series.id] = series
        return series

    def inject(self, method: str, path_suffix: str, status: int, times: int = 1,
               headers: dict[str, str] | None = None) -> None:
        """The next `times` requests whose path ends with `path_suffix` answer `status`."""
        with self._lock:
            self.faults.append(Fault(method, path_suffix, status, times, headers or {}))

    def delay(self, method: str, path_suffix: str, seconds: float, times: int = 1) -> None:
        """The next `times` matching requests are answered only after `seconds`."""
        with self._lock:
            self.faults.append(Fault(method, path_suffix, None, times, {}, seconds))

    def by_name(self, name: str, facility: str | None = None) -> Series | None:
        """The series called `name` (in `facility` when given); None when there is none."""
        with self._lock:
            found = [s for s in self.series.values() if s.name == name and (facility is None or s.facility == facility)]
        assert len(found) <= 1, f"{len(found)} series are named {name!r}"
        return found[0] if found else None

    def stored(self, name: str, facility: str | None = None) -> list[dict[str, Any]]:
        """The datapoints {time, value, status} the series called `name` holds, in time order ([] when
        there is no such series)."""
        series = self.by_name(name, facility)
        if series is None:
            return []
        with self._lock:
            return [dict(p) for p in series.points]

    def revoke_tokens(self) -> None:
        """Every issued token becomes invalid (as when it expires early or is revoked)."""
        with self._lock:
            self.tokens.clear()

    def calls(self, method: str | None = None, path_suffix: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and r.path.endswith(path_suffix)]

    def clear_calls(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- behaviour (called by the handler)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.remaining > 0 and fault.method == method and path.endswith(fault.path_suffix):
                    fault.remaining -= 1
                    return fault
        return None

    def new_cursor(self, state: tuple[Any, ...]) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._cursors[token] = state
        return token

    def cursor(self, token: str) -> tuple[Any, ...] | None:
        with self._lock:
            return self._cursors.get(token)

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens.add(token)
        return token

    def token_valid(self, token: str) -> bool:
        with self._lock:
            return token in self.tokens

    def page(
        self, series: Series, start: str | None, end: str | None, offset: int, limit: int
    ) -> tuple[list, int | None]:
        """Points of `series` in [start, end] from `offset`, at most min(limit, page_size); next offset or None."""
        times = series.times()
        lo = bisect.bisect_left(times, _parse_time(start)) if start else 0
        hi = bisect.bisect_right(times, _parse_time(end)) if end else len(times)
        size = max(1, min(limit, self.page_size))
        first = lo + offset
        chunk = series.points[first : min(first + size, hi)]
        following = offset + size if first + size < hi else None
        return chunk, following


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    @property
    def api(self) -> DataApiServer:
        return self.server.app  # type: ignore[attr-defined]

    # -- plumbing

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"statusCode": status, "message": message, "traceId": uuid.uuid4().hex}, headers)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        body = self._body()
        headers = {k: v for k, v in self.headers.items()}
        with self.api._lock:
            self.api.requests.append(Recorded(method, parts.path, query, headers, body))
        fault = self.api.take_fault(method, parts.path)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status is not None:
                return self._error(fault.status, f"injected {fault.status}", fault.headers)
        if parts.path == f"/{self.api.tenant}/oauth2/v2.0/token" and method == "POST":
            return self._token(body)
        if not parts.path.startswith(BASE_PATH):
            return self._error(404, f"no route {parts.path}")
        key = self.api.subscription_key
        if key is not None and headers.get("Ocp-Apim-Subscription-Key") != key:
            return self._error(401, "Access denied due to missing or invalid subscription key.")
        if self.api.auth_enabled:
            auth = headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or not self.api.token_valid(auth[len("Bearer "):]):
                return self._error(401, "Unauthorized. Access token is missing or invalid.")
        rest = parts.path[len(BASE_PATH):].strip("/")
        self._route(method, rest, query, body)

    def _route(self, method: str, rest: str, query: dict[str, list[str]], body: Any) -> None:
        segments = rest.split("/") if rest else []
        if method == "GET" and not segments:
            return self._find(query)
        if method == "POST" and not segments:
            return self._create(body)
        if method == "POST" and segments == ["query", "data"]:
            return self._query_data(query, body)
        if method == "POST" and segments == ["data"]:
            return self._write(body)
        if method == "GET" and len(segments) == 1:
            series = self.api.series.get(segments[0])
            if series is None:
                return self._error(404, f"Timeseries with id {segments[0]} not found")
            return self._send(200, {"data": {"items": [series.metadata()]}})
        if method == "GET" and len(segments) == 2 and segments[1] == "data":
            return self._series_data(segments[0], query)
        return self._error(404, f"no route {method} /{rest}")

    # -- endpoints

    def _token(self, form: Any) -> None:
        if not isinstance(form, dict) or form.get("grant_type") != "client_credentials":
            return self._send(400, {"error": "unsupported_grant_type"})
        if form.get("client_id") != self.api.client_id or form.get("client_secret") != self.api.client_secret:
            return self._send(401, {"error": "invalid_client",
                                    "error_description": "AADSTS7000215: Invalid client secret."})
        if not form.get("scope"):
            return self._send(400, {"error": "invalid_scope"})
        self._send(200, {"token_type": "Bearer", "expires_in": self.api.token_lifetime,
                         "ext_expires_in": self.api.token_lifetime, "access_token": self.api.issue_token()})

    def _find(self, query: dict[str, list[str]]) -> None:
        name = query.get("name", [None])[0]
        facility = query.get("facility", [None])[0]
        limit = int(query.get("limit", ["1000"])[0])
        token = query.get("continuationToken", [None])[0]
        offset = 0
        if token is not None:
            state = self.api.cursor(token)
            if state is None:
                return self._error(400, "Invalid continuation token")
            offset = state[1]
        contains = self.api.name_match == "contains"
        with self.api._lock:
            matches = [s for s in self.api.series.values()
                       if (name is None or s.name == name or (contains and name in s.name))
                       and (facility is None or s.facility == facility)]
        page = matches[offset : offset + limit]
        body: dict[str, Any] = {"data": {"items": [s.metadata() for s in page]}, "count": len(page)}
        if offset + limit < len(matches):
            body["continuationToken"] = self.api.new_cursor(("find", offset + limit))
        self._send(200, body)

    def _series_data(self, series_id: str, query: dict[str, list[str]]) -> None:
        series = self.api.series.get(series_id)
        if series is None:
            return self._error(404, f"Timeseries with id {series_id} not found")
        token = query.get("continuationToken", [None])[0]
        start, end = query.get("startTime", [None])[0], query.get("endTime", [None])[0]
        limit, offset = int(query.get("limit", ["1000"])[0]), 0
        if token:
            state = self.api.cursor(token)
            if state is None:
                return self._error(400, "Invalid continuation token")
            _, start, end, limit, offset = state
        points, following = self.api.page(series, start, end, offset, limit)
        body: dict[str, Any] = {"data": {"items": [{"id": series.id, "name": series.name, "unit": "",
                                                    "datapoints": points}]}}
        if following is not None:
            body["continuationToken"] = self.api.new_cursor(("data", start, end, limit, following))
        self._send(200, body)

    def _query_data(self, query: dict[str, list[str]], body: Any) -> None:
        if not isinstance(body, list) or not all(isinstance(item, dict) and item.get("id") for item in body):
            return self._error(400, "The request body must be a list of {id, startTime, endTime, ...}")
        if len(body) > MAX_IDS_PER_QUERY:
            return self._error(400, f"A maximum of {MAX_IDS_PER_QUERY} items is allowed per request; got {len(body)}")
        unknown = [item["id"] for item in body if item["id"] not in self.api.series]
        if unknown:
            return self._error(404, f"Timeseries with id {unknown[0]} not found")
        top_token = query.get("continuationToken", [None])[0]
        offsets: dict[str, int] = {}
        if top_token is not None:
            state = self.api.cursor(top_token)
            if state is None:
                return self._error(400, "Invalid continuation token")
            offsets = dict(state[1])
        items, following = [], {}
        for item in body:
            offset = offsets.get(item["id"], 0)
            if offset is None:  # this series was finished on an earlier page
                items.append({"id": item["id"], "datapoints": []})
                continue
            if item.get("continuationToken"):
                state = self.api.cursor(item["continuationToken"])
                if state is None:
                    return self._error(400, "Invalid continuation token")
                offset = state[1]
            limit = int(item.get("limit") or 1000)
            if not 1 <= limit <= 100000:
                return self._error(400, f"limit must be between 1 and 100000; got {limit}")
            series = self.api.series[item["id"]]
            points, next_offset = self.api.page(series, item.get("startTime"), item.get("endTime"), offset, limit)
            entry: dict[str, Any] = {"id": series.id, "name": series.name, "unit": "", "datapoints": points}
            following[series.id] = next_offset
            if next_offset is not None and self.api.paging == "item":
                entry["continuationToken"] = self.api.new_cursor(("item", next_offset))
            items.append(entry)
        answer: dict[str, Any] = {"data": {"items": items}}
        if self.api.paging == "top" and any(v is not None for v in following.values()):
            answer["continuationToken"] = self.api.new_cursor(("top", following))
        self._send(200, answer)

    def _create(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"].strip():
            return self._error(400, "The request body must be {name, description, step, unit, facility, externalId} "
                                    "with a non-empty name")
        for key in ("description", "unit", "facility", "externalId"):
            if body.get(key) is not None and not isinstance(body[key], str):
                return self._error(400, f"{key} must be a string")
        if body.get("step") is not None and not isinstance(body["step"], bool):
            return self._error(400, "step must be a boolean")
        facility = body.get("facility") or ""
        with self.api._lock:
            if any(s.name == body["name"] and s.facility == facility for s in self.api.series.values()):
                taken = True
            else:
                taken = False
                series = Series(name=body["name"], facility=facility, description=body.get("description") or "",
                                step=bool(body.get("step")), unit=body.get("unit") or "",
                                external_id=body.get("externalId") or "")
                self.api.series[series.id] = series
                self.api.created.append(series.name)
        if taken:
            return self._error(409, f"A timeseries with name {body['name']} already exists in facility '{facility}'")
        self._send(201, {"data": {"items": [series.metadata()]}})

    def _write(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            return self._error(400, "The request body must be {items: [{id, datapoints}]}")
        if len(body["items"]) > MAX_ITEMS_PER_WRITE:
            return self._error(400, f"A maximum of {MAX_ITEMS_PER_WRITE} items is allowed per request; "
                                    f"got {len(body['items'])}")
        for item in body["items"]:
            if not isinstance(item, dict) or not isinstance(item.get("datapoints"), list):
                return self._error(400, "Each item must be {id, datapoints: [...]}")
            for point in item["datapoints"]:
                problem = _invalid_point(point)
                if problem:
                    return self._error(400, f"Invalid datapoint {point!r} for id {item.get('id')}: {problem}")
        with self.api._lock:
            unknown = [item.get("id") for item in body["items"] if item.get("id") not in self.api.series]
            if not unknown:
                for item in body["items"]:
                    self.api.series[item["id"]].merge(item["datapoints"])
        if unknown:  # nothing written: the request is refused as a whole
            return self._error(404, f"Timeseries with id {unknown[0]} not found")
        self._send(200, {"statusCode": 200, "message": "Data was written", "traceId": uuid.uuid4().hex})


def _invalid_point(point: Any) -> str:
    """Why a datapoint to write is refused ("" when it is fine): an RFC 3339 time with a zone, a
    finite number, an integer status."""
    if not isinstance(point, dict):
        return "not an object"
    time_text = point.get("time")
    if not isinstance(time_text, str):
        return "time is missing"
    try:
        moment = datetime.fromisoformat(time_text.replace("Z", "+00:00"))
    except ValueError:
        return "time is not RFC 3339"
    if moment.tzinfo is None:
        return "time has no zone"
    value = point.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        return "value is not a finite number"
    status = point.get("status", 192)
    if isinstance(status, bool) or not isinstance(status, int):
        return "status is not an integer"
    return ""


DataApiServer.handler = _Handler
DataApiServer.thread_name = "data-api"
