"""Predictions written to the Time Series API (the "Data API"), where the plant's people look at them.

Naming convention: one series per (model, output group, tag), named

    {name_prefix}.{model}.{output}.{tag}      e.g. latigo.pump-a1.model-output.1903.R-29TT3018.MA_Y
    {name_prefix}.{model}.{output}            when the tag is empty (an aggregate such as
                                              total-anomaly-scaled in Gordo's JSON answer)

with `externalId` = the name, `facility`, `unit`, `step` and a `description` from the settings. The
name is read left to right: a model or an output group containing a "." would make two series share
a name, so rows of such models or groups are skipped with a warning (Gordo's names never contain
one); tags may contain dots, they come last. An empty `name_prefix` leaves out the prefix and its dot.

A series is created on first use (POST {base}: 201 with its id; 409 when it exists, then it is
looked up by name within the facility, exact name only) and its id cached for the life of the
process. Creations are serialised per name, so concurrent writers of the same model create each
series once. Datapoints go out with POST {base}/data, at most 100 series and `batch_points` points a
request, status 192 (Good), times RFC 3339 with milliseconds and a Z. The API keeps one point per
series and instant, so a redelivered task rewrites its points and never duplicates them.

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
from typing import Any

import requests

from latigo.errors import ConfigError, PermanentError, TransientError
from latigo.http import describe_response
from latigo.interfaces import PredictionSink
from latigo.peers import PeerDown
from latigo.sensors.data_api import LOOKUP_CONCURRENCY, MAX_IDS_PER_REQUEST, DataApiSensors, rfc3339
from latigo.types import PredictionFrame

log = logging.getLogger(__name__)

STATUS_GOOD = 192
NAME_LOCKS = 256
"""Creations are serialised per name through this many striped locks (a lock per name would grow
without bound)."""

_Key = tuple[str, str]
"""(output, tag) of one series of a frame's model."""


def series_name(prefix: str, model: str, output: str, tag: str) -> str:
    """The series name of (model, output, tag) under the module's naming convention."""
    parts = [prefix] if prefix else []
    parts += [model, output]
    if tag:
        parts.append(tag)
    return ".".join(parts)


def nameable(model: str, output: str) -> bool:
    """Whether rows of this model and output group get a name no other (model, output, tag) gets."""
    return bool(model) and bool(output) and "." not in model and "." not in output


class DataApiPredictionSink(PredictionSink):
    """Predictions as Time Series API series, one per (model, output group, tag); see the module docstring."""

    @dataclass
    class Settings(DataApiSensors.Settings):
        name_prefix: str = "latigo"
        """First part of every series name; empty: none."""
        description: str = "Gordo prediction by latigo: model {model}, output {output}, tag {tag}"
        """Description of a created series; {model}, {output}, {tag} and {name} are replaced."""
        unit: str = ""
        """Unit of a created series."""
        step: bool = True
        """The series' `step` flag: a value holds until the next point (a prediction is its bucket's value)."""
        batch_points: int = field(default=10_000, metadata={"min": 1})
        """Datapoints per write request (besides the API's 100 series a request)."""

    def __init__(self, settings: DataApiPredictionSink.Settings, sleep: Callable[[float], None] = time.sleep) -> None:
        try:
            settings.description.format(model="", output="", tag="", name="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"data_api sink: description {settings.description!r} is not a template of "
                              f"{{model}}, {{output}}, {{tag}}, {{name}}: {exc!r}") from None
        self.settings = settings
        self.api = DataApiSensors(settings, sleep=sleep)
        """The connection (token, subscription key, retries) and the lookup of series by name."""
        self.http, self.base = self.api.http, self.api.base
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()
        self._name_locks = [threading.Lock() for _ in range(NAME_LOCKS)]

    @classmethod
    def from_settings(cls, settings: DataApiPredictionSink.Settings, components: Any) -> DataApiPredictionSink:
        return cls(settings)

    def close(self) -> None:
        self.api.close()

    # -- PredictionSink

    def write(self, frame: PredictionFrame) -> int:
        series, skipped = self._series(frame)
        if skipped:
            log.warning("data_api sink: %d of %d rows of model %r are not written: a '.' in the model or output "
                        "name, or a value that is not finite", skipped, len(frame.rows), frame.model)
        if not series:
            return 0
        names = {key: series_name(self.settings.name_prefix, frame.model, *key) for key in series}
        ids = self._ensure(frame.model, names)
        items = [(names[key], ids[names[key]], points) for key, points in series.items()]
        for batch in self._batches(items):
            self._post(batch)
        return sum(len(points) for points in series.values())

    # -- rows to datapoints

    def _series(self, frame: PredictionFrame) -> tuple[dict[_Key, list[dict[str, Any]]], int]:
        """Datapoints per (output, tag) in time order, one per instant (of two rows in the same millisecond
        the later row wins); and how many rows cannot be written."""
        by_key: dict[_Key, dict[str, float]] = {}
        skipped = 0
        writable: dict[str, bool] = {}
        times: dict[Any, str] = {}  # the series of a frame share their timestamps
        for row in frame.rows:
            ok = writable.get(row.output)
            if ok is None:
                ok = writable[row.output] = nameable(frame.model, row.output)
            value = float(row.value)
            if not ok or not math.isfinite(value):
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

    def _ensure(self, model: str, names: dict[_Key, str]) -> dict[str, str]:
        """The id of every name, creating the series not yet known (concurrently, a few at a time)."""
        with self._lock:
            unknown = [(key, name) for key, name in names.items() if name not in self._ids]
        if len(unknown) > 1:
            with ThreadPoolExecutor(min(LOOKUP_CONCURRENCY, len(unknown)), "data-api-sink-create") as pool:
                list(pool.map(lambda item: self.series_id(model, *item[0]), unknown))
        elif unknown:
            self.series_id(model, *unknown[0][0])
        with self._lock:
            return {name: self._ids[name] for name in names.values()}

    def series_id(self, model: str, output: str, tag: str) -> str:
        """The id of the series of (model, output, tag), created when the API does not have it yet."""
        name = series_name(self.settings.name_prefix, model, output, tag)
        with self._lock:
            known = self._ids.get(name)
        if known is not None:
            return known
        with self._name_locks[hash(name) % NAME_LOCKS]:  # one creation per name at a time
            with self._lock:
                known = self._ids.get(name)
            if known is None:
                known = self._create(name, model, output, tag)
                with self._lock:
                    self._ids[name] = known
        return known

    def _create(self, name: str, model: str, output: str, tag: str) -> str:
        settings = self.settings
        body: dict[str, Any] = {
            "name": name,
            "description": settings.description.format(model=model, output=output, tag=tag, name=name),
            "step": settings.step,
            "unit": settings.unit,
            "externalId": name,
        }
        if settings.facility:
            body["facility"] = settings.facility
        try:
            response = self.http.request("POST", self.base, json=body, accept=(409,))
            if response.status_code != 409:
                created = _created_id(response, name)
                if created is not None:
                    log.info("data_api sink: created series %r (id %s)", name, created)
                    return created
            found = self.api.series_id(name)
        except PeerDown:
            raise  # the API is down: not this write's failure
        except (TransientError, PermanentError) as exc:
            raise type(exc)(f"data_api sink: creating series {name!r}: {exc}") from None
        if found is None:
            where = f"in facility {settings.facility!r}" if settings.facility else "by that name"
            raise PermanentError(f"data_api sink: series {name!r}: the API says it exists (409) but finds none "
                                 f"{where}")
        return found

    def forget(self, names: Sequence[str]) -> None:
        with self._lock:
            ids = [self._ids.pop(name) for name in names if name in self._ids]
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
