"""Telling the Metadata API ("Prevent") which Time Series API series belong to which model.

The plant's people find a model's predictions next to its sensors because the Metadata API knows, per
model revision, the series it reads (input tags) and the series latigo writes for it (output tags).
Configured as `prediction_metadata: {type: metadata_api, base_url, subscription_key, ...}`, it is fed by
the data_api prediction sink after each write (that is where the output series and their ids are known).

- One `POST {base}/models` per (project, model, revision), recorded in latigo's database
  (`prediction_metadata`, with a fingerprint of the series sent): every executor and every restart sees it
  was sent. It is sent again when the revision changes (a new key) or the series change (a new
  fingerprint: an output group appears, a series was re-created with a new id).
- It runs on a background thread: a write only hands the model's series over, and never waits for the
  Metadata API. A failed POST is counted (`latigo_prediction_metadata_failures_total`), logged, and tried
  again by the next write of that model after `retry_interval`.
- `GET {base}/projects` (`{"projects": [...]}`) lists the projects Prevent knows: the Gordo provider's
  `discover: metadata_api` (latigo.models.gordo_projects).

The API sits behind Azure API Management: `subscription_key` is sent as Ocp-Apim-Subscription-Key;
Azure AD client credentials are optional (AzureAdSettings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from latigo.errors import ConfigError, PermanentError, describe_exception
from latigo.http import AzureAdSettings, HttpClient, RetryPolicy, describe_response
from latigo.observability import METADATA_FAILURES, METADATA_POSTS
from latigo.secrets import register_secret
from latigo.storage.tables import PredictionMetadataRecord
from latigo.types import ModelInfo, ModelRef, PredictionFrame, WrittenSeries

log = logging.getLogger(__name__)

InputIds = Callable[[ModelInfo, str], Mapping[str, str | None]]
"""(model info, facility) -> the Data API id of each input tag (None: the tag has no series)."""


@dataclass
class MetadataApiSettings(AzureAdSettings):
    """The Metadata API's address and key (AzureAdSettings: optional client credentials)."""

    base_url: str = ""
    """E.g. https://<gateway>/prevent/metadata/v1 (`/models` and `/projects` are added)."""
    subscription_key: str = ""
    """Sent as Ocp-Apim-Subscription-Key (the API sits behind API Management)."""
    timeout: timedelta = timedelta(seconds=30)
    max_retries: int = field(default=3, metadata={"min": 0})
    retry_base_delay: timedelta = timedelta(seconds=1)
    retry_interval: timedelta = timedelta(minutes=5)
    """After a failed POST, how long before a write of that model tries again."""
    status: str = "not_defined"
    """The `status` sent with every model."""
    description: str = "Gordo model {model} of project {project}, revision {revision}: predictions by latigo"
    """The `description` sent with every model; {project}, {model}, {revision} are replaced."""


