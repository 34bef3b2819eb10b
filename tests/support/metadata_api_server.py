"""A local Metadata API ("Prevent") as production latigo used it, for tests: strict about every field.

Behind API Management: every request needs `Ocp-Apim-Subscription-Key`. `GET {base}/projects` answers
`{"projects": [...]}`. `POST {base}/models` takes

    {project_name, model_name, revision, training_time_from, training_time_to,
     input_tags: [{name, time_series_id}],
     output_tags: [{name, time_series_id, type: aggregated | derived, description, derived_from}],
     description, status, labels}

and answers 201 `{"model_id": ...}` (the same id for the same project, model and revision). Anything
missing, misspelt, extra or of the wrong shape is a 400 naming it (`{statusCode, message, traceId}`): a
derived output names the tag it derives from, an aggregated one names none; the training period has
zones and ends after it starts. Every request is recorded; faults can be injected; clearing `open` makes
POST /models hang until it is set.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.loopback import LoopbackServer

BASE_PATH = "/prevent/metadata/v1"
MODEL_FIELDS = {"project_name", "model_name", "revision", "training_time_from", "training_time_to", "input_tags",
                "output_tags", "description", "status", "labels"}
REQUIRED_FIELDS = MODEL_FIELDS - {"description", "status", "labels"}


@dataclass
class Posted:
    headers: dict[str, str]
    body: Any
    status: int


class MetadataApiServer(LoopbackServer):
    """Start with `start()` or as a context manager; `url` is the API base URL."""

    def __init__(self, projects: list[str] | None = None, subscription_key: str = "prevent-key") -> None:
        self.projects = list(projects or [])
        self.subscription_key = subscription_key
        self.models: dict[tuple[str, str, str], dict[str, Any]] = {}
        """(project, model, revision) -> the last body accepted."""
        self.model_ids: dict[tuple[str, str, str], str] = {}
        self.posts: list[Posted] = []
        self.requests: list[tuple[str, str]] = []
        self.faults: list[list[Any]] = []
        self.open = threading.Event()
        """Cleared: POST /models waits (at most a minute) until it is set again: a Metadata API that hangs."""
        self.open.set()
        self.waiting = threading.Event()
        """Set when a POST /models is waiting for `open`."""
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.origin + BASE_PATH

    def inject(self, method: str, path_suffix: str, status: int, times: int = 1) -> None:
        with self._lock:
            self.faults.append([method, path_suffix, status, times])

    def take_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for fault in self.faults:
                if fault[3] > 0 and fault[0] == method and path.endswith(fault[1]):
                    fault[3] -= 1
                    return int(fault[2])
        return None

    def accepted(self) -> list[dict[str, Any]]:
        """The bodies of the POSTs answered 201, in order."""
        with self._lock:
            return [p.body for p in self.posts if p.status == 201]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    @property
    def api(self) -> MetadataApiServer:
        return self.server.app  # type: ignore[attr-defined]

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"statusCode": status, "message": message, "traceId": uuid.uuid4().hex})

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        with self.api._lock:
            self.api.requests.append((method, path))
        if self.headers.get("Ocp-Apim-Subscription-Key") != self.api.subscription_key:
            return self._error(401, "Access denied due to missing or invalid subscription key.")
        fault = self.api.take_fault(method, path)
        if fault is not None:
            if path == f"{BASE_PATH}/models":
                with self.api._lock:
                    self.api.posts.append(Posted(dict(self.headers.items()), json.loads(raw or b"null"), fault))
            return self._error(fault, f"injected {fault}")
        if method == "GET" and path == f"{BASE_PATH}/projects":
            return self._send(200, {"projects": list(self.api.projects)})
        if method == "POST" and path == f"{BASE_PATH}/models":
            return self._models(raw)
        self._error(404, f"no route {method} {path}")

    def _models(self, raw: bytes) -> None:
        if not self.api.open.is_set():
            self.api.waiting.set()
            self.api.open.wait(60)
        headers = dict(self.headers.items())
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        problem = model_problem(body)
        status = 400 if problem else 201
        with self.api._lock:
            self.api.posts.append(Posted(headers, body, status))
        if problem:
            return self._error(400, problem)
        key = (body["project_name"], body["model_name"], body["revision"])
        with self.api._lock:
            self.api.models[key] = body
            model_id = self.api.model_ids.setdefault(key, str(uuid.uuid4()))
        self._send(201, {"model_id": model_id})


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def model_problem(body: Any) -> str:
    """Why a POST /models body is refused ("" when it is fine)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    unknown = sorted(set(body) - MODEL_FIELDS)
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    missing = sorted(REQUIRED_FIELDS - set(body))
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    for key in ("project_name", "model_name", "revision"):
        if not _text(body[key]):
            return f"{key} must be a non-empty string"
    start, end = _moment(body["training_time_from"]), _moment(body["training_time_to"])
    if start is None or end is None:
        return "training_time_from and training_time_to must be ISO 8601 times with a zone"
    if end <= start:
        return "training_time_to must be after training_time_from"
    for key in ("description", "status"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return f"{key} must be a string"
    if body.get("labels") is not None and not (isinstance(body["labels"], list)
                                               and all(isinstance(x, str) for x in body["labels"])):
        return "labels must be a list of strings"
    return _tags_problem(body["input_tags"], body["output_tags"])


def _tags_problem(inputs: Any, outputs: Any) -> str:
    if not isinstance(inputs, list) or not inputs:
        return "input_tags must be a non-empty list"
    for tag in inputs:
        if not isinstance(tag, dict) or set(tag) != {"name", "time_series_id"} or not all(
                _text(tag[k]) for k in tag):
            return f"input tag {tag!r} must be {{name, time_series_id}}, both non-empty strings"
    if not isinstance(outputs, list) or not outputs:
        return "output_tags must be a non-empty list"
    for tag in outputs:
        if not isinstance(tag, dict) or set(tag) - {"name", "time_series_id", "type", "description", "derived_from"}:
            return f"output tag {tag!r} has unknown fields"
        if not _text(tag.get("time_series_id")) or not _text(tag.get("name")):
            return f"output tag {tag!r} needs a name and a time_series_id"
        if tag.get("type") not in ("aggregated", "derived"):
            return f"output tag {tag['name']}: type must be aggregated or derived, not {tag.get('type')!r}"
        if tag.get("description") is not None and not isinstance(tag["description"], str):
            return f"output tag {tag['name']}: description must be a string"
        derived_from = tag.get("derived_from")
        if tag["type"] == "derived" and not _text(derived_from):
            return f"output tag {tag['name']}: a derived output names the tag it derives from (derived_from)"
        if tag["type"] == "aggregated" and derived_from is not None:
            return f"output tag {tag['name']}: an aggregated output derives from no tag"
    names = [tag["name"] for tag in outputs]
    if len(set(names)) != len(names):
        return "output tag names repeat"
    return ""


MetadataApiServer.handler = _Handler
MetadataApiServer.thread_name = "metadata-api"
