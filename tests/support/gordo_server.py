"""A local Gordo 6 server, a Kubernetes API for Gordo resources, and a small sensor source, for tests.

`GordoServer` answers the way the real server answered in the captured samples
(fixtures/gordo/): the same status lines, headers (`revision`, Server-Timing,
content types), HTML 404 pages, JSON with the revision added, parquet bodies. The
exact captured requests get the captured answers byte for byte; any other request
gets a computed answer in the same shape (N rows in, N - model_offset rows out,
the same groups and columns), with values that are a simple function of the input.
Tests configure it (latency, models that are not anomaly detectors, models listed
without metadata, revisions, injected failures, a token endpoint) and read back
what it received.

`KubernetesServer` implements the part of the Kubernetes API latigo uses: GET,
POST, PUT and merge-PATCH of `gordos.equinor.com` with resourceVersion conflicts
(409), and label-selected lists of `models.equinor.com`.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import io
import itertools
import json
import math
import os
import re
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from latigo.durations import parse_frequency
from latigo.interfaces import SensorDataProvider
from latigo.types import SensorFrame
from tests.support.loopback import LoopbackServer

_REPO = Path(__file__).resolve().parents[2]


def fixtures_dir() -> Path:
    """The samples captured from a real Gordo 6 server (tests/fixtures/gordo/README.md says how)."""
    return Path(os.environ.get("LATIGO_TEST_GORDO_FIXTURES") or _REPO / "tests" / "fixtures" / "gordo")


FIXTURES = fixtures_dir()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


def fixture_headers(name: str) -> dict[str, str]:
    """Header name -> value from a captured .headers file (status line dropped)."""
    lines = fixture_bytes(name).decode().splitlines()[1:]
    return dict(line.split(": ", 1) for line in lines if ": " in line)


REASONS = {200: "OK", 201: "CREATED", 400: "BAD REQUEST", 401: "UNAUTHORIZED", 404: "NOT FOUND", 409: "CONFLICT",
           410: "GONE", 415: "UNSUPPORTED MEDIA TYPE", 422: "UNPROCESSABLE ENTITY", 500: "INTERNAL SERVER ERROR",
           502: "BAD GATEWAY", 503: "SERVICE UNAVAILABLE", 504: "GATEWAY TIMEOUT"}
HTML_TITLES = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
               502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
GENERIC_HTML = {
    404: "The requested URL was not found on the server. If you entered the URL manually please check your "
         "spelling and try again.",
    500: "The server encountered an internal error and was unable to complete your request. Either the server "
         "is overloaded or there is an error in the application.",
    503: "The server is temporarily unable to service your request due to maintenance downtime or capacity "
         "problems. Please try again later.",
}
ANOMALY_GROUPS = ("start", "end", "model-input", "model-output", "tag-anomaly-scaled", "total-anomaly-scaled",
                  "tag-anomaly-unscaled", "total-anomaly-unscaled", "anomaly-confidence", "total-anomaly-confidence")
"""Column order of Gordo's anomaly frame (the parquet answer keeps it; JSON sorts the keys)."""
THRESHOLD = 0.5


def werkzeug_html(status: int, message: str | None = None) -> bytes:
    """An error page as Werkzeug renders it (the shape of the captured 404 bodies)."""
    title = HTML_TITLES.get(status, REASONS.get(status, "Error").title())
    text = message if message is not None else GENERIC_HTML.get(status, title)
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#39;")
    return (f"<!doctype html>\n<html lang=en>\n<title>{status} {title}</title>\n<h1>{title}</h1>\n"
            f"<p>{escaped}</p>\n").encode()


# ---------------------------------------------------------------- what the Gordo server serves


@dataclass
class ModelSpec:
    """One served model; `anomaly=False` answers 422 on the anomaly endpoint; `has_metadata=False`
    is listed by /models but answers 404 elsewhere (a half-deployed model)."""

    name: str
    tags: list[str] = field(default_factory=lambda: ["TAG-1", "TAG-2", "TAG-3", "TAG-4"])
    target_tags: list[str] | None = None
    """None: the metadata's target_tag_list is null (= tags)."""
    resolution: str = "10T"
    model_offset: int = 0
    interpolation_limit: str | None = "48H"
    anomaly: bool = True
    has_metadata: bool = True

    @property
    def targets(self) -> list[str]:
        return list(self.target_tags or self.tags)


