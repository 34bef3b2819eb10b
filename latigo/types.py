"""Plain value types passed between latigo's loops and its providers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pandas as pd


TASK_SCHEMA_VERSION = 2
"""2: tasks name their project. A body of schema 1 (before projects) is read as a task of the
project the reader is given (`legacy_project`), else refused."""

DEFAULT_PROJECT = "default"
"""The project of every model whose provider has no projects of its own (local, catalog, plug-ins): a model
is (project, name) everywhere, so every path has one shape."""


def ensure_utc(value: datetime, what: str = "timestamp") -> datetime:
    """Return `value` in UTC; naive datetimes are refused because their zone is a guess."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} {value.isoformat()} has no timezone; latigo needs tz-aware times")
    return value.astimezone(timezone.utc)


def parse_timestamp(text: str, what: str = "timestamp") -> datetime:
    """Parse an ISO 8601 timestamp (a trailing Z is accepted) into UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{what} {text!r} is not an ISO 8601 timestamp") from exc
    return ensure_utc(value, what)


@dataclass(frozen=True, order=True)
class TimeRange:
    """A half-open interval [start, end) of tz-aware UTC instants."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", ensure_utc(self.start, "range start"))
        object.__setattr__(self, "end", ensure_utc(self.end, "range end"))
        if self.end <= self.start:
            raise ValueError(f"empty time range: end {self.end.isoformat()} <= start {self.start.isoformat()}")

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


class ModelRef(NamedTuple):
    """A model's identity: (project, name). The same name in two projects is two models."""

    project: str
    name: str

    def __str__(self) -> str:
        return f"{self.project}/{self.name}"

    @property
    def label(self) -> str:
        """How people see it: the name alone in the default project, else "project/name" (the forms the
        command line takes back)."""
        return self.name if self.project == DEFAULT_PROJECT else str(self)


def make_task_id(model: str, window: TimeRange, project: str = DEFAULT_PROJECT) -> str:
    """A deterministic id for (project, model, window): the same window always gets the same id,
    which is what lets the ledger and the storage deduplicate redelivered tasks."""
    key = f"{project}\x00{model}\x00{window.start.isoformat()}\x00{window.end.isoformat()}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def legacy_task_id(model: str, window: TimeRange) -> str:
    """The id schema 1 gave (model, window), before projects (migration 0005 rewrites these)."""
    key = f"{model}\x00{window.start.isoformat()}\x00{window.end.isoformat()}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Task:
    """One prediction job: run `project`'s `model` over `window`."""

    model: str
    window: TimeRange
    project: str = DEFAULT_PROJECT
    task_id: str = ""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("task model name is empty")
        if not self.project:
            raise ValueError(f"task of model {self.model!r} names no project")
        expected = make_task_id(self.model, self.window, self.project)
        if not self.task_id:
            object.__setattr__(self, "task_id", expected)
        elif self.task_id != expected:
            raise ValueError(f"task id {self.task_id!r} does not match project {self.project!r}, "
                             f"model {self.model!r} and window {self.window}")

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.project, self.model)

    @property
    def key(self) -> str:
        """The model as one string ("project/name"): the partition key on brokers, so one model's
        windows stay in order on one partition."""
        return str(self.ref)

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema": TASK_SCHEMA_VERSION,
                "task_id": self.task_id,
                "project": self.project,
                "model": self.model,
                "start": self.window.start.isoformat(),
                "end": self.window.end.isoformat(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, body: str | bytes, legacy_project: str | None = None) -> Task:
        """Decode a queued task; any malformation raises ValueError naming what is wrong. A schema-1 body
        (before projects) is a task of `legacy_project` when one is given (with its old id replaced)."""
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"task body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"task body is a JSON {type(data).__name__}, not an object")
        schema = data.get("schema")
        if schema == 1 and legacy_project:
            return cls._from_legacy(data, legacy_project)
        if schema != TASK_SCHEMA_VERSION:
            raise ValueError(f"task schema {schema!r} is not the supported {TASK_SCHEMA_VERSION}"
                             + (" (schema 1 predates projects: this executor serves several projects, so it "
                                "cannot tell which one the task meant)" if schema == 1 else ""))
        for key in ("task_id", "project", "model", "start", "end"):
            if not isinstance(data.get(key), str):
                raise ValueError(f"task field {key!r} is missing or not a string")
        window = TimeRange(parse_timestamp(data["start"], "task start"), parse_timestamp(data["end"], "task end"))
        return cls(model=data["model"], window=window, project=data["project"], task_id=data["task_id"])

    @classmethod
    def _from_legacy(cls, data: dict[str, Any], project: str) -> Task:
        for key in ("task_id", "model", "start", "end"):
            if not isinstance(data.get(key), str):
                raise ValueError(f"task field {key!r} is missing or not a string")
        window = TimeRange(parse_timestamp(data["start"], "task start"), parse_timestamp(data["end"], "task end"))
        if data["task_id"] != legacy_task_id(data["model"], window):
            raise ValueError(f"task id {data['task_id']!r} does not match model {data['model']!r} and window {window}")
        return cls(model=data["model"], window=window, project=project)


