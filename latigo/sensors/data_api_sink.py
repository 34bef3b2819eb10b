"""Predictions written to the Time Series API (the "Data API"), where the plant's people look at them.

One series per (model, output group, tag), named by the `naming` preset (latigo.sensors.series_naming):
`latigo`, `{name_prefix}.{model}.{output}.{tag}`, in the configured `facility`; or `prevent`, production
latigo's `{tag}|{model}|{output}` (`{asset}.INDICATOR|{model}|{output}` for an output without a tag), in
the facility of the series of the model's first input tag (as the Data API's metadata of that tag says).
A created series has `externalId` = its name, `step`, a description from the preset (or `description`)
and a unit: under `prevent`, the unit of the tag's own series for model-output and model-input (values in
the tag's units), else `unit`.

A series is created on first use (POST {base}: 201 with its id; 409 when it exists, then it is
looked up by name within its facility, exact name only) and its id cached for the life of the
process. Creations are serialised per name, so concurrent writers of the same model create each
series once. Datapoints go out with POST {base}/data, at most 100 series and `batch_points` points a
request, status 192 (Good), times RFC 3339 with milliseconds and a Z, NaN never sent. The API keeps one
point per series and instant, so a redelivered task rewrites its points and never duplicates them.

After a write the model's series are handed to the prediction metadata publisher, when one is configured
(latigo.prediction_metadata): it tells the Metadata API which series belong to which model, in the
background, never holding the write.

The connection — Azure AD client credentials, subscription key, timeout, retries of 408/425/429/5xx
with Retry-After, one token refresh on 401 — is the Data API sensor provider's, with the same
settings (its `page_limit` is not used here).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests

from latigo.errors import ConfigError, PermanentError, TransientError
from latigo.http import describe_response
from latigo.interfaces import PredictionSink
from latigo.peers import PeerDown
from latigo.sensors.data_api import LOOKUP_CONCURRENCY, MAX_IDS_PER_REQUEST, DataApiSensors, rfc3339
from latigo.sensors.series_naming import PRESETS, SeriesNaming, asset_of, latigo_name, tagless
from latigo.types import DEFAULT_PROJECT, ModelInfo, ModelRef, PlannedSeries, PredictionFrame, WrittenSeries

if TYPE_CHECKING:
    from latigo.prediction_metadata import MetadataPublisher

log = logging.getLogger(__name__)

STATUS_GOOD = 192
NAME_LOCKS = 256
"""Creations are serialised per name through this many striped locks (a lock per name would grow
without bound)."""
UNIT_OUTPUTS = frozenset({"model-output", "model-input"})
"""Output groups whose values are in their tag's units (the others are scores)."""

_Key = tuple[str, str]
"""(output, tag) of one series of a frame's model."""


def series_name(prefix: str, model: str, output: str, tag: str) -> str:
    """The `latigo` preset's name of (model, output, tag) (kept for callers of the original convention)."""
    return latigo_name(prefix, model, output, tag)