CAPTURED_MODEL = ModelSpec("model-a", target_tags=["TAG-1", "TAG-2", "TAG-3", "TAG-4"])
"""The model the fixtures were captured from (project demo, revision 1)."""


@dataclass
class Recorded:
    """One request as the server received it; `body` is parsed (JSON, {name: DataFrame} for
    parquet multipart, {field: value} for forms)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw: bytes
    status: int = 0


@dataclass
class _Failure:
    match: str
    status: int
    remaining: int
    hang: float = 0.0


class GordoServer(LoopbackServer):
    """See the module docstring. Use as a context manager or start()/stop()."""

    def __init__(self, project: str = "demo", models: list[ModelSpec] | None = None, revision: str = "1") -> None:
        self.project = project
        self.models: dict[str, ModelSpec] = {m.name: m for m in (models or [copy.deepcopy(CAPTURED_MODEL)])}
        self.latest = revision
        self.available = [revision]
        self.gone_once: set[str] = set()
        self.expected_models: list[str] | None = None
        self.latency = 0.0
        self.nan_groups: set[str] = set()
        self.require_token = False
        self.client_credentials = ("latigo-client", "latigo-secret")
        self.tokens_issued = 0
        self._valid_tokens: set[str] = set()
        self._failures: list[_Failure] = []
        self.requests: list[Recorded] = []
        self.record = True
        self._lock = threading.Lock()
        self._metadata_template = fixture_json("metadata.json")

    @property
    def url(self) -> str:
        return self.origin

    @property
    def authority(self) -> str:
        """Base for the Azure AD-like token endpoint: POST {authority}/<tenant>/oauth2/v2.0/token."""
        return f"{self.url}/login"

    # ------------------------------------------------ configuration

    def add_model(self, spec: ModelSpec) -> None:
        with self._lock:
            self.models[spec.name] = spec

    def publish_revision(self, revision: str, keep_old: bool = False) -> None:
        """A new build: `revision` becomes latest; the old ones are removed unless `keep_old`."""
        with self._lock:
            self.available = [*self.available, revision] if keep_old else [revision]
            self.latest = revision

    def fail_next(self, count: int, status: int = 500, match: str = "") -> None:
        """The next `count` requests whose path contains `match` answer `status` (an HTML error page)."""
        with self._lock:
            self._failures.append(_Failure(match, status, count))

    def hang_next(self, count: int, seconds: float, match: str = "") -> None:
        """The next `count` matching requests wait `seconds` before answering (client timeouts)."""
        with self._lock:
            self._failures.append(_Failure(match, 0, count, hang=seconds))

    def revoke_tokens(self) -> None:
        """Every token issued so far answers 401 from now on (a key rotation)."""
        with self._lock:
            self._valid_tokens.clear()

    def recorded(self, contains: str = "", method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if contains in r.path and (method is None or r.method == method)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------ answers

    def _take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining > 0 and failure.match in path:
                    failure.remaining -= 1
                    return failure
        return None

    def _issue_token(self) -> str:
        with self._lock:
            self.tokens_issued += 1
            token = f"token-{self.tokens_issued}-{os.urandom(4).hex()}"
            self._valid_tokens.add(token)
            return token

    def _token_valid(self, header: str) -> bool:
        with self._lock:
            return header.startswith("Bearer ") and header[7:] in self._valid_tokens

    def metadata_body(self, spec: ModelSpec, revision: str) -> bytes:
        if spec == CAPTURED_MODEL and revision == "1" and self.project == "demo":
            return fixture_bytes("metadata.json")
        body = copy.deepcopy(self._metadata_template)
        dataset = body["metadata"]["dataset"]
        dataset.update(tag_list=spec.tags, target_tag_list=spec.target_tags, resolution=spec.resolution,
                       interpolation_limit=spec.interpolation_limit)
        body["metadata"]["name"] = spec.name
        body["metadata"]["metadata"]["build_metadata"]["model"]["model_offset"] = spec.model_offset
        body["env"]["MODEL_COLLECTION_DIR"] = f"/tmp/gordopeer/models/{revision}"
        body["revision"] = revision
        return json.dumps(body).encode()


# ---------------------------------------------------------------- Gordo's computation


@dataclass
class Table:
    """A request's X or y: what Gordo's dataframe_from_dict makes of {column: {timestamp: value}}
    (rows sorted by time), kept as a plain array because pandas would dominate the server's cost."""

    index: pd.DatetimeIndex
    columns: list[str]
    values: np.ndarray  # rows x columns

    @classmethod
    def from_gordo_dict(cls, data: dict[str, dict[str, Any]]) -> Table:
        columns = [str(column) for column in data]
        series = list(data.values())
        keys = list(series[0]) if series else []
        if any(list(s) != keys for s in series):
            keys = sorted(set().union(*series))
        values = np.array([[s.get(key) for key in keys] for s in series], dtype=float).reshape(len(series), -1).T
        return cls._sorted(pd.to_datetime(keys, utc=True, format="ISO8601"), columns, values)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Table:
        index = pd.DatetimeIndex(pd.to_datetime(frame.index, utc=True))
        return cls._sorted(index, [str(c) for c in frame.columns], frame.to_numpy(dtype=float))

    @classmethod
    def _sorted(cls, index: pd.DatetimeIndex, columns: list[str], values: np.ndarray) -> Table:
        order = np.argsort(index.asi8, kind="stable")
        return cls(index[order], columns, values[order])

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]

    def verified(self, expected: list[str]) -> Table | str:
        """Gordo's _verify_dataframe: select the expected columns, rename positionally when only the
        names differ, else the message of its 400."""
        if all(column in self.columns for column in expected):
            return Table(self.index, list(expected), self.values[:, [self.columns.index(c) for c in expected]])
        if len(self.columns) != len(expected):
            got = f"Index({self.columns!r}, dtype='object')"  # as Gordo's pandas prints it
            return (f"Unexpected features: was expecting {expected} length of {len(expected)}, "
                    f"but got {got} length of {len(self.columns)}")
        return Table(self.index, list(expected), self.values)


