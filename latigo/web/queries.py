"""The reads behind `latigo web`, on a read-only engine of their own.

Every query is bounded: by LIMIT, by a time range of at most 24 hours, or by an index prefix. The ledger is
read along tasks(state, finished_at) and tasks(model, window_end); predictions only for the models and the
range shown, through series(model, output, tag) and prediction_values' key (series_id, ts) — never a scan of
the predictions.
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
from latigo.storage import task_hours
from latigo.storage.db import utc_from_db
from latigo.storage.tables import DeadLetter, ModelSummary, ScheduleState, TaskRecord, UtcDateTime
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
CHUNK = 500
STATEMENT_TIMEOUT_MS = 15_000

_tasks = TaskRecord.__table__
_letters = DeadLetter.__table__
_schedule = ScheduleState.__table__


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

def _count(connection: Connection, statement: Any) -> int:
    return int(connection.execute(statement).scalar_one() or 0)


def _capped_count(connection: Connection, selectable: Any, cap: int = COUNT_CAP) -> int:
    return _count(connection, sa.select(sa.func.count()).select_from(selectable.limit(cap).subquery()))


def _reason_expression(connection: Connection) -> Any:
    """The text before the first ':' of tasks.error (the whole error when it has none)."""
    error = sa.func.coalesce(_tasks.c.error, "")
    if connection.dialect.name == "postgresql":
        return sa.func.split_part(error, ":", 1)
    colon = sa.func.instr(error, ":")
    return sa.case((colon > 0, sa.func.substr(error, 1, colon - 1)), else_=error)


def reason_of(error: str | None) -> str:
    head = (error or "").split(":", 1)[0].strip()
    return head if head in REASONS else "other"


def _finished(state: str, since: datetime) -> Any:
    """Tasks of a final state finished since `since`: a range of the tasks(state, finished_at) index."""
    return sa.and_(_tasks.c.state == state, _tasks.c.finished_at >= since)


def pipeline_health(connection: Connection, now: datetime, hourly: HourlyCounts | None = None) -> Health:
    hour, day = now - timedelta(hours=1), now - timedelta(hours=MAX_HOURS)
    count = sa.select(sa.func.count()).select_from(_tasks)
    backlog = _count(connection, count.where(_tasks.c.state == QUEUED))
    running = _count(connection, count.where(_tasks.c.state == RUNNING))
    oldest = connection.execute(sa.select(sa.func.min(_tasks.c.enqueued_at)).where(_tasks.c.state == QUEUED)).scalar()
    health = Health(
        now=now, backlog=backlog, running=running, oldest_queued=utc_from_db(oldest),
        done_last_hour=_count(connection, count.where(_finished(DONE, hour))),
        failed_last_hour=_count(connection, count.where(_finished(FAILED, hour))),
        failed_24h=_count(connection, count.where(_finished(FAILED, day))),
        dead_letters=_capped_count(connection, sa.select(_letters.c.id)),
    )
    health.reasons = _reasons(connection, day)
    health.recent_failures = [
        FailureRow(ModelRef(r.project, r.model), r.window_start, reason_of(r.error), r.error or "", r.finished_at,
                   r.runs, r.attempts)
        for r in connection.execute(
            sa.select(_tasks.c.project, _tasks.c.model, _tasks.c.window_start, _tasks.c.error, _tasks.c.finished_at,
                      _tasks.c.runs,
                      _tasks.c.attempts)
            .where(_finished(FAILED, day)).order_by(_tasks.c.finished_at.desc()).limit(RECENT_FAILURES))]
    health.executors = _executors(connection, hour)
    health.hourly = _hourly(connection, now, hourly)
    health.peers_down = peers_down(connection, now)
    return health


def _reasons(connection: Connection, since: datetime) -> list[ReasonCount]:
    reason = _reason_expression(connection).label("reason")
    rows = connection.execute(
        sa.select(reason, sa.func.count().label("n"), sa.func.max(_tasks.c.finished_at).label("last"))
        .where(_finished(FAILED, since)).group_by(reason).order_by(sa.desc("n")).limit(50)).all()
    merged: dict[str, ReasonCount] = {}
    for row in rows:
        name = reason_of(row.reason + ":")
        last = utc_from_db(row.last)
        entry = merged.setdefault(name, ReasonCount(name, 0, last))
        entry.count += row.n
        entry.last_at = max(filter(None, (entry.last_at, last)), default=None)
    for entry in merged.values():
        condition = _finished(FAILED, since)
        if entry.reason != "other":
            prefix = entry.reason + ":"
            condition = sa.and_(condition, sa.func.substr(_tasks.c.error, 1, len(prefix)) == prefix)
        example = connection.execute(
            sa.select(_tasks.c.project, _tasks.c.model, _tasks.c.window_start, _tasks.c.error).where(condition)
            .order_by(_tasks.c.finished_at.desc()).limit(1 if entry.reason != "other" else 50)).all()
        for project, model, start, error in example:
            if entry.reason != "other" or reason_of(error) == "other":
                entry.example_model = ModelRef(project, model)
                entry.example_window, entry.example_error = start, error or ""
                break
    return sorted(merged.values(), key=lambda r: (-r.count, r.reason))


def _executors(connection: Connection, since: datetime) -> list[ExecutorSeen]:
    seen: dict[str, ExecutorSeen] = {}
    finished = connection.execute(
        sa.select(_tasks.c.executor, sa.func.count(), sa.func.max(_tasks.c.finished_at))
        .where(_tasks.c.state.in_((DONE, FAILED)), _tasks.c.finished_at >= since, _tasks.c.executor.is_not(None))
        .group_by(_tasks.c.executor).limit(1000)).all()
    for name, count, last in finished:
        seen[name] = ExecutorSeen(name, utc_from_db(last) or since, count, 0)
    started = connection.execute(
        sa.select(_tasks.c.executor, sa.func.count(), sa.func.max(_tasks.c.started_at))
        .where(_tasks.c.state == RUNNING, _tasks.c.started_at >= since, _tasks.c.executor.is_not(None))
        .group_by(_tasks.c.executor).limit(1000)).all()
    for name, count, last in started:
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


_series_table = sa.table("series", sa.column("id"), sa.column("project"), sa.column("model"), sa.column("output"),
                         sa.column("tag"))
_values_table = sa.table("prediction_values", sa.column("series_id"), sa.column("ts"), sa.column("value"))


def _latest_value(column: Any, since: Any) -> Any:
    return (sa.select(column).where(_values_table.c.series_id == _series_table.c.id, _values_table.c.ts >= since)
            .order_by(_values_table.c.ts.desc()).limit(1).scalar_subquery())


def _latest_values(refs: Sequence[ModelRef], output: str, since: datetime) -> Any:
    """Per series of `output` of these models, its newest value since `since` (one probe of the key each)."""
    bound = sa.bindparam("since", since, type_=UtcDateTime)
    s = _series_table
    return sa.select(s.c.project, s.c.model, s.c.id, _latest_value(_values_table.c.ts, bound).label("ts"),
                     _latest_value(_values_table.c.value, bound).label("value")).where(
        sa.tuple_(s.c.project, s.c.model).in_([tuple(ref) for ref in refs]), s.c.output == output)


def _set_confidence(rows: dict[ModelRef, ModelRow], found: Iterable[Any]) -> None:
    for row_project, model, ts, value in found:
        ts, row = utc_from_db(ts), rows.get(ModelRef(row_project, model))
        if row is not None and ts is not None and (row.confidence_at is None or ts > row.confidence_at):
            row.confidence, row.confidence_at = value, ts


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for index in range(0, len(items), size):
        yield items[index:index + size]


def _of(table: Any, ref: ModelRef) -> Any:
    return sa.and_(table.c.project == ref.project, table.c.model == ref.name)


def summarised_rows(connection: Connection, since: datetime, project: str = "") -> dict[ModelRef, ModelRow]:
    """Every model (of `project`) from model_summary, which the database keeps as tasks are enqueued and
    finished: one scan instead of four index probes per model. The newest task is shown by its outcome,
    or as queued while it has none (queued or running: the model page reads the ledger itself)."""
    summary = ModelSummary.__table__
    statement = sa.select(summary)
    if project:
        statement = statement.where(summary.c.project == project)
    rows: dict[ModelRef, ModelRow] = {}
    for r in connection.execute(statement):
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
        for row_project, model, end in connection.execute(
                sa.select(_schedule.c.project, _schedule.c.model, _schedule.c.last_window_end)):
            if ModelRef(row_project, model) in rows:
                rows[ModelRef(row_project, model)].scheduled_until = end
        return list(rows.values())
    for ref in refs:
        newest = connection.execute(
            sa.select(_tasks.c.state, _tasks.c.window_end).where(_of(_tasks, ref))
            .order_by(_tasks.c.window_end.desc()).limit(1)).first()
        done = connection.execute(
            sa.select(_tasks.c.window_end).where(_of(_tasks, ref), _tasks.c.state == DONE)
            .order_by(_tasks.c.window_end.desc()).limit(1)).scalar()
        rows[ref] = ModelRow(ref, last_done_end=done, newest_state=newest.state if newest else None,
                             newest_window_end=newest.window_end if newest else None)
    for chunk in _chunks(list(rows)):
        keys = [tuple(ref) for ref in chunk]
        for row_project, model, end in connection.execute(
                sa.select(_schedule.c.project, _schedule.c.model, _schedule.c.last_window_end)
                .where(sa.tuple_(_schedule.c.project, _schedule.c.model).in_(keys))):
            rows[ModelRef(row_project, model)].scheduled_until = end
        _set_confidence(rows, ((p, m, ts, v) for p, m, _sid, ts, v in connection.execute(
            _latest_values(chunk, TOTAL_CONFIDENCE, since))))
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


def _series(connection: Connection, models: Sequence[ModelRef], output: str) -> dict[int, tuple[ModelRef, str]]:
    """{series id: (model, tag)} of one output group, along the series(project, model, output, tag) index."""
    found: dict[int, tuple[ModelRef, str]] = {}
    series = _series_table
    for chunk in _chunks(list(models)):
        for sid, project, model, tag in connection.execute(
                sa.select(series.c.id, series.c.project, series.c.model, series.c.tag)
                .where(sa.tuple_(series.c.project, series.c.model).in_([tuple(ref) for ref in chunk]),
                       series.c.output == output)):
            found[sid] = (ModelRef(project, model), tag)
    return found


def bucketed_values(connection: Connection, series_ids: Sequence[int], since: datetime, until: datetime,
                    bucket: timedelta) -> dict[int, list[tuple[datetime, float]]]:
    """Per series, the maximum of each `bucket` between since and until (at the bucket's last timestamp),
    read along prediction_values' key (series_id, ts)."""
    # ts untyped in the result: SQLite's text is parsed by _utc (fromisoformat), several times faster than the
    # column type's processing; the bounds are bound as the column type stores them.
    values = sa.table("prediction_values", sa.column("series_id"), sa.column("ts"), sa.column("value"))
    seconds = max(int(bucket.total_seconds()), 1)
    key = task_hours.bucket(connection, values.c.ts, seconds)
    low, high = sa.bindparam("since", since, type_=UtcDateTime), sa.bindparam("until", until, type_=UtcDateTime)
    out: dict[int, list[tuple[datetime, float]]] = {}
    for chunk in _chunks(list(series_ids)):
        statement = (sa.select(values.c.series_id, sa.func.max(values.c.ts).label("ts"),
                               sa.func.max(values.c.value).label("value"))
                     .where(values.c.series_id.in_(chunk), values.c.ts >= low, values.c.ts < high)
                     .group_by(values.c.series_id, key))
        for sid, ts, value in connection.execute(statement):
            stamp = utc_from_db(ts)
            if stamp is not None:
                out.setdefault(sid, []).append((stamp, float(value)))
    for points in out.values():
        points.sort()
    return out


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
            series = _series(connection, [r.ref for r in shown], TOTAL_CONFIDENCE)
            values = bucketed_values(connection, list(series), since, now + timedelta(seconds=1), SPARK_BUCKET)
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


def _first_value_at(connection: Connection, series_ids: Sequence[int], since: datetime) -> datetime | None:
    values = sa.table("prediction_values", sa.column("series_id"), sa.column("ts"))
    if not series_ids:
        return None
    return utc_from_db(connection.execute(sa.select(sa.func.min(values.c.ts)).where(
        values.c.series_id.in_(list(series_ids)[:CHUNK]),
        values.c.ts >= sa.bindparam("since", since, type_=UtcDateTime))).scalar())


def model_detail(engine: Engine, ref: ModelRef, output: str | None = None, hours: int | None = None,
                 now: datetime | None = None) -> ModelDetail:
    now = now or datetime.now(timezone.utc)
    with engine.connect() as connection:
        per_output = {o: _series(connection, [ref], o) for o in TAG_OUTPUTS}
        outputs = [o for o in TAG_OUTPUTS if per_output[o]]
        shown = output if output in outputs else (outputs[0] if outputs else None)
        totals = _series(connection, [ref], TOTAL_CONFIDENCE)
        if hours is None:
            first = _first_value_at(connection, list(totals) or list(per_output.get(shown or "") or ()),
                                    now - timedelta(hours=MAX_HOURS))
            hours = next((h for h in RANGES if first is not None and first >= now - timedelta(hours=h)), MAX_HOURS)
        hours = min(max(int(hours), 1), MAX_HOURS)
        since, until = now - timedelta(hours=hours), now + timedelta(seconds=1)
        bucket = timedelta(hours=hours) / CHART_POINTS
        lines: dict[str, list[tuple[datetime, float]]] = {}
        if shown:
            tags = per_output[shown]
            values = bucketed_values(connection, list(tags), since, until, bucket)
            lines = {tags[sid][1]: values.get(sid, []) for sid in sorted(tags, key=lambda s: tags[s][1])}
        total_values = bucketed_values(connection, list(totals), since, until, bucket)
        total = max(total_values.values(), key=len, default=[])
        tasks = [TaskRow(*r) for r in connection.execute(
            sa.select(_tasks.c.window_start, _tasks.c.window_end, _tasks.c.state, _tasks.c.runs, _tasks.c.attempts,
                      _tasks.c.lost, _tasks.c.executor, _tasks.c.finished_at, _tasks.c.duration_ms, _tasks.c.rows,
                      _tasks.c.error, _tasks.c.revision)
            .where(_of(_tasks, ref)).order_by(_tasks.c.window_end.desc()).limit(MODEL_TASKS))]
        row = model_rows(connection, now, [ref])[0] if tasks else None
    return ModelDetail(ref, shown, outputs, lines, total, tasks, since, now, row, hours)
