"""The operator's view at IOC scale: figures measured in one run on a throwaway PostgreSQL database.

The database is filled through latigo's own write path: the ledger by TaskLifecycle.enqueue and
advance_schedule (the scheduler's), each task by TaskLifecycle.start and TaskLifecycle.finish (the
executor's: ready_for, then predictions + `done` in one transaction), for `--models` models (BenchModels,
the plug-in provider of the other benchmarks) and `--hours` hours of 30-minute windows. Each window
writes, per model, `total-anomaly-confidence` and `--tags` per-tag `anomaly-confidence` series on a
10-minute grid. A few models get an anomaly in the last hours (above threshold), a few stop early (late),
a few have failed windows.

Then, each as seconds (median of `--repeat`): the web overview cold (a new server process's first view)
and warm (a refresh), `/?q=` search, a model page, `latigo status` (collect_status and its text),
`latigo anomalies --since 24h` (find_episodes), and the database time per overview refresh (the sum of
pg_stat_statements-free timing: wall time of the reads on the database connection). First with the
statistics the load left ("stale": what a database has right after a large backfill, autovacuum off or
behind), then after latigo's own statistics chore (latigo.storage.statistics.refresh_statistics).

    python benchmarks/console.py [--models 9000] [--hours 24] [--tags 3] [--projects 3] [--repeat 3]
                                 [--keep | --url URL]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from _support import BenchModels, database

from latigo.lifecycle import TaskLifecycle
from latigo.types import PredictionFrame, PredictionRow, Task, TimeRange

WINDOW = timedelta(minutes=30)
BUCKET = timedelta(minutes=10)
TOTAL, PER_TAG = "total-anomaly-confidence", "anomaly-confidence"


def frame_for(ref: Any, window: TimeRange, tags: list[str], anomalous: bool, end: datetime) -> PredictionFrame:
    """Synthetic anomaly scores: quiet (0.2-0.8), above 1 in the last 3 hours of an anomalous model."""
    rng = random.Random(hash((ref, window.start)))
    rows, ts = [], window.start
    while ts < window.end:
        hot = anomalous and ts >= end - timedelta(hours=3)
        total = rng.uniform(1.5, 4.0) if hot else rng.uniform(0.2, 0.8)
        rows.append(PredictionRow(TOTAL, TOTAL, ts, total))
        rows += [PredictionRow(PER_TAG, tag, ts, total * rng.uniform(0.3, 1.2)) for tag in tags]
        ts += BUCKET
    return PredictionFrame(ref.name, rows, project=ref.project)


def fill(engine: sa.Engine, provider: BenchModels, hours: int, end: datetime, workers: int = 4) -> dict[str, Any]:
    lifecycle = TaskLifecycle(engine)
    refs = provider.get_model_list()
    windows = [TimeRange(end - (i + 1) * WINDOW, end - i * WINDOW) for i in reversed(range(hours * 2))]
    anomalous = set(refs[::500])
    late = set(refs[7::900])  # their last 3 hours were never done
    failing = set(refs[11::1000])
    began = time.monotonic()
    tasks = [Task(ref.name, window, ref.project) for window in windows for ref in refs]
    for index in range(0, len(tasks), 5000):
        with lifecycle.transaction() as c:
            chunk = tasks[index:index + 5000]
            lifecycle.enqueue(c, chunk)
            lifecycle.advance_schedule(c, chunk)
    enqueued = time.monotonic() - began
    lifecycle.predictions.partitions.ensure(windows[0].start, end + timedelta(seconds=1))
    todo = [t for t in tasks if not (t.ref in late and t.window.end > end - timedelta(hours=3))]
    rows = [0]
    lock = threading.Lock()

    def run(batch: list[Task]) -> None:
        written = 0
        with lifecycle.transaction() as c:
            for task in batch:
                lifecycle.start(c, task, "bench-executor")
                if task.ref in failing and task.window.end == end:
                    lifecycle.fail(c, task, "permanent: the model server answered 400 for this input")
                    continue
                frame = frame_for(task.ref, task.window, provider.tags, task.ref in anomalous, end)
                written += lifecycle.finish(c, task, frame, 12)
        with lock:
            rows[0] += written

    began = time.monotonic()
    batches = [todo[i:i + 100] for i in range(0, len(todo), 100)]
    with ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(run, batches)):
            if done % 200 == 0:
                print(f"  filled {done * 100:,} of {len(todo):,} tasks, {time.monotonic() - began:.0f} s",
                      file=sys.stderr, flush=True)
    return {"tasks": len(tasks), "done_or_failed": len(todo), "values": rows[0], "enqueue_s": enqueued,
            "execute_s": time.monotonic() - began}


def timed(action: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    seconds, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = action()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), result


class DatabaseClock:
    """The time statements spent on the database connection (executemany and fetch included): what one
    view costs the database, not Python's rendering."""

    def __init__(self, engine: sa.Engine) -> None:
        self.seconds = 0.0
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)
        self._started: dict[int, float] = {}

    def _before(self, conn: Any, cursor: Any, *args: Any) -> None:
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, *args: Any) -> None:
        self.seconds += time.perf_counter() - self._started.pop(id(cursor), time.perf_counter())