def anomaly_columns(spec: ModelSpec, X: Table, y: Table | None, nan_groups: set[str]
                    ) -> tuple[pd.DatetimeIndex, dict[tuple[str, str], Any]]:
    """Gordo's output for N input rows: N - model_offset rows, columns (group, column) in the order
    of Gordo's anomaly frame.

    model-output is the mean of each input row (for every target tag); the anomalies are the
    distance of y from it. Simple, deterministic, and checkable by a test."""
    offset = spec.model_offset
    index = X.index[offset:]
    inputs = X.values[offset:]
    mean = inputs.mean(axis=1) if inputs.size else np.zeros(0)
    step = pd.Timedelta(parse_frequency(spec.resolution))
    columns: dict[tuple[str, str], Any] = {
        ("start", ""): [ts.isoformat() for ts in index],
        ("end", ""): [(ts + step).isoformat() for ts in index] if y is not None else [None] * len(index),
    }
    for position, tag in enumerate(X.columns):
        columns[("model-input", tag)] = inputs[:, position]
    for tag in spec.targets:
        columns[("model-output", tag)] = mean
    if y is not None:
        unscaled = np.abs(y.values[offset:] - mean[:, None])
        scaled = unscaled / THRESHOLD
        groups = [("tag-anomaly-scaled", scaled), ("total-anomaly-scaled", None),
                  ("tag-anomaly-unscaled", unscaled), ("total-anomaly-unscaled", None),
                  ("anomaly-confidence", scaled / 2), ("total-anomaly-confidence", None)]
        totals = {"total-anomaly-scaled": np.linalg.norm(scaled, axis=1),
                  "total-anomaly-unscaled": np.linalg.norm(unscaled, axis=1),
                  "total-anomaly-confidence": np.linalg.norm(scaled, axis=1) / 2}
        for group, values in groups:
            if values is None:
                columns[(group, "")] = totals[group]
            else:
                for position, tag in enumerate(spec.targets):
                    columns[(group, tag)] = values[:, position]
    for key in columns:
        if key[0] in nan_groups:
            columns[key] = np.full(len(index), np.nan)
    return index, columns


