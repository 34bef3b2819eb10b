"""What `latigo web` shows, read on a read-only engine of its own: the pipeline's health, the models'
rows (filtered, ranked, paged) and a model's page, as the dataclasses the pages render.

The statements are latigo.storage.reads' (shared with `latigo status` and `latigo anomalies`); this module
decides which to ask and puts the answers together. Every read is bounded: by LIMIT, by a time range of at
most 24 hours, or by an index prefix; predictions are read only for the models and the range shown.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url

from latigo.errors import ConfigError
from latigo.lifecycle import DONE, FAILED, QUEUED, RUNNING
from latigo.peer_status import PeerDownReport, peers_down
from latigo.settings import DatabaseSettings
from latigo.storage import reads, task_hours
from latigo.storage.db import utc_from_db
from latigo.types import ModelRef

TOTAL_CONFIDENCE = "total-anomaly-confidence"
TAG_OUTPUTS = ("anomaly-confidence", "tag-anomaly-scaled")
"""Per-tag anomaly outputs the model page can draw, the preferred one first (its threshold is 1, as the
total's)."""
THRESHOLD = 1.0
"""Gordo's anomaly-confidence scale: a value above 1 is above the model's threshold."""
REASONS = ("transient", "permanent", "no_data", "unknown_model", "dead_letter", "abandoned", "internal")
"""The prefixes the executor gives a failed task's error (`reason: detail`)."""
MAX_HOURS = 24
SPARK_BUCKET = timedelta(minutes=30)
CHART_POINTS = 288
"""At most this many points per line on the model page: the range is cut into this many buckets, each drawn
as its maximum (a spike survives the downsampling)."""
MAX_MODELS = 100
"""Model rows per overview page (`?page=` for the others); the ranking and the counts cover every model."""
MAX_QUERY = 200
"""A search text (`?q=`) longer than this is cut: no model or project name is longer than 255 characters,
and a search of a kilobyte is not a search."""
ANOMALOUS, LATE, FAILING = "anomalous", "late", "failing"
STATES = (ANOMALOUS, LATE, FAILING)
"""The overview's state filters: above the threshold now, no window done for longer than `late_after`
(or never), the newest task failed."""
COUNT_CAP = 100_000
"""Counts of rows that are normally few (dead letters) stop here."""
RECENT_FAILURES = 10
MODEL_TASKS = 25
STATEMENT_TIMEOUT_MS = 15_000


# ---------------------------------------------------------------------------------------------- the engine

def read_only_engine(settings: DatabaseSettings) -> Engine:
    """A separate engine whose sessions cannot write: PostgreSQL with default_transaction_read_only (and a
    statement timeout), SQLite opened with mode=ro and query_only. A missing SQLite file is an error, not a
    new empty database."""
    try:
        url = make_url(settings.url)
    except Exception:
        raise ConfigError("database.url: not a database URL") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_read_only(url.database or "")
    if backend != "postgresql":
        raise ConfigError(f"database.url: unsupported database {backend!r}; use postgresql or sqlite")
    options = f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    return sa.create_engine(
        url, pool_size=4, max_overflow=4, pool_pre_ping=True,
        connect_args={"connect_timeout": int(settings.connect_timeout.total_seconds()),
                      "application_name": "latigo-web", "options": options},
    )


def _sqlite_read_only(path: str) -> Engine:
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ConfigError(f"database.url: latigo web needs a SQLite file, not {path or 'an empty path'!r}")
    from urllib.parse import quote

    uri = f"file:{quote(path)}?mode=ro"

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
        connection.execute("PRAGMA query_only=ON")
        return connection

    # A file database: a queue of connections shared by the request threads (the "sqlite://" URL alone would
    # get the in-memory database's one-connection-per-thread pool).
    return sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.QueuePool, pool_size=4, max_overflow=4)


# ---------------------------------------------------------------------------------------------- values

@dataclass
class ReasonCount:
    reason: str
    count: int
    last_at: datetime | None
    example_model: ModelRef | None = None
    example_window: datetime | None = None
    example_error: str = ""


@dataclass
class FailureRow:
    model: ModelRef
    window_start: datetime
    reason: str
    error: str
    finished_at: datetime | None
    runs: int
    attempts: int


@dataclass
class ExecutorSeen:
    name: str
    last_seen: datetime
    finished_last_hour: int
    running: int


