"""Predictions from one Gordo project's models.

The model's tags are fetched from the SensorDataProvider with enough history for the model's offset,
aligned to the model's resolution the way Gordo aligned its training data (mean per bucket, gaps filled up
to the interpolation limit, incomplete rows dropped; latigo.model_input), posted in row batches to the
anomaly endpoint (or `/prediction` for a model that is not an anomaly detector), and trimmed back to the
requested window. A module of its own: the one part of the adapter that reads sensor data and sends it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from urllib.parse import quote

import pandas as pd
import requests

from latigo.errors import ConfigError, PermanentError, UnknownModelError
from latigo.http import NO_RETRY, describe_response
from latigo.interfaces import SensorDataProvider
from latigo.model_input import InputSettings, ModelInput, build_model_input
from latigo.models.gordo_batches import plan_batches
from latigo.models.gordo_client import GordoClient
from latigo.models.gordo_information import GordoInformation
from latigo.models.gordo_wire import json_columns, parquet_bytes, parse_prediction
from latigo.types import ModelInfo, PredictionFrame, TimeRange

log = logging.getLogger("latigo.models.gordo")  # one logger for the adapter and all its parts


class GordoExecution:
    """Runs the models of one Gordo project; see the module docstring."""

    def __init__(
        self,
        client: GordoClient,
        information: GordoInformation,
        sensors: SensorDataProvider | None = None,
        sensor_source: Callable[[], SensorDataProvider] | None = None,
    ) -> None:
        """`sensors`, or `sensor_source` to build it on first use."""
        self.client = client
        self.information = information
        self.settings = client.settings
        self._sensors = sensors
        self._sensor_source = sensor_source
        self._lock = threading.Lock()
        self._plain: set[tuple[str, str]] = set()
        """(model, revision) of the models that are not anomaly detectors: posted to /prediction."""
        client.on_new_revision(self._keep_revision)

    def _keep_revision(self, latest: str) -> None:
        with self._lock:
            self._plain = {key for key in self._plain if key[1] == latest}

    def execute_model(self, name: str, start: datetime, end: datetime) -> PredictionFrame:
        """Outputs for the buckets that complete in [start, end) (latigo.timegrid), computed from the
        rows gordo-client would send for them (latigo.model_input)."""
        window = TimeRange(start, end)
        return self.client.with_revision_retry(lambda: self._execute(name, window))

    def _execute(self, name: str, window: TimeRange) -> PredictionFrame:
        info = self.information.model_info(name)
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
        """One batch: anomaly endpoint first, /prediction from the first 422 on; errors by status."""
        response = self._answer(info, X, y)
        status = response.status_code
        if status == 404:
            self.information.forget(info)
            raise UnknownModelError(f"gordo project {self.settings.project} does not serve model {info.name!r} "
                                    f"(revision {info.revision or 'latest'}): {describe_response(response)}")
        if status in (400, 422):
            raise PermanentError(f"gordo model {info.name!r} refused the input ({status}): "
                                 f"{describe_response(response)}")
        if status == 500:
            raise PermanentError(f"gordo model {info.name!r} failed on this input (500, {len(X)} rows from "
                                 f"{X.index[0].isoformat()}): {describe_response(response)}")
        return parse_prediction(info.name, response)

    def _answer(self, info: ModelInfo, X: pd.DataFrame, y: pd.DataFrame) -> requests.Response:
        """The server's answer to the batch; a model that is not an anomaly detector is remembered as such."""
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
        return response

    def _send(self, info: ModelInfo, endpoint: str, X: pd.DataFrame, y: pd.DataFrame | None) -> requests.Response:
        path = f"{quote(info.name, safe='')}/{endpoint}"
        accept = {400, 404, 422, 500}
        if self.settings.use_parquet:
            files = {"X": ("X", parquet_bytes(X), "application/octet-stream")}
            if y is not None:
                files["y"] = ("y", parquet_bytes(y), "application/octet-stream")
            return self.client.request("POST", path, info.revision, accept=accept, retry=NO_RETRY,
                                       params={"format": "parquet"}, files=files)
        body = {"X": json_columns(X)}
        if y is not None:
            body["y"] = json_columns(y)
        return self.client.request("POST", path, info.revision, accept=accept, retry=NO_RETRY,
                                   data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def _min_rows(info: ModelInfo) -> int:
    """Rows one request needs: a windowed model (offset > 0) needs more rows than its look-back window
    (offset + 1), or Gordo answers 500."""
    return info.model_offset + 2 if info.model_offset else 1