def gordo_dict(index: pd.DatetimeIndex, columns: dict[tuple[str, str], Any]) -> dict[str, dict[str, Any]]:
    """Gordo's dataframe_to_dict, with jsonify's sorted keys: {group: {column or group: {str(ts): value}}}."""
    keys = [str(ts) for ts in index]
    out: dict[str, dict[str, Any]] = {}
    for (group, column), values in sorted(columns.items()):
        listed = values.tolist() if isinstance(values, np.ndarray) else list(values)
        out.setdefault(group, {})[column or group] = dict(zip(keys, listed, strict=True))
    return out


def columns_frame(index: pd.DatetimeIndex, columns: dict[tuple[str, str], Any]) -> pd.DataFrame:
    frame = pd.DataFrame({f"c{i}": values for i, values in enumerate(columns.values())}, index=index)
    frame.columns = pd.MultiIndex.from_tuples(list(columns))
    return frame


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Gordo's dataframe_into_parquet_bytes."""
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame), buffer, compression="snappy")
    return buffer.getvalue().to_pybytes()


def frame_from_parquet(content: bytes) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(content)).to_pandas()


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            parts[str(name)] = part.get_payload(decode=True) or b""
    return parts


# ---------------------------------------------------------------- the HTTP handler


class _Answer(Exception):
    """Raised inside a handler to answer at once."""

    def __init__(self, status: int, body: bytes = b"", content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers or {}


def _json_answer(status: int, data: dict[str, Any], revision: str | None) -> _Answer:
    """Gordo's after_request: the revision is added to every JSON body and sent as a header."""
    if revision is not None:
        data = {**data, "revision": revision}
    return _Answer(status, json.dumps(data).encode(), headers={"revision": revision} if revision else {})


class _GordoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server_version = "gunicorn"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    @property
    def gordo(self) -> GordoServer:
        return self.server.app  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        started = time.perf_counter()
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = Recorded(self.command, parsed.path, query, dict(self.headers.items()), None, raw)
        if self.gordo.record:
            with self.gordo._lock:
                self.gordo.requests.append(record)
        try:
            record.body = self._parse_body(raw)
            self._route(parsed.path, query, record)
            answer = _Answer(404, werkzeug_html(404), "text/html; charset=utf-8")
        except _Answer as given:
            answer = given
        record.status = answer.status
        self._send(answer, started)

    def _parse_body(self, raw: bytes) -> Any:
        content_type = self.headers.get("Content-Type", "")
        if not raw:
            return None
        if content_type.startswith("application/json"):
            try:
                return json.loads(raw)
            except ValueError:
                raise _Answer(400, werkzeug_html(400, "The browser (or proxy) sent a request that this server "
                                                      "could not understand."), "text/html; charset=utf-8") from None
        if content_type.startswith("multipart/form-data"):
            return {name: frame_from_parquet(data) for name, data in parse_multipart(content_type, raw).items()}
        if content_type.startswith("application/x-www-form-urlencoded"):
            return dict(urllib.parse.parse_qsl(raw.decode()))
        return raw

    def _send(self, answer: _Answer, started: float) -> None:
        self.send_response_only(answer.status, REASONS.get(answer.status, ""))
        self.send_header("Server", "gunicorn")
        self.send_header("Date", formatdate(usegmt=True))
        self.send_header("Connection", "keep-alive")
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Server-Timing", f"request_walltime_s;dur={time.perf_counter() - started}")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    # ------------------------------------------------ routing

    def _route(self, path: str, query: dict[str, str], record: Recorded) -> None:
        gordo = self.gordo
        if path.startswith("/login/") and path.endswith("/oauth2/v2.0/token") and self.command == "POST":
            self._token(record.body or {})
        failure = gordo._take_failure(path)
        if failure is not None:
            if failure.hang:
                time.sleep(failure.hang)
            else:
                raise _Answer(failure.status, werkzeug_html(failure.status), "text/html; charset=utf-8")
        if gordo.latency:
            time.sleep(gordo.latency)
        if gordo.require_token and not gordo._token_valid(self.headers.get("Authorization", "")):
            raise _Answer(401, b"Unauthorized", "text/plain", {"WWW-Authenticate": 'Bearer realm="gordo"'})
        prefix = f"/gordo/v0/{gordo.project}/"
        if not path.startswith(prefix):
            return
        revision = self._revision(query)
        rest = path[len(prefix):].strip("/")
        if self.command == "GET" and rest == "models":
            with gordo._lock:
                names = list(gordo.models)
            if revision == "1" and names == ["model-a"] and gordo.project == "demo":
                raise _Answer(200, fixture_bytes("models.json"), headers={"revision": revision})
            raise _json_answer(200, {"models": names}, revision)
        if self.command == "GET" and rest == "revisions":
            raise _json_answer(200, {"available-revisions": list(gordo.available), "latest": gordo.latest}, revision)
        if self.command == "GET" and rest == "expected-models":
            raise _json_answer(200, {"expected-models": list(gordo.expected_models or [])}, revision)
        parts = rest.split("/", 1)
        if len(parts) != 2:
            return
        name, action = parts
        spec = gordo.models.get(name)
        if self.command == "GET" and action in ("metadata", "healthcheck"):
            if spec is None or not spec.has_metadata:
                raise _Answer(404, werkzeug_html(404, f"No metadata found for '{name}'"),
                              "text/html; charset=utf-8", {"revision": revision})
            raise _Answer(200, gordo.metadata_body(spec, revision), headers={"revision": revision})
        if self.command == "POST" and action in ("prediction", "anomaly/prediction"):
            if spec is None or not spec.has_metadata:
                raise _Answer(404, werkzeug_html(404, f"No such model found: '{name}'"),
                              "text/html; charset=utf-8", {"revision": revision})
            self._predict(spec, action == "anomaly/prediction", query, record, revision)

    def _revision(self, query: dict[str, str]) -> str:
        gordo = self.gordo
        asked = query.get("revision") or self.headers.get("revision")
        if not asked:
            return gordo.latest
        with gordo._lock:
            gone = asked in gordo.gone_once or asked not in gordo.available
            gordo.gone_once.discard(asked)
        if gone:
            raise _json_answer(410, {"error": f"Revision '{asked}' not found."}, asked)
        return asked

    def _token(self, form: dict[str, str]) -> None:
        gordo = self.gordo
        if (form.get("grant_type") != "client_credentials"
                or (form.get("client_id"), form.get("client_secret")) != gordo.client_credentials):
            raise _json_answer(401, {"error": "invalid_client",
                                     "error_description": "AADSTS7000215: Invalid client secret provided."}, None)
        raise _json_answer(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                                 "access_token": gordo._issue_token()}, None)

    def _predict(self, spec: ModelSpec, anomaly: bool, query: dict[str, str], record: Recorded,
                 revision: str) -> None:
        started = time.perf_counter()
        body = record.body if isinstance(record.body, dict) else {}
        if "X" not in body:
            raise _json_answer(400, {"message": 'Cannot predict without "X"'}, revision)
        parquet_answer = query.get("format") == "parquet"
        replay = self._replay(spec, anomaly, parquet_answer, record, revision)
        if replay is not None:
            raise replay
        as_table = Table.from_frame if isinstance(body["X"], pd.DataFrame) else Table.from_gordo_dict
        X = as_table(body["X"]).verified(spec.tags)
        y = None if body.get("y") is None else as_table(body["y"]).verified(spec.targets)
        for checked in (X, y):
            if isinstance(checked, str):
                raise _json_answer(400, {"message": checked}, revision)
        if anomaly and y is None:
            raise _json_answer(400, {"message": "Cannot perform anomaly without 'y' to compare against."}, revision)
        if anomaly and not spec.anomaly:
            raise _json_answer(422, {"message": "Model is not an AnomalyDetector, it is of type: "
                                                "<class 'sklearn.pipeline.Pipeline'>"}, revision)
        index, columns = anomaly_columns(spec, X, y if anomaly else None, self.gordo.nan_groups)
        if not anomaly:  # the base prediction frame: model-input, model-output, start, end
            columns = {key: columns[key] for key in columns if key[0] in ("model-input", "model-output", "start")
                       } | {("end", ""): columns[("end", "")]}
        if parquet_answer:
            raise _Answer(200, parquet_bytes(columns_frame(index, columns)), "application/octet-stream",
                          {"revision": revision})
        context: dict[str, Any] = {"data": gordo_dict(index, columns)}
        if anomaly:
            context["time-seconds"] = f"{time.perf_counter() - started:.4f}"
        raise _json_answer(200, context, revision)

    def _replay(self, spec: ModelSpec, anomaly: bool, parquet_answer: bool, record: Recorded,
                revision: str) -> _Answer | None:
        """The captured answer for the captured request (same model, same body)."""
        if spec != CAPTURED_MODEL or revision != "1" or self.gordo.project != "demo" or self.gordo.nan_groups:
            return None
        captured = fixture_json("anomaly-request.json")
        body = record.body
        if isinstance(body.get("X"), pd.DataFrame):
            same = _frames_equal(body["X"], captured["X"]) and (
                not anomaly or _frames_equal(body.get("y"), captured["y"]))
        else:
            same = body.get("X") == captured["X"] and (not anomaly or body.get("y") == captured["y"])
        if not same:
            return None
        if parquet_answer:
            return _Answer(200, fixture_bytes("anomaly-response.parquet"), "application/octet-stream",
                           {"revision": revision}) if anomaly else None
        name = "anomaly-response.json" if anomaly else "prediction-response.json"
        return _Answer(200, fixture_bytes(name), headers={"revision": revision})