def measure(url: str, repeat: int, sample: Any) -> dict[str, float]:
    from latigo.settings import DatabaseSettings
    from latigo.status import collect_status
    from latigo.web import queries
    from latigo.web.server import WebApp

    figures: dict[str, float] = {}
    engine = queries.read_only_engine(DatabaseSettings(url=url))
    clock = DatabaseClock(engine)
    headers = {"Host": "127.0.0.1"}

    def get(target: str, app: WebApp) -> int:
        response = app.respond("GET", target, headers)
        assert response.status == 200, (target, response.status, response.body[:300])
        return len(response.body)

    app = WebApp(engine)
    began = time.perf_counter()
    get("/", app)
    figures["overview_cold_s"] = time.perf_counter() - began

    def refresh(target: str = "/") -> int:
        app._snapshot = None  # the shared snapshot expired: what a 30-second refresh costs
        if hasattr(app, "_overview"):  # an older latigo's per-project cache
            app._overview.clear()
        return get(target, app)

    figures["overview_refresh_s"], _ = timed(refresh, repeat)
    clock.seconds = 0.0
    refresh()
    figures["overview_db_s_per_refresh"] = clock.seconds
    figures["search_s"], _ = timed(lambda: refresh(f"/?q={sample.name[-4:]}"), repeat)
    figures["search_cached_s"], _ = timed(lambda: get(f"/?q={sample.name[-3:]}&state=late", app), repeat)
    figures["model_page_s"], _ = timed(lambda: get(
        "/models/" + sample.name if sample.project == "default" else f"/models/{sample.project}/{sample.name}",
        WebApp(engine)), repeat)
    engine.dispose()
    from latigo.storage.db import create_engine_for

    writer = create_engine_for(DatabaseSettings(url=url))
    figures["status_s"], report = timed(lambda: collect_status(writer).to_text(), repeat)
    figures["status_lines"] = report.count("\n")
    from latigo.anomalies import find_episodes

    since = datetime.now(timezone.utc) - timedelta(hours=24)

    def anomalies() -> int:
        with writer.connect() as c:
            return len(find_episodes(c, since))

    figures["anomalies_s"], figures["episodes"] = timed(anomalies, repeat)
    writer.dispose()
    return figures


def forget_statistics(engine: sa.Engine) -> None:
    """What a database has right after a large backfill with autovacuum off or behind: no statistics of the
    tables latigo just filled (pg_statistic cleared for them, reltuples back to 'never analysed')."""
    with engine.begin() as c:
        c.exec_driver_sql(
            "DELETE FROM pg_statistic WHERE starelid IN (SELECT oid FROM pg_class WHERE relname IN "
            "('tasks', 'series', 'schedule_state', 'prediction_values') OR relname LIKE 'prediction_values_p%%')")
        c.exec_driver_sql(
            "UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE relname IN ('tasks', 'series', "
            "'schedule_state', 'prediction_values') OR relname LIKE 'prediction_values_p%%' OR relname LIKE "
            "'ix_tasks%%' OR relname LIKE 'pk_%%'")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=9000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--tags", type=int, default=3)
    parser.add_argument("--projects", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the filled database (its URL is printed)")
    parser.add_argument("--url", help="measure this database, filled by an earlier --keep run, instead")
    args = parser.parse_args()
    provider = BenchModels(args.models, tags=args.tags, projects=args.projects)
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    end -= timedelta(minutes=end.minute % 30)
    with database("postgresql", keep=args.keep, url=args.url) as engine:
        url = engine.url.render_as_string(hide_password=False)
        if args.url is None:
            filled = fill(engine, provider, args.hours, end, args.workers)
            print(f"filled: {filled}" + (f"; kept as {url}" if args.keep else ""), flush=True)
        sample = provider.get_model_list()[4321 % args.models]
        forget_statistics(engine)
        before = measure(url, args.repeat, sample)
        print(f"stale statistics: {before}", flush=True)
        try:
            from latigo.storage.statistics import refresh_statistics
        except ImportError:  # a latigo from before the chore, measured for comparison: a plain ANALYZE
            def refresh_statistics(engine: sa.Engine) -> list[str]:
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    c.exec_driver_sql("ANALYZE")
                return ["(every table)"]

        began = time.perf_counter()
        analysed = refresh_statistics(engine)
        print(f"statistics chore: {time.perf_counter() - began:.1f} s for {analysed}", flush=True)
        after = measure(url, args.repeat, sample)
        print(f"fresh statistics: {after}", flush=True)
        print(f"{'figure':<28}{'stale':>12}{'fresh':>12}")
        for key in before:
            print(f"{key:<28}{before[key]:>12.3f}{after[key]:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