class DataApiPredictionSink(PredictionSink):
    """Predictions as Time Series API series, one per (model, output group, tag); see the module docstring."""

    @dataclass
    class Settings(DataApiSensors.Settings):
        naming: str = field(default="latigo", metadata={"choices": PRESETS})
        """How series are named: `latigo` or `prevent` (latigo.sensors.series_naming). Changing it starts new
        series under the new names; the old ones keep their history and are never rewritten."""
        name_prefix: str = "latigo"
        """`latigo` naming: the first part of every series name; empty: none."""
        description: str = ""
        """Description of a created series; {model}, {output}, {tag} and {name} are replaced. Empty: the
        naming preset's ("Gordo {output} - {tag}" under `prevent`)."""
        unit: str = ""
        """Unit of a created series (under `prevent`, of the scores only: model-output takes its tag's unit)."""
        step: bool = True
        """The series' `step` flag: a value holds until the next point (a prediction is its bucket's value)."""
        batch_points: int = field(default=10_000, metadata={"min": 1})
        """Datapoints per write request (besides the API's 100 series a request)."""

    def __init__(self, settings: DataApiPredictionSink.Settings, sleep: Callable[[float], None] = time.sleep,
                 model_info: Callable[[ModelRef], ModelInfo] | None = None,
                 metadata: MetadataPublisher | None = None) -> None:
        self.naming = SeriesNaming(settings.naming, settings.name_prefix)
        self.description = settings.description or self.naming.description
        try:
            self.description.format(model="", output="", tag="", name="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"data_api sink: description {self.description!r} is not a template of "
                              f"{{model}}, {{output}}, {{tag}}, {{name}}: {exc!r}") from None
        if settings.naming == "latigo" and not settings.facility.strip():
            raise ConfigError("data_api sink: facility is required with naming: latigo (the Time Series API "
                              "creates no series without one)")
        if settings.naming == "prevent" and model_info is None:
            raise ConfigError("data_api sink: naming: prevent needs the model provider (for the model's input "
                              "tags, whose series give the facility)")
        self.settings = settings
        self.model_info = model_info
        self.metadata = metadata
        self.api = DataApiSensors(settings, sleep=sleep)
        """The connection (token, subscription key, retries) and the lookup of series by name."""
        self.http, self.base = self.api.http, self.api.base
        self._ids: dict[tuple[str, str], str] = {}
        """(facility, name) -> id."""
        self._lock = threading.Lock()
        self._name_locks = [threading.Lock() for _ in range(NAME_LOCKS)]

    @classmethod
    def from_settings(cls, settings: DataApiPredictionSink.Settings, components: Any) -> DataApiPredictionSink:
        return cls(settings, model_info=lambda ref: components.model_information.get_model_info(ref),
                   metadata=components.prediction_metadata)

    def close(self) -> None:
        if self.metadata is not None:
            self.metadata.close()  # what was handed over is sent first (its thread stops after the queue)
        self.api.close()

    # -- PredictionSink

    def write(self, frame: PredictionFrame) -> int:
        info = self._info(frame)
        series, skipped = self._points(frame)
        facility, asset = self._placement(frame, info)
        plans = {key: self._plan(frame.model, *key, facility, asset, frame.project) for key in series}
        unnamed = [key for key, plan in plans.items() if plan is None]
        for key in unnamed:
            skipped += len(series.pop(key))
        if skipped:
            log.warning("data_api sink: %d of %d rows of model %r are not written: a '.' in the model or output "
                        "name (naming latigo), or a value that is not finite", skipped, len(frame.rows),
                        frame.model)
        if not series:
            return 0
        named = {key: plan for key, plan in plans.items() if plan is not None}
        ids = self._ensure(list(named.values()))
        items = [(plan.name, ids[(plan.facility, plan.name)], series[key]) for key, plan in named.items()]
        for batch in self._batches(items):
            self._post(batch)
        if self.metadata is not None and info is not None:
            written = tuple(WrittenSeries(plan, ids[(plan.facility, plan.name)]) for plan in named.values())
            self.metadata.publish(frame, info, facility, written, self._input_ids)
        return sum(len(points) for points in series.values())

    def _info(self, frame: PredictionFrame) -> ModelInfo | None:
        """The model's information (input tags, asset, training period) where naming or metadata need it."""
        if self.model_info is None or (self.settings.naming == "latigo" and self.metadata is None):
            return None
        try:
            return self.model_info(frame.ref)
        except PeerDown:
            raise  # Gordo is down: not this write's failure
        except (TransientError, PermanentError) as exc:
            raise type(exc)(f"data_api sink: model {frame.ref.label}: {exc}") from None

    def _placement(self, frame: PredictionFrame, info: ModelInfo | None) -> tuple[str, str]:
        """(facility, asset) of the model's series: the configured facility under `latigo` naming; under
        `prevent`, the facility of the first input tag's series and the model's asset."""
        if self.settings.naming == "latigo" or info is None:
            return self.settings.facility, ""
        if not info.tags:
            raise PermanentError(f"data_api sink: model {frame.ref.label} has no input tags to take the facility "
                                 "from")
        first = info.tags[0]
        metadata = self.api.series_metadata(first, self.settings.facility)
        if metadata is None or not metadata.get("facility"):
            where = f"in facility {self.settings.facility!r}" if self.settings.facility else "in any facility"
            raise PermanentError(f"data_api sink: model {frame.ref.label}: its first input tag {first!r} has no "
                                 f"series {where} to take the facility from")
        asset = str(info.extra.get("asset") or "") or asset_of(info.tags)
        return str(metadata["facility"]), asset

    def _plan(self, model: str, output: str, tag: str, facility: str, asset: str,
              project: str = DEFAULT_PROJECT) -> PlannedSeries | None:
        name = self.naming.name(model, output, tag, asset, project)
        if name is None:
            return None
        derived = "" if tagless(output, tag) else tag
        shown = derived if derived or self.settings.naming == "latigo" else name.split("|", 1)[0]
        unit = self.settings.unit
        with self._lock:
            known = (facility, name) in self._ids
        if not known and self.settings.naming == "prevent" and derived and output in UNIT_OUTPUTS:
            # only what a creation needs: a tag without a series of its own is not asked for at every write
            metadata = self.api.series_metadata(derived, facility)
            unit = str(metadata.get("unit") or "") if metadata is not None else unit
        description = self.description.format(model=model, output=output, tag=shown, name=name)
        return PlannedSeries(name, facility, output, derived, description, unit)

    def _input_ids(self, info: ModelInfo, facility: str) -> dict[str, str | None]:
        """The Data API id of each of the model's input tags (None for a tag without a series)."""
        return {tag: self.api.series_id(tag, facility) for tag in info.tags}

    # -- rows to datapoints

    def _points(self, frame: PredictionFrame) -> tuple[dict[_Key, list[dict[str, Any]]], int]:
        """Datapoints per (output, tag) in time order, one per instant (of two rows in the same millisecond
        the later row wins); and how many rows are not finite."""
        by_key: dict[_Key, dict[str, float]] = {}
        skipped = 0
        times: dict[Any, str] = {}  # the series of a frame share their timestamps
        for row in frame.rows:
            value = float(row.value)
            if not math.isfinite(value):
                skipped += 1
                continue
            text = times.get(row.ts)
            if text is None:
                text = times[row.ts] = rfc3339(row.ts)
            by_key.setdefault((row.output, row.tag), {})[text] = value
        series = {key: [{"time": text, "value": value, "status": STATUS_GOOD}
                        for text, value in sorted(points.items())]  # the fixed-width UTC form sorts as time
                  for key, points in by_key.items()}
        return series, skipped

    def _batches(self, items: Sequence[tuple[str, str, list[dict[str, Any]]]]
                 ) -> list[list[tuple[str, str, list[dict[str, Any]]]]]:
        """Requests of at most 100 series and `batch_points` points; a series with more points than
        a request holds is split over several requests."""
        limit = self.settings.batch_points
        batches: list[list[tuple[str, str, list[dict[str, Any]]]]] = []
        current: list[tuple[str, str, list[dict[str, Any]]]] = []
        room = limit
        for name, series_id, points in items:
            offset = 0
            while offset < len(points):
                if len(current) == MAX_IDS_PER_REQUEST or room == 0:
                    batches.append(current)
                    current, room = [], limit
                part = points[offset : offset + room]
                current.append((name, series_id, part))
                offset += len(part)
                room -= len(part)
        if current:
            batches.append(current)
        return batches

    def _post(self, batch: Sequence[tuple[str, str, list[dict[str, Any]]]]) -> None:
        body = {"items": [{"id": series_id, "datapoints": points} for _, series_id, points in batch]}
        what = f"writing {sum(len(p) for _, _, p in batch)} points to {_names(batch)}"
        try:
            response = self.http.request("POST", f"{self.base}/data", json=body, accept=(404,))
        except PeerDown:
            raise  # the API is down: not this write's failure
        except (TransientError, PermanentError) as exc:
            raise type(exc)(f"data_api sink: {what}: {exc}") from None
        if response.status_code == 404:  # a series deleted since its id was cached: create it again next time
            self.forget([name for name, _, _ in batch])
            raise TransientError(f"data_api sink: {what}: a series is unknown to the API "
                                 f"({describe_response(response)}); their ids are forgotten and the series will "
                                 "be created again on the next write")

    # -- names to ids

    def _ensure(self, plans: list[PlannedSeries]) -> dict[tuple[str, str], str]:
        """The id of every planned series, creating those not yet known (concurrently, a few at a time)."""
        with self._lock:
            unknown = [plan for plan in plans if (plan.facility, plan.name) not in self._ids]
        if len(unknown) > 1:
            with ThreadPoolExecutor(min(LOOKUP_CONCURRENCY, len(unknown)), "data-api-sink-create") as pool:
                list(pool.map(self.series_id, unknown))
        elif unknown:
            self.series_id(unknown[0])
        with self._lock:
            return {(plan.facility, plan.name): self._ids[(plan.facility, plan.name)] for plan in plans}

    def series_id(self, plan: PlannedSeries) -> str:
        """The id of the planned series, created when the API does not have it yet."""
        key = (plan.facility, plan.name)
        with self._lock:
            known = self._ids.get(key)
        if known is not None:
            return known
        with self._name_locks[hash(key) % NAME_LOCKS]:  # one creation per name at a time
            with self._lock:
                known = self._ids.get(key)
            if known is None:
                known = self._create(plan)
                with self._lock:
                    self._ids[key] = known
        return known

    def _create(self, plan: PlannedSeries) -> str:
        body: dict[str, Any] = {"name": plan.name, "description": plan.description, "step": self.settings.step,
                                "unit": plan.unit, "facility": plan.facility, "externalId": plan.name}
        try:
            response = self.http.request("POST", self.base, json=body, accept=(409,))
            if response.status_code != 409:
                created = _created_id(response, plan.name)
                if created is not None:
                    log.info("data_api sink: created series %r in facility %s (id %s)", plan.name, plan.facility,
                             created)
                    return created
            found = self.api.series_id(plan.name, plan.facility)
        except PeerDown:
            raise  # the API is down: not this write's failure
        except (TransientError, PermanentError) as exc:
            raise type(exc)(f"data_api sink: creating series {plan.name!r}: {exc}") from None
        if found is None:
            raise PermanentError(f"data_api sink: series {plan.name!r}: the API says it exists (409) but finds none "
                                 f"in facility {plan.facility!r}")
        return found

    def forget(self, names: Sequence[str]) -> None:
        with self._lock:
            keys = [key for key in self._ids if key[1] in names]
            ids = [self._ids.pop(key) for key in keys]
        self.api.forget(ids)  # its lookup cache too, or a 409 would bring the dead id back


def _created_id(response: requests.Response, name: str) -> str | None:
    """The id in a creation's answer ({"data": {"items": [{id, ...}]}}, or the series itself); None when
    the answer does not carry one (the series is then looked up by name)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    items = data.get("items") if isinstance(data, dict) else None
    for item in items if isinstance(items, list) else [body]:
        if isinstance(item, dict) and item.get("id") and item.get("name", name) == name:
            return str(item["id"])
    return None


def _names(batch: Sequence[tuple[str, str, list[dict[str, Any]]]]) -> str:
    """The series of a request in one short phrase: the first name and how many others."""
    names = list(dict.fromkeys(name for name, _, _ in batch))
    others = f" and {len(names) - 1} other series" if len(names) > 1 else ""
    return f"series {names[0]!r}{others}"