@dataclass
class Health:
    now: datetime
    backlog: int
    running: int
    oldest_queued: datetime | None
    done_last_hour: int
    failed_last_hour: int
    failed_24h: int
    dead_letters: int
    reasons: list[ReasonCount] = field(default_factory=list)
    recent_failures: list[FailureRow] = field(default_factory=list)
    executors: list[ExecutorSeen] = field(default_factory=list)
    hourly: list[tuple[datetime, int, int]] = field(default_factory=list)
    """(hour start, done, failed) for each of the last 24 hours, oldest first."""
    peers_down: list[PeerDownReport] = field(default_factory=list)
    """Peers some executor sees down: shown above everything else."""

    @property
    def oldest_queued_age(self) -> timedelta | None:
        return None if self.oldest_queued is None else max(self.now - self.oldest_queued, timedelta(0))


@dataclass
class ModelRow:
    ref: ModelRef
    last_done_end: datetime | None = None
    newest_state: str | None = None
    newest_window_end: datetime | None = None
    scheduled_until: datetime | None = None
    confidence: float | None = None
    confidence_at: datetime | None = None
    spark: list[tuple[datetime, float]] = field(default_factory=list)

    @property
    def above(self) -> bool:
        return self.confidence is not None and self.confidence > THRESHOLD

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def label(self) -> str:
        return self.ref.label

    def late(self, now: datetime, late_after: timedelta) -> bool:
        return self.last_done_end is None or now - self.last_done_end > late_after

    @property
    def failing(self) -> bool:
        return self.newest_state == FAILED

    def states(self, now: datetime, late_after: timedelta) -> set[str]:
        return {state for state, on in ((ANOMALOUS, self.above), (LATE, self.late(now, late_after)),
                                        (FAILING, self.failing)) if on}


@dataclass(frozen=True)
class ModelFilter:
    """What the overview narrows the models to, each part from the page's address (a shareable link):
    `q` a case-insensitive substring of the project or the model name, `state` one of STATES, `project`
    one project, `page` from 1."""

    q: str = ""
    state: str = ""
    project: str = ""
    page: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "q", self.q.strip()[:MAX_QUERY])
        if self.state and self.state not in STATES:
            object.__setattr__(self, "state", "")
        object.__setattr__(self, "page", max(1, self.page))

    def scope(self, row: ModelRow) -> bool:
        """In the project and the search (the state filter aside: the state counts are of this scope)."""
        if self.project and row.ref.project != self.project:
            return False
        needle = self.q.casefold()
        return not needle or needle in row.ref.name.casefold() or needle in row.ref.project.casefold()


@dataclass
class Snapshot:
    """Every model's row and the pipeline's health, read once and shared by every view of the next seconds
    (any filter, any page)."""

    health: Health
    rows: list[ModelRow]

    @property
    def now(self) -> datetime:
        return self.health.now