class MetadataApiClient:
    """The two calls latigo makes: list the projects, post a model's series (answering its `model_id`)."""

    def __init__(self, settings: MetadataApiSettings, owner: str = "prediction_metadata",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not settings.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{owner}: base_url {settings.base_url!r} is not an http(s) URL")
        try:
            settings.description.format(project="", model="", revision="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{owner}: description {settings.description!r} is not a template of {{project}}, "
                              f"{{model}}, {{revision}}: {exc!r}") from None
        self.settings = settings
        self.base = settings.base_url.rstrip("/")
        headers = {"Accept": "application/json"}
        if settings.subscription_key:
            register_secret(settings.subscription_key)
            headers["Ocp-Apim-Subscription-Key"] = settings.subscription_key
        token = settings.token(owner, settings.timeout.total_seconds())
        self.http = HttpClient(owner, timeout=settings.timeout.total_seconds(),
                               retry=RetryPolicy(max_retries=settings.max_retries,
                                                 base_delay=settings.retry_base_delay.total_seconds()),
                               token=token.get if token else None, headers=headers, sleep=sleep)

    def close(self) -> None:
        self.http.close()

    def projects(self) -> list[str]:
        """GET /projects: the project names the Metadata API knows."""
        response = self.http.request("GET", f"{self.base}/projects")
        body = _json(response, "listing projects")
        projects = body.get("projects") if isinstance(body, dict) else None
        if not isinstance(projects, list) or not all(isinstance(p, str) and p for p in projects):
            raise PermanentError(f"metadata_api: GET /projects: expected {{\"projects\": [names]}}, got "
                                 f"{describe_response(response)}")
        return list(dict.fromkeys(projects))

    def post_model(self, payload: Mapping[str, Any]) -> str:
        """POST /models; the API's `model_id` for it."""
        response = self.http.request("POST", f"{self.base}/models", json=dict(payload))
        body = _json(response, "posting a model")
        model_id = body.get("model_id") if isinstance(body, dict) else None
        if model_id in (None, ""):
            raise PermanentError(f"metadata_api: POST /models: the answer has no model_id: "
                                 f"{describe_response(response)}")
        return str(model_id)


def _json(response: Any, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise PermanentError(f"metadata_api: {what}: the answer is not JSON: {describe_response(response)}") from None


@dataclass
class _Pending:
    """What one key (project, model, revision) is to be told: the latest view of its series."""

    frame: PredictionFrame
    info: ModelInfo
    facility: str
    outputs: dict[str, WrittenSeries]
    """Output series by name: every series written for the key by this process."""
    input_ids: InputIds


class MetadataPublisher:
    """`prediction_metadata: {type: metadata_api}`: posts each model revision's series once (see the module
    docstring)."""

    Settings = MetadataApiSettings

    def __init__(self, settings: MetadataApiSettings, engine: Engine, client: MetadataApiClient | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.engine = engine
        self.client = client or MetadataApiClient(settings)
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str, str], frozenset[str]] = {}
        """Key -> the output series (names) the API is known to have been told about."""
        self._outputs: dict[tuple[str, str, str], dict[str, WrittenSeries]] = {}
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self._retry_at: dict[tuple[str, str, str], float] = {}
        self._in_flight: set[tuple[str, str, str]] = set()
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._thread: threading.Thread | None = None
        self.handed_over = 0
        """Jobs queued for the background thread (a write of an already told model queues none)."""
        self.failures: list[str] = []
        """The reasons of the failed attempts (the last 100), for `latigo check-config` and tests."""

    @classmethod
    def from_settings(cls, settings: MetadataApiSettings, components: Any) -> MetadataPublisher:
        return cls(settings, components.engine)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=self.settings.timeout.total_seconds())
            self._thread = None
        self.client.close()

    # -- the sink's side: never blocks

    def publish(self, frame: PredictionFrame, info: ModelInfo, facility: str, written: Sequence[WrittenSeries],
                input_ids: InputIds) -> None:
        """Hand over the series just written for `frame`'s model; the POST (when one is due) happens in the
        background."""
        key = (frame.project, frame.model, frame.revision or info.revision)
        names = frozenset(w.series.name for w in written)
        with self._lock:
            known = self._outputs.setdefault(key, {})
            changed = any(_told(known.get(w.series.name)) != _told(w) for w in written)
            known.update({w.series.name: w for w in written})
            view = _Pending(frame, info, facility, dict(known), input_ids)
            if key in self._pending or key in self._in_flight:
                if changed:  # queued, or sent now: the latest view goes next
                    self._pending[key] = view
                return
            if not changed and names <= self._sent.get(key, frozenset()):
                return
            if self._clock() < self._retry_at.get(key, 0.0):
                return
            self._pending[key] = view
            self._enqueue(key)

    def _enqueue(self, key: tuple[str, str, str]) -> None:
        """Queue `key` for the background thread (the caller holds the lock)."""
        self.handed_over += 1
        self._busy += 1
        self._start()
        self._queue.put(key)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is queued or being sent; False when `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-metadata", daemon=True)
            self._thread.start()

    # -- the background side

    def _run(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            with self._lock:
                job = self._pending.pop(key, None)
                self._in_flight.add(key)
            try:
                if job is not None:
                    self._send(key, job)
            finally:
                with self._idle:
                    self._in_flight.discard(key)
                    if key in self._pending:  # changed while it was being sent
                        self._enqueue(key)
                    self._busy -= 1
                    self._idle.notify_all()

    def _send(self, key: tuple[str, str, str], job: _Pending) -> None:
        ref = ModelRef(key[0], key[1])
        try:
            payload = self.payload(key, job)
            fingerprint = _fingerprint(payload)
            if self._recorded(key) == fingerprint:
                log.debug("prediction metadata of %s revision %s: already sent", ref.label, key[2])
            else:
                model_id = self.client.post_model(payload)
                self._record(key, fingerprint, model_id)
                METADATA_POSTS.inc()
                log.info("prediction metadata of %s revision %s sent to the Metadata API: model_id %s, %d input "
                         "and %d output series", ref.label, key[2], model_id, len(payload["input_tags"]),
                         len(payload["output_tags"]))
        except Exception as exc:  # noqa: BLE001 - whatever failed, the predictions go on; counted and retried
            METADATA_FAILURES.inc()
            reason = f"{ref.label} revision {key[2]}: {describe_exception(exc)}"
            with self._lock:
                self._retry_at[key] = self._clock() + self.settings.retry_interval.total_seconds()
                self.failures = [*self.failures[-99:], reason]
            log.warning("prediction metadata not sent (tried again after %s): %s", self.settings.retry_interval,
                        reason)
            return
        with self._lock:
            self._sent[key] = frozenset(job.outputs)
            self._retry_at.pop(key, None)

    def payload(self, key: tuple[str, str, str], job: _Pending) -> dict[str, Any]:
        """The POST /models body; what the Metadata API needs and is missing is a PermanentError naming it."""
        project, model, revision = key
        info = job.info
        training = {name: _training_time(info, source, model)
                    for name, source in (("training_time_from", "train_start_date"),
                                         ("training_time_to", "train_end_date"))}
        ids = job.input_ids(info, job.facility)
        missing = [tag for tag in info.tags if not ids.get(tag)]
        if missing:
            raise PermanentError(f"input tag(s) {', '.join(missing)} have no series in facility {job.facility!r}")
        outputs = sorted(job.outputs.values(), key=lambda w: w.series.name)
        return {
            "project_name": project,
            "model_name": model,
            "revision": revision,
            **training,
            "input_tags": [{"name": tag, "time_series_id": ids[tag]} for tag in info.tags],
            "output_tags": [{"name": w.series.name, "time_series_id": w.series_id,
                             "type": "derived" if w.series.tag else "aggregated",
                             "description": w.series.description,
                             "derived_from": w.series.tag or None} for w in outputs],
            "description": self.settings.description.format(project=project, model=model, revision=revision),
            "status": self.settings.status,
            "labels": [],
        }

    # -- the record in latigo's database

    def _recorded(self, key: tuple[str, str, str]) -> str | None:
        table = PredictionMetadataRecord
        with self.engine.connect() as connection:
            return connection.execute(sa.select(table.fingerprint).where(
                table.project == key[0], table.model == key[1], table.revision == key[2])).scalar()

    def _record(self, key: tuple[str, str, str], fingerprint: str, model_id: str) -> None:
        table = PredictionMetadataRecord
        values = {"fingerprint": fingerprint, "model_id": model_id, "sent_at": datetime.now(timezone.utc)}
        where = (table.project == key[0], table.model == key[1], table.revision == key[2])
        try:
            with self.engine.begin() as connection:
                if not connection.execute(sa.update(table).where(*where).values(**values)).rowcount:
                    connection.execute(sa.insert(table).values(project=key[0], model=key[1], revision=key[2],
                                                             **values))
        except IntegrityError:  # another executor recorded it meanwhile: the newer view wins
            with self.engine.begin() as connection:
                connection.execute(sa.update(table).where(*where).values(**values))

    def model_id(self, ref: ModelRef, revision: str) -> str | None:
        """The Metadata API's id of `ref` at `revision`, as recorded; None when it was never sent."""
        table = PredictionMetadataRecord
        with self.engine.connect() as connection:
            return connection.execute(sa.select(table.model_id).where(
                table.project == ref.project, table.model == ref.name, table.revision == revision)).scalar()


def _told(written: WrittenSeries | None) -> tuple[str, ...] | None:
    """What the Metadata API is told about an output series (its unit, for one, is not)."""
    if written is None:
        return None
    return (written.series.name, written.series_id, written.series.tag, written.series.description)


def _training_time(info: ModelInfo, source: str, model: str) -> str:
    value = info.extra.get(source)
    if not value:
        raise PermanentError(f"model {model} has no {source} in its metadata (the Metadata API needs its training "
                             "period)")
    return str(value)


def _fingerprint(payload: Mapping[str, Any]) -> str:
    """What, if it changes, the Metadata API must be told again: the series in and out."""
    series = {"input_tags": payload["input_tags"], "output_tags": payload["output_tags"]}
    return hashlib.sha256(json.dumps(series, sort_keys=True).encode()).hexdigest()

