"""A local Time Series API (the "Data API") speaking the real wire format, for tests and benchmarks.

The official client (`omnia-timeseries`, tests/support/omnia_client.py) is its judge: every endpoint here
answers that client's own calls (tests/integration/test_data_api_official_client.py). Endpoints (under
`base_path`):

- series: GET `?name=&facility=&externalId=&limit=&continuationToken=` (find/list), GET `/search?name=&
  facility=&...` (fields matched case-insensitively, `*` a wildcard), POST `` (create `{name, facility,
  description, step, unit, externalId, assetId}`: 201 with the new series, 409 when the facility already
  has that name), POST `/getoradd` (a list: each existing series unchanged, the others created), GET,
  PATCH, PUT and DELETE `/{id}`;
- datapoints: GET `/{id}/data` and GET `/query/data?name=&facility=` (`startTime`, `endTime`, `status=`
  filters, `includeOutsidePoints` as JSON or as the client's query string "True"), POST `/query/data`
  (at most 100 items `{id, startTime, endTime, limit, statusFilter, includeOutsidePoints,
  continuationToken}`), GET `/{id}/data/first|latest` (`afterTime`, `beforeTime`, `status`), POST
  `/query/data/first|latest`, POST `/{id}/data` and POST `/data` (at most 100 items; a point at an
  instant the series holds replaces it; `status` required, since the API documents no default), DELETE
  `/{id}/data?startTime=&endTime=`; aggregates answer 501 with a message (not implemented here, never
  raw points in their place);
- an Azure AD style token endpoint `/{tenant}/oauth2/v2.0/token`.

Times are stored and answered as the API answers them: UTC, milliseconds, a Z. A create without a
facility is refused, as the API refuses it. Every error body is `{statusCode, message, traceId}` (the
client reports `message`). Pages are cut at `page_size` points whatever `limit` asks, so several pages
per series are the rule. `endTime` is inclusive here, as the safest assumption a client can be tested
against. `name_match="contains"` makes a name lookup also answer series whose names merely contain the
name asked for, so that a client is tested to pick the exact match itself. Every request is recorded;
faults (a status, with headers, for the next N matching requests) can be injected; `revoke_tokens()`
expires every issued token; `by_name()` and `stored()` read back what was written.
"""

from __future__ import annotations