def _frames_equal(frame: Any, captured: dict[str, dict[str, float]]) -> bool:
    if not isinstance(frame, pd.DataFrame):
        return False
    given, expected = Table.from_frame(frame), Table.from_gordo_dict(captured)
    return bool(given.columns == expected.columns and given.index.equals(expected.index)
                and given.values.shape == expected.values.shape and (given.values == expected.values).all())


# ---------------------------------------------------------------- Kubernetes API (Gordo and Model resources)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubernetesServer(LoopbackServer):
    """Gordo (`gordos.equinor.com`) and Model (`models.equinor.com`) resources behind a bearer token."""

    def __init__(self, token: str = "kube-token") -> None:
        self.token = token
        self.gordos: dict[tuple[str, str], dict[str, Any]] = {}
        self.models: list[dict[str, Any]] = []
        self.requests: list[Recorded] = []
        self._interfere = 0
        self._versions = itertools.count(1000)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.origin

    def _next_version(self) -> str:
        return str(next(self._versions))

    def put_gordo(self, namespace: str, project: str, machines: list[dict[str, Any]],
                  deploy_version: str = "6.0.4") -> dict[str, Any]:
        resource = {
            "apiVersion": "equinor.com/v1", "kind": "Gordo",
            "metadata": {"name": project, "namespace": namespace, "resourceVersion": self._next_version(),
                         "generation": 1},
            "spec": {"deploy-version": deploy_version, "config": {"machines": copy.deepcopy(machines),
                                                                   "globals": {"runtime": {"server": {}}}}},
        }
        with self._lock:
            self.gordos[(namespace, project)] = resource
        return resource

    def machines(self, namespace: str, project: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self.gordos[(namespace, project)]["spec"]["config"]["machines"])

    def add_model(self, namespace: str, project: str, name: str, phase: str, created: str) -> None:
        with self._lock:
            self.models.append({
                "apiVersion": "equinor.com/v1", "kind": "Model",
                "metadata": {"name": f"{project}-{name}-{created[:10]}", "namespace": namespace,
                             "creationTimestamp": created,
                             "labels": {"applications.gordo.equinor.com/project-name": project,
                                        "applications.gordo.equinor.com/model-name": name}},
                "status": {"phase": phase},
            })

    def interfere_next(self, count: int) -> None:
        """The next `count` writes find the resource changed by someone else just before them
        (another machine added, resourceVersion bumped): they answer 409."""
        with self._lock:
            self._interfere = count

    def _interference(self, namespace: str, project: str) -> None:
        with self._lock:
            resource = self.gordos.get((namespace, project))
            if self._interfere <= 0 or resource is None:
                return
            self._interfere -= 1
            machines = resource["spec"]["config"]["machines"]
            machines.append({"name": f"concurrent-{len(machines)}", "dataset": {}, "model": {}})
            resource["metadata"]["resourceVersion"] = self._next_version()


