"""Gordo: latigo's production model server — model listing, metadata, predictions and registration.

One Gordo server serves one project under `/gordo/v0/<project>/`, in numbered revisions
(one per build of the project). Every request here names the revision it means, so a
listing, its metadata and the predictions made from it agree even while a new build
is being rolled out; a 410 (revision removed) refreshes the revision and retries once.

Predictions: the model's tags are fetched from the SensorDataProvider with enough
history for the model's offset, aligned to the model's resolution the way Gordo
aligned its training data (mean per bucket, gaps filled up to the interpolation
limit, incomplete rows dropped), posted in row batches to the anomaly endpoint (or
`/prediction` for a model that is not an anomaly detector), and trimmed back to the
requested window.

Registration edits the machines of the project's `Gordo` custom resource through the
Kubernetes API; Gordo's controller builds them into `Model` resources.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import pandas as pd
import requests

from latigo.errors import (
    ConfigError,
    LatigoError,
    PermanentError,
    TransientError,
    UnknownModelError,
)
from latigo.http import NO_RETRY, ClientCredentialsToken, HttpClient, RetryPolicy, describe_response
from latigo.interfaces import SensorDataProvider
from latigo.model_input import InputSettings, ModelInput, build_model_input
from latigo.models.gordo_batches import plan_batches
from latigo.models.gordo_kubernetes import (
    SERVICE_ACCOUNT_DIR,
    GordoKubernetes,
    check_machine_name,
    resolve_kubernetes,
    validate_machine,
)
from latigo.models.gordo_settings import DEFAULT_MODEL_SLOTS, GordoSettings, with_pool_for
from latigo.models.gordo_wire import (
    json_columns,
    parquet_bytes,
    parse_model_info,
    parse_prediction,
)
from latigo.peers import PEERS
from latigo.types import ModelInfo, ModelStatus, PredictionFrame, TimeRange

log = logging.getLogger(__name__)

T = TypeVar("T")



# ---------------------------------------------------------------- the provider


class RevisionGone(TransientError):
    """The server answered 410: the revision asked for is no longer served."""


class GordoModels:
    """The client of one Gordo project (models by name); see the module docstring. latigo's `gordo`
    provider (latigo.models.gordo_projects.GordoProjects) keeps one per project."""

    Settings = GordoSettings

    def __init__(
        self,
        settings: GordoSettings,
        sensors: SensorDataProvider | None = None,
        kubernetes_environ: Mapping[str, str] | None = None,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        sensor_source: Callable[[], SensorDataProvider] | None = None,
    ) -> None:
        """`sensors`, or `sensor_source` to build it on first use (listing models needs no sensor source)."""
        if not settings.base_url or not settings.project:
            raise ConfigError("gordo: base_url and project are required")
        self.settings = settings
        self.base = f"{settings.base_url.rstrip('/')}/gordo/v0/{quote(settings.project, safe='')}"
        self._sensors = sensors
        self._sensor_source = sensor_source
        retry = RetryPolicy(
            max_retries=settings.max_retries,
            base_delay=settings.retry_base_delay.total_seconds(),
            max_delay=settings.retry_max_delay.total_seconds(),
        )
        self.token = _make_token(settings)
        self.http = HttpClient(
            "gordo", timeout=settings.timeout.total_seconds(), retry=retry,
            token=self.token.get if self.token else None,
            pool_size=settings.pool_size or DEFAULT_MODEL_SLOTS + settings.parallelism,
            peer=PEERS.breaker(f"gordo {settings.project} at {urlsplit(settings.base_url).netloc}"),
            connect_timeout=settings.connect_timeout.total_seconds(),
        )
        target = resolve_kubernetes(settings, os.environ if kubernetes_environ is None else kubernetes_environ,
                                    service_account_dir)
        self.kubernetes = GordoKubernetes(target, settings.project, settings.timeout, retry) if target else None
        self._lock = threading.Lock()
        self._revision_fetch = threading.Lock()
        self._info_fetch: dict[tuple[str, str], threading.Lock] = {}
        self._revision: str | None = None
        self._revision_at = 0.0
        self._infos: dict[tuple[str, str], ModelInfo] = {}
        self._plain: set[tuple[str, str]] = set()

    @classmethod
    def from_settings(cls, settings: GordoSettings, components: Any) -> GordoModels:
        # The sensor provider is built on first use: listing models needs no sensor source.
        return cls(with_pool_for(settings, components), sensor_source=lambda: components.sensor_data)

    def check_report(self) -> str:
        """`latigo models --check`: see check_models."""
        return format_check_report(check_models(self))

    def close(self) -> None:
        self.http.close()
        if self.kubernetes:
            self.kubernetes.http.close()

    # ------------------------------------------------ revisions

    def revision(self, refresh: bool = False) -> str:
        """The revision requests are pinned to: the configured pin, else the server's latest
        (re-read every `revision_refresh`, or at once when `refresh`)."""
        if self.settings.revision:
            return self.settings.revision
        ttl = self.settings.revision_refresh.total_seconds()
        asked_at = time.monotonic()
        with self._lock:
            if self._revision is not None and not refresh and asked_at - self._revision_at < ttl:
                return self._revision
        with self._revision_fetch:  # one request for all the workers that found it stale together
            with self._lock:
                if self._revision is not None and self._revision_at >= asked_at:
                    return self._revision
            latest = self._latest_revision()
            self._store_revision(latest)
        return latest

    def _store_revision(self, latest: str) -> None:
        with self._lock:
            if latest != self._revision:
                if self._revision is not None:
                    log.info("gordo project %s: revision %s -> %s", self.settings.project, self._revision, latest)
                self._infos = {key: info for key, info in self._infos.items() if key[1] == latest}
                self._plain = {key for key in self._plain if key[1] == latest}
            self._revision, self._revision_at = latest, time.monotonic()

    def _latest_revision(self) -> str:
        response = self.http.request("GET", f"{self.base}/revisions", accept={404})
        if response.status_code == 404:  # a server without revisions: ask without naming one
            return ""
        body = self._json(response, "revisions")
        return str(body.get("latest") or "")

    def _with_revision_retry(self, action: Callable[[], T]) -> T:
        """Run `action`; on a 410 refresh the revision and run it once more."""
        try:
            return action()
        except RevisionGone as gone:
            if self.settings.revision:
                raise PermanentError(f"gordo project {self.settings.project}: the pinned revision "
                                     f"{self.settings.revision} is not served any more ({gone})") from None
            log.warning("%s; refreshing the revision and retrying", gone)
            self.revision(refresh=True)
        try:
            return action()
        except RevisionGone as gone:
            raise TransientError(f"{gone} (again, right after refreshing the revision)") from None

    # ------------------------------------------------ HTTP

    def _request(self, method: str, path: str, revision: str, accept: set[int] | None = None,
                 params: dict[str, str] | None = None, retry: RetryPolicy | None = None,
                 **kwargs: Any) -> requests.Response:
        query = dict(params or {})
        if revision:
            query["revision"] = revision
        response = self.http.request(method, f"{self.base}/{path}", accept={410, *(accept or ())},
                                     params=query, retry=retry, **kwargs)
        if response.status_code == 410:
            raise RevisionGone(f"gordo project {self.settings.project}: revision {revision} is gone: "
                               f"{describe_response(response)}")
        return response

    def _json(self, response: requests.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise TransientError(f"gordo {what}: answer is not JSON: {describe_response(response)}") from None
        if not isinstance(body, dict):
            raise PermanentError(f"gordo {what}: expected a JSON object, got {type(body).__name__}")
        return body

    # ------------------------------------------------ ModelInformationProvider

    def get_model_list(self) -> list[str]:
        """Models the server lists and can describe; a model without metadata is skipped with a
        warning, never failing the listing. Refreshes the revision first."""
        if not self.settings.revision:
            self.revision(refresh=True)
        return self._with_revision_retry(self._model_list)

    def _model_list(self) -> list[str]:
        names = self.served_models()
        infos, missing, errors = self.survey(names)
        for name in missing:
            log.warning("gordo project %s lists model %s but has no metadata for it; skipped",
                        self.settings.project, name)
        for name, error in errors.items():
            log.warning("gordo model %s skipped: %s", name, error)
        if names and not infos and errors and all(isinstance(e, TransientError) for e in errors.values()):
            raise TransientError(f"gordo project {self.settings.project}: metadata of every model failed, "
                                 f"e.g. {next(iter(errors.values()))}")
        return [name for name in names if name in infos]

    def served_models(self) -> list[str]:
        """Names in GET /models (a directory listing: some may lack metadata)."""
        response = self._request("GET", "models", self.revision())
        models = self._json(response, "models").get("models")
        if not isinstance(models, list):
            raise PermanentError("gordo models: answer has no 'models' list")
        return [str(name) for name in models]

    def expected_models(self) -> list[str] | None:
        """GET /expected-models: what the project should serve; None when the server does not say."""
        response = self._request("GET", "expected-models", self.revision(), accept={404})
        if response.status_code == 404:
            return None
        expected = self._json(response, "expected-models").get("expected-models")
        # An empty list is what a server without EXPECTED_MODELS answers: it does not say.
        return [str(name) for name in expected] if isinstance(expected, list) and expected else None

    def survey(self, names: Sequence[str]) -> tuple[dict[str, ModelInfo], list[str], dict[str, LatigoError]]:
        """Metadata of `names`, concurrently: (infos, names without metadata, other failures)."""
        infos: dict[str, ModelInfo] = {}
        missing: list[str] = []
        errors: dict[str, LatigoError] = {}

        def one(name: str) -> ModelInfo | LatigoError:
            try:
                return self._model_info(name)
            except RevisionGone:
                raise
            except LatigoError as exc:
                return exc

        if not names:
            return infos, missing, errors
        with ThreadPoolExecutor(max_workers=min(self.settings.parallelism, len(names))) as pool:
            for name, result in zip(names, pool.map(one, names), strict=True):
                if isinstance(result, ModelInfo):
                    infos[name] = result
                elif isinstance(result, UnknownModelError):
                    missing.append(name)
                else:
                    errors[name] = result
        return infos, missing, errors

    def model_exists(self, name: str) -> bool:
        try:
            self.get_model_info(name)
        except UnknownModelError:
            return False
        return True

    def get_model_info(self, name: str) -> ModelInfo:
        return self._with_revision_retry(lambda: self._model_info(name))

    def _model_info(self, name: str) -> ModelInfo:
        revision = self.revision()
        key = (name, revision)
        with self._lock:
            cached = self._infos.get(key)
            fetching = self._info_fetch.setdefault(key, threading.Lock())
        if cached is not None:
            return cached
        with fetching:  # workers asking for the same model at once share one metadata request
            with self._lock:
                cached = self._infos.get(key)
            if cached is not None:
                return cached
            try:
                info = parse_model_info(name, self.settings.project, revision, self._metadata(name, revision))
                with self._lock:
                    self._infos[key] = info
            finally:
                with self._lock:
                    self._info_fetch.pop(key, None)
        return info

    def _metadata(self, name: str, revision: str) -> dict[str, Any]:
        response = self._request("GET", f"{quote(name, safe='')}/metadata", revision, accept={404})
        if response.status_code == 404:
            raise UnknownModelError(f"gordo project {self.settings.project} has no model {name!r} "
                                    f"(revision {revision or 'latest'}): {describe_response(response)}")
        return self._json(response, f"metadata of {name!r}")

    # ------------------------------------------------ ModelExecutionProvider: predictions

    def execute_model(self, name: str, start: datetime, end: datetime) -> PredictionFrame:
        """Outputs for the buckets that complete in [start, end) (latigo.timegrid), computed from the
        rows gordo-client would send for them (latigo.model_input)."""
        window = TimeRange(start, end)
        return self._with_revision_retry(lambda: self._execute(name, window))

    def _execute(self, name: str, window: TimeRange) -> PredictionFrame:
        info = self._model_info(name)
        model_input = self.model_input(info, window)
        project, revision = self.settings.project, info.revision
        if model_input.empty or model_input.span is None:
            return PredictionFrame(name, note=model_input.note, project=project, revision=revision)
        frame = self._predict(info, model_input)
        return replace(frame.within(model_input.span), project=project, revision=revision)

    def _sensor_provider(self) -> SensorDataProvider:
        if self._sensors is None and self._sensor_source is not None:
            self._sensors = self._sensor_source()
        if self._sensors is None:
            raise ConfigError("gordo: executing models needs a sensor_data provider")
        return self._sensors

    def model_input(self, info: ModelInfo, window: TimeRange) -> ModelInput:
        """X and y for the buckets completing in `window`, as Gordo's dataset would build them."""
        settings = InputSettings(history_margin=self.settings.history_margin, max_history=self.settings.max_history,
                                 look_ahead=self.settings.look_ahead)
        return build_model_input(info, window, self._sensor_provider(), settings)

    def _predict(self, info: ModelInfo, model_input: ModelInput) -> PredictionFrame:
        """Post in batches that each hold enough rows for the model (see plan_batches); outputs of a row
        computed twice (overlapping batches) are the same, the first is kept."""
        X, y = model_input.X, model_input.y
        first_wanted = len(X) - model_input.rows_in_span
        rows: dict[tuple[str, str, datetime], float] = {}
        for batch in plan_batches(len(X), first_wanted, info.model_offset, self.settings.batch_size,
                                  min_rows=_min_rows(info)):
            part = slice(batch.start, batch.stop)
            for row in self._post(info, X.iloc[part], y.iloc[part]).rows:
                rows.setdefault((row.output, row.tag, row.ts), row.value)
        return PredictionFrame.from_rows(info.name, rows)

    def _post(self, info: ModelInfo, X: pd.DataFrame, y: pd.DataFrame) -> PredictionFrame:
        key = (info.name, info.revision)
        with self._lock:
            plain = key in self._plain
        response = self._send(info, "prediction" if plain else "anomaly/prediction", X, None if plain else y)
        if response.status_code == 422 and not plain:
            log.warning("gordo model %s is not an anomaly detector (%s); using /prediction for it",
                        info.name, describe_response(response))
            with self._lock:
                self._plain.add(key)
            response = self._send(info, "prediction", X, None)
        status = response.status_code
        if status == 404:
            with self._lock:
                self._infos.pop(key, None)
            raise UnknownModelError(f"gordo project {self.settings.project} does not serve model {info.name!r} "
                                    f"(revision {info.revision or 'latest'}): {describe_response(response)}")
        if status in (400, 422):
            raise PermanentError(f"gordo model {info.name!r} refused the input ({status}): "
                                 f"{describe_response(response)}")
        if status == 500:
            raise PermanentError(f"gordo model {info.name!r} failed on this input (500, {len(X)} rows from "
                                 f"{X.index[0].isoformat()}): {describe_response(response)}")
        return parse_prediction(info.name, response)

    def _send(self, info: ModelInfo, endpoint: str, X: pd.DataFrame, y: pd.DataFrame | None) -> requests.Response:
        path = f"{quote(info.name, safe='')}/{endpoint}"
        accept = {400, 404, 422, 500}
        if self.settings.use_parquet:
            files = {"X": ("X", parquet_bytes(X), "application/octet-stream")}
            if y is not None:
                files["y"] = ("y", parquet_bytes(y), "application/octet-stream")
            return self._request("POST", path, info.revision, accept=accept, retry=NO_RETRY,
                                 params={"format": "parquet"}, files=files)
        body = {"X": json_columns(X)}
        if y is not None:
            body["y"] = json_columns(y)
        return self._request("POST", path, info.revision, accept=accept, retry=NO_RETRY,
                             data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})

    # ------------------------------------------------ ModelExecutionProvider: lifecycle

    def get_model_status(self, name: str) -> ModelStatus:
        """Served by Gordo = ready; otherwise the phase of its Kubernetes `Model` resource says why."""
        details: dict[str, Any] = {}
        served = None
        try:
            served = self.get_model_info(name)
        except UnknownModelError:
            pass
        except LatigoError as exc:
            details["gordo_error"] = str(exc)
        if served is not None:
            details.update(revision=served.revision, build_date=served.extra.get("model_creation_date"),
                           tags=list(served.tags), target_tags=list(served.target_tags))
        phase, in_resource = None, False
        if self.kubernetes is not None:
            try:
                phase = self.kubernetes.model_phase(name)
                if phase is None and served is None:
                    in_resource = self.kubernetes.has_machine(name)
            except LatigoError as exc:
                details["kubernetes_error"] = str(exc)
        if phase:
            details["phase"] = phase
        state, reason = _status_of(served is not None, phase, in_resource, self.settings.project, details)
        return ModelStatus(name=name, state=state, reason=reason, details=details)

    def register_model(self, model_data: Mapping[str, Any]) -> None:
        """Add (or replace) the machine in the project's Gordo resource; Gordo then builds it."""
        machine = validate_machine(model_data)

        def change(machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
            if not any(m.get("name") == machine["name"] for m in machines):
                return [*machines, machine]
            return [machine if m.get("name") == machine["name"] else m for m in machines]

        self._require_kubernetes("register").update_machines(change, create_with=machine,
                                                             deploy_version=self.settings.deploy_version)
        log.info("gordo project %s: machine %s registered", self.settings.project, machine["name"])

    def unregister_model(self, name: str) -> None:
        """Remove the machine from the project's Gordo resource."""
        check_machine_name(name)

        def change(machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
            kept = [m for m in machines if m.get("name") != name]
            if len(kept) == len(machines):
                raise UnknownModelError(f"gordo project {self.settings.project} has no machine {name!r} "
                                        "in its Gordo resource")
            return kept

        self._require_kubernetes("unregister").update_machines(change)
        log.info("gordo project %s: machine %s unregistered", self.settings.project, name)

    def _require_kubernetes(self, action: str) -> GordoKubernetes:
        if self.kubernetes is None:
            raise PermanentError(f"gordo: cannot {action} models without Kubernetes (set kubernetes_api_url, "
                                 "or run in a cluster with a service account)")
        return self.kubernetes


def _status_of(
    served: bool, phase: str | None, in_resource: bool, project: str, details: Mapping[str, Any]
) -> tuple[str, str]:
    if served:
        return "ready", ""
    if phase == "InProgress":
        return "training", "the Model resource is being built (phase InProgress)"
    if phase == "Failed":
        return "failed", "the Model resource failed to build (phase Failed)"
    if phase == "Succeeded":
        return "training", f"built (phase Succeeded) but not served yet by gordo project {project}"
    if phase is not None:
        return "registered", f"the Model resource is not built yet (phase {phase})"
    if in_resource:
        return "registered", f"in the Gordo resource of project {project}, no Model resource yet"
    if "gordo_error" in details:
        return "unknown", f"gordo project {project} could not be asked: {details['gordo_error']}"
    return "unknown", f"not served by gordo project {project}"


def _min_rows(info: ModelInfo) -> int:
    """Rows one request needs: a windowed model (offset > 0) needs more rows than its look-back window
    (offset + 1), or Gordo answers 500."""
    return info.model_offset + 2 if info.model_offset else 1


def _make_token(settings: GordoSettings) -> ClientCredentialsToken | None:
    return settings.token("gordo", settings.timeout.total_seconds())


# ---------------------------------------------------------------- `latigo models --check`


def check_models(provider: GordoModels) -> dict[str, Any]:
    """What the server lists, which listed models lack metadata, which expected models are not built."""
    revision = provider.revision(refresh=not provider.settings.revision)
    listed = provider.served_models()
    infos, missing, errors = provider.survey(listed)
    expected = provider.expected_models()
    ready = [name for name in listed if name in infos]
    not_built = [name for name in expected if name not in infos] if expected is not None else []
    unexpected = [name for name in listed if name not in expected] if expected is not None else []
    return {
        "project": provider.settings.project,
        "base_url": provider.settings.base_url,
        "revision": revision,
        "listed": listed,
        "ready": ready,
        "without_metadata": missing,
        "errors": {name: str(error) for name, error in errors.items()},
        "expected": expected,
        "not_built": not_built,
        "unexpected": unexpected,
        "ok": not missing and not errors and not not_built,
    }


def format_check_report(report: Mapping[str, Any]) -> str:
    """The check as a few lines of text for a terminal."""
    expected = report["expected"]
    lines = [
        f"gordo project {report['project']} at {report['base_url']} (revision {report['revision'] or '?'})",
        f"  listed: {len(report['listed'])}  ready: {len(report['ready'])}  "
        f"without metadata: {len(report['without_metadata'])}  errors: {len(report['errors'])}  "
        f"expected: {'?' if expected is None else len(expected)}  not built: {len(report['not_built'])}",
    ]
    if report["without_metadata"]:
        lines.append(f"  listed without metadata: {', '.join(report['without_metadata'])}")
    for name, error in report["errors"].items():
        lines.append(f"  error {name}: {error}")
    if report["not_built"]:
        lines.append(f"  expected but not built: {', '.join(report['not_built'])}")
    if report["unexpected"]:
        lines.append(f"  served but not expected: {', '.join(report['unexpected'])}")
    if expected is None:
        lines.append("  the server does not list expected models (no /expected-models)")
    lines.append("OK" if report["ok"] else "PROBLEMS FOUND")
    return "\n".join(lines) + "\n"