@dataclass
class Overview:
    health: Health
    models: list[ModelRow]
    total_models: int
    """Models in the ledger (every project)."""
    since: datetime
    projects: list[str] = field(default_factory=list)
    """Every project of the ledger; `project` the one shown (empty: all)."""
    project: str = ""
    filter: ModelFilter = field(default_factory=ModelFilter)
    matching: int = 0
    """Models that pass the filter; `models` is one page of them."""
    in_scope: int = 0
    """Models of the project and the search, before the state filter."""
    counts: dict[str, int] = field(default_factory=dict)
    """Per state, the models of the scope in it."""
    above_total: int = 0
    """Models above the threshold in the whole ledger."""
    page_size: int = MAX_MODELS
    late_after: timedelta = timedelta(minutes=65)

    @property
    def pages(self) -> int:
        return max(1, -(-self.matching // self.page_size))

    @property
    def first_index(self) -> int:
        return (self.filter.page - 1) * self.page_size


@dataclass
class TaskRow:
    window_start: datetime
    window_end: datetime
    state: str
    runs: int
    attempts: int
    lost: int
    executor: str | None
    finished_at: datetime | None
    duration_ms: int | None
    rows: int | None
    error: str | None
    revision: str | None = None


@dataclass
class ModelDetail:
    ref: ModelRef
    output: str | None
    """The per-tag output drawn (None: the model has no per-tag anomaly series)."""
    outputs: list[str]
    """The per-tag anomaly outputs stored for the model."""
    lines: dict[str, list[tuple[datetime, float]]]
    total: list[tuple[datetime, float]]
    tasks: list[TaskRow]
    since: datetime
    until: datetime
    row: ModelRow | None
    hours: int = MAX_HOURS

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def known(self) -> bool:
        return bool(self.tasks or self.outputs or self.total or self.row)


# ---------------------------------------------------------------------------------------------- pipeline

def reason_of(error: str | None) -> str:
    head = (error or "").split(":", 1)[0].strip()
    return head if head in REASONS else "other"


def pipeline_health(connection: Connection, now: datetime, hourly: HourlyCounts | None = None) -> Health:
    hour, day = now - timedelta(hours=1), now - timedelta(hours=MAX_HOURS)
    health = Health(
        now=now, backlog=reads.count_in_state(connection, QUEUED), running=reads.count_in_state(connection, RUNNING),
        oldest_queued=reads.oldest_queued(connection),
        done_last_hour=reads.finished_count(connection, DONE, hour),
        failed_last_hour=reads.finished_count(connection, FAILED, hour),
        failed_24h=reads.finished_count(connection, FAILED, day),
        dead_letters=reads.dead_letter_count(connection, COUNT_CAP),
    )
    health.reasons = _reasons(connection, day)
    health.recent_failures = [
        FailureRow(ModelRef(r.project, r.model), r.window_start, reason_of(r.error), r.error or "", r.finished_at,
                   r.runs, r.attempts)
        for r in reads.failures_since(connection, day, RECENT_FAILURES)]
    health.executors = _executors(connection, hour)
    health.hourly = _hourly(connection, now, hourly)
    health.peers_down = peers_down(connection, now)
    return health


def _reasons(connection: Connection, since: datetime) -> list[ReasonCount]:
    merged: dict[str, ReasonCount] = {}
    for row in reads.failure_heads(connection, since):
        name = reason_of(row.reason + ":")
        last = utc_from_db(row.last)
        entry = merged.setdefault(name, ReasonCount(name, 0, last))
        entry.count += row.n
        entry.last_at = max(filter(None, (entry.last_at, last)), default=None)
    for entry in merged.values():
        prefix, limit = (entry.reason + ":", 1) if entry.reason != "other" else (None, 50)
        for project, model, start, error in reads.newest_failed_with(connection, since, prefix, limit):
            if entry.reason != "other" or reason_of(error) == "other":
                entry.example_model = ModelRef(project, model)
                entry.example_window, entry.example_error = start, error or ""
                break
    return sorted(merged.values(), key=lambda r: (-r.count, r.reason))


def _executors(connection: Connection, since: datetime) -> list[ExecutorSeen]:
    seen: dict[str, ExecutorSeen] = {}
    for name, count, last in reads.executors_finished(connection, since):
        seen[name] = ExecutorSeen(name, utc_from_db(last) or since, count, 0)
    for name, count, last in reads.executors_running(connection, since):
        started_at = utc_from_db(last) or since
        entry = seen.setdefault(name, ExecutorSeen(name, started_at, 0, 0))
        entry.running = count
        entry.last_seen = max(entry.last_seen, started_at)
    return sorted(seen.values(), key=lambda e: e.name)


class HourlyCounts:
    """The finished-per-hour chart's settled hours, kept between refreshes: every refresh reads only the
    hours that can still change (the current one, the one just ended), not 24 hours of the ledger."""

    def __init__(self) -> None:
        self.settled: dict[datetime, tuple[int, int]] = {}
        self.lock = threading.Lock()


def _hourly(connection: Connection, now: datetime, kept: HourlyCounts | None = None) -> list[tuple[datetime, int, int]]:
    """The last 24 hours' done and failed tasks per hour: the settled hours from what this server kept,
    then from what the scheduler stored (task_hours), the rest counted from the ledger."""
    end = task_hours.hour_of(now) + timedelta(hours=1)
    start = end - timedelta(hours=MAX_HOURS)
    hours = [start + timedelta(hours=i) for i in range(MAX_HOURS)]
    known = {} if kept is None else {hour: kept.settled[hour] for hour in hours if hour in kept.settled}
    if len(known) < sum(1 for hour in hours if task_hours.settled(hour, now)):
        known.update({hour: counts for hour, counts in task_hours.stored(connection, start).items()
                      if hour not in known and hour < end})
    counted = task_hours.count_from_ledger(connection, [hour for hour in hours if hour not in known])
    out = []
    for at in hours:
        done, failed = known.get(at) or counted[at]
        if kept is not None and at not in kept.settled and task_hours.settled(at, now):
            with kept.lock:
                kept.settled[at] = (done, failed)
        out.append((at, done, failed))
    if kept is not None and len(kept.settled) > 4 * MAX_HOURS:
        with kept.lock:
            for old in [hour for hour in kept.settled if hour < start]:
                kept.settled.pop(old, None)
    return out


# ---------------------------------------------------------------------------------------------- models

def _set_confidence(rows: dict[ModelRef, ModelRow], found: Iterable[Any]) -> None:
    for row_project, model, ts, value in found:
        ts, row = utc_from_db(ts), rows.get(ModelRef(row_project, model))
        if row is not None and ts is not None and (row.confidence_at is None or ts > row.confidence_at):
            row.confidence, row.confidence_at = value, ts


def summarised_rows(connection: Connection, since: datetime, project: str = "") -> dict[ModelRef, ModelRow]:
    """Every model (of `project`) from model_summary, which the database keeps as tasks are enqueued and
    finished: one scan instead of four index probes per model. The newest task is shown by its outcome,
    or as queued while it has none (queued or running: the model page reads the ledger itself)."""
    rows: dict[ModelRef, ModelRow] = {}
    for r in reads.model_summaries(connection, project):
        ref = ModelRef(r.project, r.model)
        newest, outcome_end = r.newest_window_end, r.outcome_window_end
        pending = newest is not None and (outcome_end is None or newest > outcome_end)
        recent = r.confidence_at is not None and r.confidence_at >= since
        rows[ref] = ModelRow(ref, last_done_end=r.last_done_end, newest_state=QUEUED if pending else r.outcome,
                             newest_window_end=newest, confidence=r.confidence if recent else None,
                             confidence_at=r.confidence_at if recent else None)
    return rows


def model_rows(connection: Connection, now: datetime, refs: Sequence[ModelRef] | None = None,
               project: str = "") -> list[ModelRow]:
    """Every model of the ledger (or `refs`, or the models of `project`), with its last done window, newest
    task, scheduled end and latest total-anomaly-confidence of the last 24 hours."""
    rows: dict[ModelRef, ModelRow] = {}
    since = now - timedelta(hours=MAX_HOURS)
    if refs is None:
        rows = summarised_rows(connection, since, project)
        for row_project, model, end in reads.schedule_ends(connection):
            if ModelRef(row_project, model) in rows:
                rows[ModelRef(row_project, model)].scheduled_until = end
        return list(rows.values())
    for ref in refs:
        newest = reads.newest_task(connection, ref)
        rows[ref] = ModelRow(ref, last_done_end=reads.last_done_end(connection, ref),
                             newest_state=newest.state if newest else None,
                             newest_window_end=newest.window_end if newest else None)
    for chunk in reads.chunks(list(rows)):
        for row_project, model, end in reads.schedule_ends(connection, chunk):
            rows[ModelRef(row_project, model)].scheduled_until = end
        _set_confidence(rows, reads.latest_values(connection, chunk, TOTAL_CONFIDENCE, since))
    return list(rows.values())


def rank(rows: list[ModelRow], now: datetime | None = None,
         late_after: timedelta = timedelta(minutes=65)) -> list[ModelRow]:
    """Above the threshold first (highest confidence first), then the late or failing ones, then the others,
    each by name."""
    above = sorted((r for r in rows if r.above), key=lambda r: (-(r.confidence or 0.0), r.ref))
    rest = [r for r in rows if not r.above]
    if now is None:
        return above + sorted(rest, key=lambda r: r.ref)
    stale = sorted((r for r in rest if r.failing or r.late(now, late_after)), key=lambda r: r.ref)
    flagged = set(id(r) for r in stale)
    return above + stale + sorted((r for r in rest if id(r) not in flagged), key=lambda r: r.ref)


def snapshot(engine: Engine, now: datetime | None = None, hourly: HourlyCounts | None = None) -> Snapshot:
    """The pipeline's health and every model's row: what a refresh costs the database, whatever is shown
    (`hourly`: the settled hours of the chart, kept by the caller between refreshes)."""
    now = now or datetime.now(timezone.utc)
    with engine.connect() as connection:
        return Snapshot(pipeline_health(connection, now, hourly), model_rows(connection, now))


def view(engine: Engine, taken: Snapshot, which: ModelFilter | None = None, limit: int = MAX_MODELS,
         late_after: timedelta = timedelta(minutes=65)) -> Overview:
    """One page of the models `which` selects, ranked, with the counts the filter links show; reads only
    the shown models' sparklines."""
    which = which or ModelFilter()
    now = taken.now
    since = now - timedelta(hours=MAX_HOURS)
    scoped = [row for row in taken.rows if which.scope(row)]
    counts = dict.fromkeys(STATES, 0)
    for row in scoped:
        for state in row.states(now, late_after):
            counts[state] += 1
    matching = [row for row in scoped if not which.state or which.state in row.states(now, late_after)]
    ranked = rank(matching, now, late_after)
    pages = max(1, -(-len(ranked) // limit))
    if which.page > pages:  # a link from when there were more: the last page
        which = replace(which, page=pages)
    first = (which.page - 1) * limit
    shown = [replace(row, spark=[]) for row in ranked[first:first + limit]]
    if shown:
        with engine.connect() as connection:
            series = reads.series_of(connection, [r.ref for r in shown], TOTAL_CONFIDENCE)
            values = reads.bucketed_values(connection, list(series), since, now + timedelta(seconds=1), SPARK_BUCKET)
        by_ref = {r.ref: r for r in shown}
        for sid, points in values.items():
            row = by_ref[series[sid][0]]
            if len(points) > len(row.spark):  # a model with two total series: the fuller one
                row.spark = points
    return Overview(taken.health, shown, len(taken.rows), since, sorted({row.ref.project for row in taken.rows}),
                    which.project, which, len(matching), len(scoped), counts,
                    sum(1 for row in taken.rows if row.above), limit, late_after)


def overview(engine: Engine, now: datetime | None = None, limit: int = MAX_MODELS, project: str = "",
             which: ModelFilter | None = None, late_after: timedelta = timedelta(minutes=65)) -> Overview:
    """The pipeline's health and one page of the models ranked (of `project` only, when given)."""
    return view(engine, snapshot(engine, now), which or ModelFilter(project=project), limit, late_after)


RANGES = (6, 12, MAX_HOURS)
"""The hours a model page offers; without a choice it shows the shortest that holds all of the last 24 hours'
values (a model predicted for 3 hours is not drawn in the last eighth of a 24-hour axis)."""


def model_detail(engine: Engine, ref: ModelRef, output: str | None = None, hours: int | None = None,
                 now: datetime | None = None) -> ModelDetail:
    now = now or datetime.now(timezone.utc)
    with engine.connect() as connection:
        per_output = {o: reads.series_of(connection, [ref], o) for o in TAG_OUTPUTS}
        outputs = [o for o in TAG_OUTPUTS if per_output[o]]
        shown = output if output in outputs else (outputs[0] if outputs else None)
        totals = reads.series_of(connection, [ref], TOTAL_CONFIDENCE)
        if hours is None:
            first = reads.first_value_at(connection, list(totals) or list(per_output.get(shown or "") or ()),
                                    now - timedelta(hours=MAX_HOURS))
            hours = next((h for h in RANGES if first is not None and first >= now - timedelta(hours=h)), MAX_HOURS)
        hours = min(max(int(hours), 1), MAX_HOURS)
        since, until = now - timedelta(hours=hours), now + timedelta(seconds=1)
        bucket = timedelta(hours=hours) / CHART_POINTS
        lines: dict[str, list[tuple[datetime, float]]] = {}
        if shown:
            tags = per_output[shown]
            values = reads.bucketed_values(connection, list(tags), since, until, bucket)
            lines = {tags[sid][1]: values.get(sid, []) for sid in sorted(tags, key=lambda s: tags[s][1])}
        total_values = reads.bucketed_values(connection, list(totals), since, until, bucket)
        total = max(total_values.values(), key=len, default=[])
        tasks = [TaskRow(*r) for r in reads.model_tasks(connection, ref, MODEL_TASKS)]
        row = model_rows(connection, now, [ref])[0] if tasks else None
    return ModelDetail(ref, shown, outputs, lines, total, tasks, since, now, row, hours)