import bisect
import fnmatch
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
    asset_id: str = ""
    source: str = ""

    _times: list[datetime] | None = field(default=None, repr=False, compare=False)

    def times(self) -> list[datetime]:
        if self._times is None or len(self._times) != len(self.points):
            self._times = [_parse_time(p["time"]) for p in self.points]
        return self._times

    def metadata(self) -> dict[str, Any]:
        description = f"{self.name} (test)" if self.description is None else self.description
        return {"id": self.id, "name": self.name, "description": description, "step": self.step,
                "unit": self.unit, "assetId": self.asset_id, "facility": self.facility, "externalId": self.external_id,
                "source": self.source,
                "changedTime": "2020-01-01T00:00:00.000Z", "createdTime": "2020-01-01T00:00:00.000Z"}

    def merge(self, datapoints: Iterable[dict[str, Any]]) -> None:
        """Write points: one per instant, a new point at an instant already held replaces it."""
        merged = {_parse_time(p["time"]): p for p in self.points}
        for point in datapoints:  # stored as the API answers: milliseconds and a Z, whatever form was sent
            moment = _parse_time(rfc3339(_parse_time(point["time"])))
            merged[moment] = {"time": rfc3339(moment), "value": point["value"], "status": point["status"]}
        self.points = [merged[moment] for moment in sorted(merged)]
        self._times = None


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
        self, series: Series, start: str | None, end: str | None, offset: int, limit: int,
        statuses: frozenset[int] | None = None, outside: bool = False,
    ) -> tuple[list, int | None]:
        """Points of `series` in [start, end] (with the nearest point on either side when `outside`), only
        those whose status is in `statuses` when given, from `offset`, at most min(limit, page_size);
        the next offset or None."""
        selected = self.select(series, start, end, statuses, outside)
        size = max(1, min(limit, self.page_size))
        chunk = selected[offset : offset + size]
        following = offset + size if offset + size < len(selected) else None
        return chunk, following

    def select(self, series: Series, start: str | None, end: str | None, statuses: frozenset[int] | None = None,
               outside: bool = False) -> list[dict[str, Any]]:
        """Every point of `series` a read of [start, end] answers, in time order."""
        times = series.times()
        lo = bisect.bisect_left(times, _parse_time(start)) if start else 0
        hi = bisect.bisect_right(times, _parse_time(end)) if end else len(times)
        def keep(point: dict[str, Any]) -> bool:
            return statuses is None or point.get("status") in statuses
        inside = series.points[lo:hi] if statuses is None else [p for p in series.points[lo:hi] if keep(p)]
        if not outside:
            return inside
        before = next((p for p in reversed(series.points[:lo]) if keep(p)), None)
        after = next((p for p in series.points[hi:] if keep(p)), None)
        return [*([before] if before else []), *inside, *([after] if after else [])]


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

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def _route(self, method: str, rest: str, query: dict[str, list[str]], body: Any) -> None:
        try:
            self._answer(method, rest.split("/") if rest else [], query, body)
        except BadRequest as exc:
            self._error(400, str(exc))

    def _answer(self, method: str, segments: list[str], query: dict[str, list[str]], body: Any) -> None:
        route = (method, *segments)
        if route == ("GET",):
            return self._find(query)
        if route == ("POST",):
            return self._create(body)
        if route == ("POST", "getoradd"):
            return self._get_or_add(body)
        if method == "GET" and segments[:1] == ["search"]:
            return self._search(query, segments[1:])
        if route in (("POST", "query", "data", "first"), ("POST", "query", "data", "latest")):
            return self._multi_edge(segments[2], body)
        if route == ("POST", "query", "data"):
            return self._query_data(query, body)
        if route == ("GET", "query", "data"):
            return self._data_by_name(query)
        if route == ("POST", "data"):
            return self._write(body)
        if len(segments) >= 1 and segments[0] not in ("query", "data", "search", "getoradd"):
            series = self.api.series.get(segments[0])
            if series is None:
                return self._error(404, f"Timeseries with id {segments[0]} not found")
            return self._series_route(method, series, segments[1:], query, body)
        return self._error(404, f"no route {method} /{'/'.join(segments)}")

    def _series_route(self, method: str, series: Series, segments: list[str], query: dict[str, list[str]],
                      body: Any) -> None:
        route = (method, *segments)
        if route == ("GET",):
            return self._send(200, {"data": {"items": [series.metadata()]}})
        if route in (("PATCH",), ("PUT",)):
            return self._change(series, body, replace_all=method == "PUT")
        if route == ("DELETE",):
            with self.api._lock:
                self.api.series.pop(series.id, None)
            return self._message(f"Timeseries with id {series.id} was deleted")
        if route == ("GET", "data"):
            return self._series_data(series, query)
        if route == ("POST", "data"):
            if not isinstance(body, dict) or not isinstance(body.get("datapoints"), list):
                raise BadRequest("The request body must be {datapoints: [{time, value, status}]}")
            return self._write({"items": [{"id": series.id, "datapoints": body["datapoints"]}]})
        if route == ("DELETE", "data"):
            start, end = _one(query, "startTime"), _one(query, "endTime")
            with self.api._lock:
                doomed = {id(p) for p in self.api.select(series, start, end)}
                series.points = [p for p in series.points if id(p) not in doomed]
                series._times = None
            return self._message(f"{len(doomed)} datapoints were deleted")
        if route in (("GET", "data", "first"), ("GET", "data", "latest")):
            point = self._edge(series, segments[1], _one(query, "afterTime"), _one(query, "beforeTime"),
                               _statuses(query.get("status")))
            return self._send(200, {"data": {"items": [self._item(series, [point] if point else [])]}})
        if route == ("GET", "data", "aggregates"):
            return self._error(501, "aggregates (aggregateFunction, processingInterval) are not implemented by "
                                    "this test server; ask for raw datapoints")
        return self._error(404, f"no route {method} /{series.id}/{'/'.join(segments)}")

    # -- endpoints

    def _message(self, text: str, status: int = 200) -> None:
        self._send(status, {"statusCode": status, "message": text, "traceId": uuid.uuid4().hex})

    @staticmethod
    def _item(series: Series, datapoints: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": series.id, "name": series.name, "facility": series.facility, "unit": series.unit,
                "datapoints": datapoints}

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
        name, facility = _one(query, "name"), _one(query, "facility")
        external_id = _one(query, "externalId")
        contains = self.api.name_match == "contains"
        with self.api._lock:
            matches = [s for s in self.api.series.values()
                       if (name is None or s.name == name or (contains and name in s.name))
                       and (facility is None or s.facility == facility)
                       and (external_id is None or s.external_id == external_id)]
        self._send_page(matches, query, "find")

    def _search(self, query: dict[str, list[str]], free_text: list[str]) -> None:
        """GET /search: every given field matched case-insensitively, `*` as a wildcard."""
        if free_text:
            return self._error(501, "search by free-text query (/search/{query}) is not implemented by this test "
                                    "server; search by field (name, facility, ...)")
        fields = {"name": "name", "facility": "facility", "externalId": "external_id", "description": "description",
                  "unit": "unit", "assetId": "asset_id", "source": "source"}
        wanted = {attribute: _one(query, key) for key, attribute in fields.items() if _one(query, key) is not None}
        with self.api._lock:
            matches = [s for s in self.api.series.values()
                       if all(fnmatch.fnmatchcase(str(s.metadata()[_wire(a)] or "").lower(), pattern.lower())
                              for a, pattern in wanted.items())]
        self._send_page(matches, query, "search")

    def _send_page(self, matches: list[Series], query: dict[str, list[str]], kind: str) -> None:
        limit = _integer(_one(query, "limit") or "1000", "limit", 1, 100_000)
        token = _one(query, "continuationToken")
        offset = 0
        if token is not None:
            state = self.api.cursor(token)
            if state is None or state[0] != kind:
                raise BadRequest("Invalid continuation token")
            offset = state[1]
        page = matches[offset : offset + limit]
        body: dict[str, Any] = {"data": {"items": [s.metadata() for s in page]}, "count": len(page)}
        if offset + limit < len(matches):
            body["continuationToken"] = self.api.new_cursor((kind, offset + limit))
        self._send(200, body)

    def _series_data(self, series: Series, query: dict[str, list[str]]) -> None:
        token = _one(query, "continuationToken")
        start, end = _one(query, "startTime"), _one(query, "endTime")
        limit = _integer(_one(query, "limit") or "1000", "limit", 1, 100_000)
        statuses = _statuses(query.get("status"))
        outside = _flag(_one(query, "includeOutsidePoints"), "includeOutsidePoints")
        offset = 0
        if token:
            state = self.api.cursor(token)
            if state is None or state[0] != "data":
                raise BadRequest("Invalid continuation token")
            _, start, end, limit, statuses, outside, offset = state
        points, following = self.api.page(series, start, end, offset, limit, statuses, outside)
        body: dict[str, Any] = {"data": {"items": [self._item(series, points)]}}
        if following is not None:
            body["continuationToken"] = self.api.new_cursor(("data", start, end, limit, statuses, outside, following))
        self._send(200, body)

    def _data_by_name(self, query: dict[str, list[str]]) -> None:
        """GET /query/data?name=&facility=: the points of the one series of that name in that facility."""
        name, facility = _one(query, "name"), _one(query, "facility")
        if not name or not facility:
            raise BadRequest("name and facility are required")
        with self.api._lock:
            found = [s for s in self.api.series.values() if s.name == name and s.facility == facility]
        if not found:
            return self._error(404, f"No timeseries named {name} in facility {facility}")
        self._series_data(found[0], query)

    def _query_data(self, query: dict[str, list[str]], body: Any) -> None:
        if not isinstance(body, list) or not all(isinstance(item, dict) and item.get("id") for item in body):
            raise BadRequest("The request body must be a list of {id, startTime, endTime, ...}")
        if len(body) > MAX_IDS_PER_QUERY:
            raise BadRequest(f"A maximum of {MAX_IDS_PER_QUERY} items is allowed per request; got {len(body)}")
        aggregated = [item["id"] for item in body
                      if item.get("aggregateFunctions") or item.get("processingInterval") or item.get("fill")]
        if aggregated:
            return self._error(501, "aggregates (aggregateFunctions, processingInterval, fill) are not implemented "
                                    f"by this test server (asked for {aggregated[0]}); ask for raw datapoints")
        unknown = [item["id"] for item in body if item["id"] not in self.api.series]
        if unknown:
            return self._error(404, f"Timeseries with id {unknown[0]} not found")
        top_token = _one(query, "continuationToken")
        offsets: dict[str, int] = {}
        if top_token is not None:
            state = self.api.cursor(top_token)
            if state is None or state[0] != "top":
                raise BadRequest("Invalid continuation token")
            offsets = dict(state[1])
        items, following = [], {}
        for item in body:
            offset = offsets.get(item["id"], 0)
            if offset is None:  # this series was finished on an earlier page
                items.append({"id": item["id"], "datapoints": []})
                continue
            if item.get("continuationToken"):
                state = self.api.cursor(item["continuationToken"])
                if state is None or state[0] != "item":
                    raise BadRequest("Invalid continuation token")
                offset = state[1]
            limit = _integer(item.get("limit") or 1000, "limit", 1, 100_000)
            statuses = _statuses(item.get("statusFilter"))
            outside = _flag(item.get("includeOutsidePoints"), "includeOutsidePoints")
            series = self.api.series[item["id"]]
            points, next_offset = self.api.page(series, item.get("startTime"), item.get("endTime"), offset, limit,
                                                statuses, outside)
            entry = self._item(series, points)
            following[series.id] = next_offset
            if next_offset is not None and self.api.paging == "item":
                entry["continuationToken"] = self.api.new_cursor(("item", next_offset))
            items.append(entry)
        answer: dict[str, Any] = {"data": {"items": items}}
        if self.api.paging == "top" and any(v is not None for v in following.values()):
            answer["continuationToken"] = self.api.new_cursor(("top", following))
        self._send(200, answer)

    def _edge(self, series: Series, which: str, after: str | None, before: str | None,
              statuses: frozenset[int] | None) -> dict[str, Any] | None:
        """The first or the latest point in [after, before] with one of `statuses`; None when there is none."""
        selected = self.api.select(series, after, before, statuses)
        if not selected:
            return None
        return selected[0] if which == "first" else selected[-1]

    def _multi_edge(self, which: str, body: Any) -> None:
        if not isinstance(body, list) or not all(isinstance(item, dict) and item.get("id") for item in body):
            raise BadRequest("The request body must be a list of {id, startTime, endTime, statusFilter}")
        if len(body) > MAX_IDS_PER_QUERY:
            raise BadRequest(f"A maximum of {MAX_IDS_PER_QUERY} items is allowed per request; got {len(body)}")
        items = []
        for item in body:
            series = self.api.series.get(item["id"])
            if series is None:
                return self._error(404, f"Timeseries with id {item['id']} not found")
            point = self._edge(series, which, item.get("startTime"), item.get("endTime"),
                               _statuses(item.get("statusFilter")))
            items.append(self._item(series, [point] if point else []))
        self._send(200, {"data": {"items": items}})

    def _create(self, body: Any) -> None:
        fields = _series_fields(body)
        with self.api._lock:
            taken = self._named(fields["name"], fields["facility"])
            series = taken or self._add(fields)
        if taken is not None:
            return self._error(409, f"A timeseries with name {fields['name']} already exists in facility "
                                    f"'{fields['facility']}'")
        self._send(201, {"data": {"items": [series.metadata()]}})

    def _get_or_add(self, body: Any) -> None:
        """POST /getoradd: each series as it is when its name exists in its facility (unchanged), else created."""
        if not isinstance(body, list) or not body:
            raise BadRequest("The request body must be a non-empty list of {name, facility, description, step, "
                             "unit, externalId}")
        requested = [_series_fields(item) for item in body]
        with self.api._lock:
            answered = [self._named(f["name"], f["facility"]) or self._add(f) for f in requested]
        self._send(200, {"data": {"items": [s.metadata() for s in answered]}})

    def _named(self, name: str, facility: str) -> Series | None:
        """The series called `name` in `facility` (the caller holds the lock)."""
        return next((s for s in self.api.series.values() if s.name == name and s.facility == facility), None)

    def _add(self, fields: dict[str, Any]) -> Series:
        series = Series(name=fields["name"], facility=fields["facility"], description=fields["description"],
                        step=fields["step"], unit=fields["unit"], external_id=fields["externalId"],
                        asset_id=fields["assetId"])
        self.api.series[series.id] = series
        self.api.created.append(series.name)
        return series

    def _change(self, series: Series, body: Any, replace_all: bool) -> None:
        """PATCH changes the fields given; PUT replaces the series' metadata (what it leaves out is reset)."""
        if replace_all:
            fields = _series_fields(body)
        else:
            if not isinstance(body, dict):
                raise BadRequest("The request body must be an object of the fields to change")
            fields = _series_fields({"name": series.name, "facility": series.facility, **body}, partial=True)
        with self.api._lock:
            other = self._named(fields["name"], fields["facility"])
            if other is not None and other is not series:
                return self._error(409, f"A timeseries with name {fields['name']} already exists in facility "
                                        f"'{fields['facility']}'")
            for key, attribute in (("name", "name"), ("facility", "facility"), ("description", "description"),
                                   ("step", "step"), ("unit", "unit"), ("externalId", "external_id"),
                                   ("assetId", "asset_id")):
                if key in fields:
                    setattr(series, attribute, fields[key])
        self._send(200, {"data": {"items": [series.metadata()]}})

    def _write(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise BadRequest("The request body must be {items: [{id, datapoints}]}")
        if len(body["items"]) > MAX_ITEMS_PER_WRITE:
            raise BadRequest(f"A maximum of {MAX_ITEMS_PER_WRITE} items is allowed per request; "
                             f"got {len(body['items'])}")
        for item in body["items"]:
            if not isinstance(item, dict) or not isinstance(item.get("datapoints"), list):
                raise BadRequest("Each item must be {id, datapoints: [...]}")
            for point in item["datapoints"]:
                problem = _invalid_point(point)
                if problem:
                    raise BadRequest(f"Invalid datapoint {point!r} for id {item.get('id')}: {problem}")
        with self.api._lock:
            unknown = [item.get("id") for item in body["items"] if item.get("id") not in self.api.series]
            if not unknown:
                for item in body["items"]:
                    self.api.series[item["id"]].merge(item["datapoints"])
        if unknown:  # nothing written: the request is refused as a whole
            return self._error(404, f"Timeseries with id {unknown[0]} not found")
        self._message("Data was written")


class BadRequest(ValueError):
    """A request the API refuses with 400 and this message."""


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _wire(attribute: str) -> str:
    return {"external_id": "externalId", "asset_id": "assetId"}.get(attribute, attribute)


def _integer(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be an integer; got {value!r}") from None
    if not low <= number <= high:
        raise BadRequest(f"{what} must be between {low} and {high}; got {number}")
    return number


def _flag(value: Any, what: str) -> bool:
    """A boolean as JSON sends it, or as a query string does (the official client sends Python's "True")."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise BadRequest(f"{what} must be true or false; got {value!r}")


def _statuses(values: Any) -> frozenset[int] | None:
    """A status filter (query: repeated `status=`; body: `statusFilter: [..]`); None when none is given."""
    if values is None or values == []:
        return None
    if not isinstance(values, list):
        values = [values]
    return frozenset(_integer(v, "status", 0, 2**31 - 1) for v in values)


def _series_fields(body: Any, partial: bool = False) -> dict[str, Any]:
    """A series' metadata from a create/get-or-add/put body (`partial`: a patch, only the fields given), checked
    as the API checks them: a non-empty name and facility, strings, a boolean step."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be {name, facility, description, step, unit, externalId}")
    for key in ("name", "facility"):
        if not isinstance(body.get(key), str) or not body[key].strip():
            raise BadRequest(f"{key} is required and must be a non-empty string; got {body.get(key)!r}")
    for key in ("description", "unit", "externalId", "assetId"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise BadRequest(f"{key} must be a string; got {body[key]!r}")
    if body.get("step") is not None and not isinstance(body["step"], bool):
        raise BadRequest(f"step must be a boolean; got {body['step']!r}")
    if partial:
        return {key: body[key] if body[key] is not None else ("" if key != "step" else False)
                for key in ("name", "facility", "description", "step", "unit", "externalId", "assetId")
                if key in body}
    return {"name": body["name"], "facility": body["facility"], "description": body.get("description") or "",
            "step": bool(body.get("step")), "unit": body.get("unit") or "", "externalId": body.get("externalId") or "",
            "assetId": body.get("assetId") or ""}


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
    if "status" not in point:  # the API documents no default; a client must say what it writes
        return "status is required (192 Good, 0 Bad, ...)"
    status = point["status"]
    if isinstance(status, bool) or not isinstance(status, int):
        return "status is not an integer"
    return ""


DataApiServer.handler = _Handler
DataApiServer.thread_name = "data-api"