class _KubernetesHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    @property
    def kube(self) -> KubernetesServer:
        return self.server.app  # type: ignore[attr-defined]

    do_GET = do_POST = do_PUT = do_PATCH = lambda self: self._handle()  # noqa: E731

    def _handle(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else None
        record = Recorded(self.command, parsed.path, query, dict(self.headers.items()), body, raw)
        with self.kube._lock:
            self.kube.requests.append(record)
        status, answer = self._route(parsed.path, query, body)
        record.status = status
        data = json.dumps(answer).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, path: str, query: dict[str, str], body: Any) -> tuple[int, dict[str, Any]]:
        kube = self.kube
        if self.headers.get("Authorization") != f"Bearer {kube.token}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        match = re.fullmatch(r"/apis/equinor\.com/v1/namespaces/([^/]+)/(gordos|models)(?:/([^/]+))?", path)
        if not match:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        namespace, kind, name = match.groups()
        if kind == "models" and self.command == "GET" and name is None:
            return 200, self._list_models(namespace, query.get("labelSelector", ""))
        if kind != "gordos":
            return 405, _status(405, "MethodNotAllowed", "the server does not allow this method")
        if name is None and self.command == "POST":
            return self._create(namespace, body)
        if name is None:
            return 405, _status(405, "MethodNotAllowed", "the server does not allow this method")
        with kube._lock:
            current = copy.deepcopy(kube.gordos.get((namespace, name)))
        if current is None:
            return 404, _status(404, "NotFound", f'gordos.equinor.com "{name}" not found')
        if self.command == "GET":
            return 200, current
        if self.command not in ("PUT", "PATCH"):
            return 405, _status(405, "MethodNotAllowed", "the server does not allow this method")
        if self.command == "PATCH" and self.headers.get("Content-Type") != "application/merge-patch+json":
            return 415, _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: "
                                                             f"{self.headers.get('Content-Type')}")
        kube._interference(namespace, name)
        with kube._lock:
            stored = kube.gordos[(namespace, name)]
            sent = ((body or {}).get("metadata") or {}).get("resourceVersion")
            if (self.command == "PUT" or sent) and sent != stored["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on gordos.equinor.com "{name}": '
                                    "the object has been modified; please apply your changes to the latest "
                                    "version and try again")
            updated = copy.deepcopy(body) if self.command == "PUT" else merge_patch(stored, body)
            updated["metadata"] = {**stored["metadata"], "resourceVersion": kube._next_version(),
                                   "generation": stored["metadata"].get("generation", 1) + 1}
            kube.gordos[(namespace, name)] = updated
            return 200, copy.deepcopy(updated)

    def _create(self, namespace: str, body: Any) -> tuple[int, dict[str, Any]]:
        kube = self.kube
        name = ((body or {}).get("metadata") or {}).get("name")
        with kube._lock:
            if (namespace, name) in kube.gordos:
                return 409, _status(409, "AlreadyExists", f'gordos.equinor.com "{name}" already exists')
            created = copy.deepcopy(body)
            created["metadata"] = {**created.get("metadata", {}), "namespace": namespace,
                                   "resourceVersion": kube._next_version(), "generation": 1}
            kube.gordos[(namespace, name)] = created
            return 201, copy.deepcopy(created)

    def _list_models(self, namespace: str, selector: str) -> dict[str, Any]:
        wanted = dict(item.split("=", 1) for item in selector.split(",") if "=" in item)
        with self.kube._lock:
            items = [copy.deepcopy(m) for m in self.kube.models if m["metadata"]["namespace"] == namespace
                     and all(m["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        return {"apiVersion": "equinor.com/v1", "kind": "ModelList", "metadata": {"resourceVersion": "1"},
                "items": items}


# ---------------------------------------------------------------- a sensor source for the tests


def ramp_value(tag: str, stamp: pd.Timestamp) -> float:
    """A deterministic value per (tag, time): a slow sine wave, phase-shifted per tag."""
    phase = (sum(tag.encode()) % 17) / 17 * 2 * math.pi
    hours = stamp.value / 3.6e12
    return round(0.5 + 0.4 * math.sin(2 * math.pi * hours / 6 + phase), 9)


class RampSensors(SensorDataProvider):
    """Sensor values that are a pure function of (tag, bucket start), on the epoch-aligned grid.

    `missing` tags are reported missing; `empty` tags exist but have no values; `gaps` blanks
    given bucket starts of a tag. Every call is recorded in `calls`."""

    @dataclass
    class Settings:
        missing: list[str] = field(default_factory=list)
        empty: list[str] = field(default_factory=list)

    def __init__(self, missing: list[str] | None = None, empty: list[str] | None = None,
                 gaps: dict[str, list[datetime]] | None = None) -> None:
        self.missing = list(missing or [])
        self.empty = list(empty or [])
        self.gaps = {tag: [pd.Timestamp(g) for g in stamps] for tag, stamps in (gaps or {}).items()}
        self.calls: list[tuple[datetime, datetime, list[str], timedelta]] = []
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: RampSensors.Settings, components: Any) -> RampSensors:
        return cls(settings.missing, settings.empty)

    def get_native_range_specifier(self, start: datetime, end: datetime, parameters: Any) -> str:
        return f"ramp {','.join(parameters.get('sensors', []))} [{start.isoformat()}, {end.isoformat()})"

    def get_data_for_range(self, start: datetime, end: datetime, sensors: Any, resolution: timedelta,
                           aggregation: str = "mean") -> SensorFrame:
        with self._lock:
            self.calls.append((start, end, list(sensors), resolution))
        step = pd.Timedelta(resolution)
        first = pd.Timestamp(start).floor(step)
        index = pd.date_range(first, pd.Timestamp(end), freq=step, inclusive="left")
        present = [tag for tag in sensors if tag not in self.missing]
        columns = {}
        for tag in present:
            values = [math.nan if tag in self.empty else ramp_value(tag, ts) for ts in index]
            for gap in self.gaps.get(tag, []):
                if gap in index:
                    values[index.get_loc(gap)] = math.nan
            columns[tag] = values
        frame = pd.DataFrame(columns, index=index, columns=pd.Index(present, dtype=object), dtype=float)
        return SensorFrame(frame, tuple(tag for tag in sensors if tag in self.missing))


# The handlers are defined after the servers that name them.
GordoServer.handler = _GordoHandler
GordoServer.thread_name = "gordo-test-server"
KubernetesServer.handler = _KubernetesHandler
KubernetesServer.thread_name = "kubernetes-test-server"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def main() -> None:
    """Serve a Gordo project in its own process (benchmarks): prints the base URL, then serves
    until stdin closes or the process is terminated."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    args = parser.parse_args()
    specs = [ModelSpec(f"model-{i:03d}", model_offset=args.offset) for i in range(args.models)]
    server = GordoServer(models=specs)
    server.latency = args.latency
    server.record = False
    with server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()