@dataclass(frozen=True)
class ModelInfo:
    """What latigo needs to know about a model to feed it and to store its output."""

    name: str
    tags: tuple[str, ...]
    target_tags: tuple[str, ...]
    resolution: timedelta
    project: str = ""
    revision: str = ""
    model_offset: int = 0
    """Rows the model consumes before its first output (an LSTM with lookback_window 6 has 5)."""
    aggregation: str | tuple[str, ...] = "mean"
    """How raw points become one value per bucket. A tuple (Gordo's list form) gives one column per tag
    and method, named (tag, method), even when it holds one method."""
    interpolation_method: str = "linear_interpolation"
    """How gaps are filled: linear_interpolation or ffill (Gordo's two)."""
    interpolation_limit: timedelta | None = timedelta(hours=48)
    """Gaps are filled at most this far from the last value (None: no limit); Gordo's default is 48H."""
    row_filter: str | tuple[str, ...] = ""
    """Gordo's pandas-query row filter (a tuple is AND-ed); rows it rejects are not sent to the model."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class SensorFrame:
    """Sensor values aligned on one time grid: index = UTC timestamps, one column per tag."""

    data: pd.DataFrame
    missing: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return self.data.empty or bool(self.data.isna().all().all())


class PredictionRow(NamedTuple):
    """One value of a model's output: (output group, tag, timestamp, value)."""

    output: str
    tag: str
    ts: datetime
    value: float


@dataclass
class PredictionFrame:
    """A model's output in long form, the shape the predictions table stores.

    `note` says why a frame is empty or short when that is an expected outcome (no bucket completes in
    the window, the row filter rejected every row), so the ledger can say it instead of a bare 0.
    `revision` is the model server's revision that produced the rows (empty where there is none)."""

    model: str
    rows: list[PredictionRow] = field(default_factory=list)
    note: str = ""
    project: str = DEFAULT_PROJECT
    revision: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.project, self.model)

    def with_rows(self, rows: list[PredictionRow]) -> PredictionFrame:
        return replace(self, rows=rows)

    def only_outputs(self, outputs: frozenset[str] | set[str]) -> PredictionFrame:
        return self.with_rows([r for r in self.rows if r.output in outputs])

    def within(self, span: TimeRange) -> PredictionFrame:
        """Rows whose timestamp lies in the half-open span (look-back rows trimmed off)."""
        return self.with_rows([r for r in self.rows if span.start <= r.ts < span.end])

    @classmethod
    def from_rows(cls, model: str, rows: dict[tuple[str, str, datetime], float]) -> PredictionFrame:
        return cls(model, [PredictionRow(output, tag, ts, value) for (output, tag, ts), value in rows.items()])

    @classmethod
    def from_groups(cls, model: str, groups: dict[str, dict[str, dict[Any, Any]]]) -> PredictionFrame:
        """Build from Gordo's output shape {group: {column: {timestamp: value}}}; NaN values are kept
        out because a missing prediction is not a value."""
        rows: list[PredictionRow] = []
        for group, columns in groups.items():
            for tag, series in columns.items():
                for ts, value in series.items():
                    if value is None or value != value:
                        continue
                    rows.append(PredictionRow(group, tag, _to_utc(ts), float(value)))
        return cls(model, rows)


def _to_utc(ts: Any) -> datetime:
    if isinstance(ts, datetime):
        return ensure_utc(ts)
    import pandas as pd  # only for values that are not datetimes already (rare): keep `import latigo` light

    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {ts!r} has no timezone")
    return stamp.tz_convert("UTC").to_pydatetime()


class Started(NamedTuple):
    """What starting a task in the ledger found: whether to run it, and its counters after this start."""

    run: bool
    state: str
    """The state before this start (a final state when `run` is False)."""
    attempts: int = 0
    """Runs so far in which the model ran and failed in a way worth retrying."""
    lost: int = 0
    """Runs so far that never finished (their executor died)."""


@dataclass(frozen=True)
class ModelStatus:
    """A provider's view of one model's lifecycle."""

    name: str
    state: str  # registered | training | ready | failed | unknown
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedSeries:
    """One Time Series API series a prediction frame is written to: its name and what it is created with
    when the API lacks it.

    Here rather than with the data_api sink that plans it because the prediction metadata publisher reads it
    too, and neither of the two should import the other's module for it."""

    name: str
    facility: str
    output: str
    tag: str
    """The tag it derives from; empty for an output of the model as a whole."""
    description: str
    unit: str


@dataclass(frozen=True)
class WrittenSeries:
    """A planned series with its id in the Time Series API: what the data_api sink hands the prediction
    metadata publisher after a write."""

    series: PlannedSeries
    series_id: str
